"""The data stages' cases as Ray tasks (`--address`, else RAY_ADDRESS): the `remote`
runner of `core.parallel.Pool`.

The data reach the workers through a shared filesystem: each task runs in the driver's
working directory, which must be mounted at the same path on every node (as the project
is for the sweep's trials), and reads its case's inputs and writes its outputs there,
atomically. Only paths, settings and each case's small result travel through Ray. Tasks
take one CPU each and are spread over the nodes; a task that fails names its case.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from boneseg.core.parallel import named
from boneseg.errors import DataError
from boneseg.sweep.cluster import auth_env_for, connect, scoped_env


def _run_case(fn, item, cwd: str):
    """One case on a Ray worker: in the driver's folder, one torch thread (the task's CPU)."""
    import ray
    import torch

    if not Path(cwd).is_dir():
        raise DataError(f"{cwd}: not on this Ray node. The data stages on a cluster need the project on a "
                        "shared filesystem, at the same path on every node.")
    os.chdir(cwd)
    torch.set_num_threads(1)
    return ray.get_runtime_context().get_node_id(), fn(*item)


class RayRunner:
    """Maps cases over the Ray cluster at `address`; `nodes` counts the cases each node ran."""

    def __init__(self, address: str):
        self.address = address
        self.nodes: Counter = Counter()

    def __call__(self, fn, items, names, desc: str, progress: bool = True) -> list:
        import ray
        from tqdm import tqdm

        with scoped_env(auth_env_for(self.address)):
            connect(self.address)
            try:
                task = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_run_case)
                cwd = str(Path.cwd())
                refs = {task.remote(fn, item, cwd): i for i, item in enumerate(items)}
                results: dict[int, object] = {}
                with tqdm(total=len(items), desc=desc, unit="case", disable=not progress) as bar:
                    pending = list(refs)
                    while pending:
                        done, pending = ray.wait(pending, num_returns=1)
                        i = refs[done[0]]
                        try:
                            node, results[i] = ray.get(done[0])
                        except ray.exceptions.RayTaskError as exc:
                            for ref in pending:
                                ray.cancel(ref)
                            raise named(exc.cause if exc.cause is not None else exc, names[i]) from None
                        self.nodes[node] += 1
                        bar.update(1)
                return [results[i] for i in range(len(items))]
            finally:
                ray.shutdown()
