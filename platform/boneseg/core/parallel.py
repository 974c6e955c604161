"""Per-case stages in parallel: one case per task, on local worker processes
(`data.workers`) or, given a Ray cluster, on Ray tasks (`boneseg.sweep.tasks`).

A case function is a module-level function of picklable arguments that reads its inputs
and writes its outputs itself (atomically) and returns a small, picklable result, so
what travels between processes is paths and summaries, never volumes. Results come
back in the order of the cases, whatever order they finish in, so everything a stage
writes from them is byte-identical to a serial run. The first failure stops the stage
and names its case; nothing the stage writes after the loop (an index, a QA file)
appears. Each local worker gets cores // workers torch threads, so workers x threads
never oversubscribes the cores.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from boneseg.errors import BonesegError, DataError

# a runner that maps on a cluster: (fn, items, names, desc, progress) -> results in order
Remote = Callable[[Callable, Sequence, Sequence[str], str, bool], list]


def cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's limit shows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# `data.workers: auto` runs a stage in this process when its inputs total less than this:
# starting workers (an interpreter each, importing torch) costs ~1.5 s, more than a small
# cohort's cases take (bench/cohort_scale.py)
AUTO_MIN_BYTES = 64 * 2**20


def resolve_workers(setting: int | str) -> int:
    """`data.workers`: a count, or "auto" = the cores."""
    return cores() if setting == "auto" else max(1, int(setting))


def file_sizes(paths) -> list[int]:
    """The sizes of a stage's input files (0 for one that is missing: its case fails by name)."""
    from pathlib import Path

    return [Path(p).stat().st_size if Path(p).is_file() else 0 for p in paths]


def named(exc: BaseException, name: str) -> BaseException:
    """The failure of case `name`: a boneseg error keeps its type and one line, led by the
    case unless it names it already; anything else carries the case as a note."""
    if isinstance(exc, BonesegError):
        text = str(exc)
        return type(exc)(text if name in text else f"case {name}: {text}")
    exc.add_note(f"(while processing case {name})")
    return exc


def _init_worker(threads: int) -> None:
    """A local worker's torch threads (set before any op, so its pools start that size)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(threads)


@dataclass
class Pool:
    """Where a stage's cases run: `workers` local processes (1: in this process), or the
    `remote` runner of a Ray cluster."""

    workers: int = 1
    remote: Remote | None = None
    auto: bool = False  # `data.workers: auto`: small inputs (< AUTO_MIN_BYTES) run in this process
    used: int = field(default=0, init=False)  # the processes the last map ran on (0: none yet)

    @property
    def where(self) -> str:
        """Where the last map ran: "Ray tasks" (with nodes, when the runner counts them),
        "2 workers", "1 process"."""
        nodes = getattr(self.remote, "nodes", None)
        if nodes is not None:
            return f"Ray tasks on {len(nodes)} node{'s' if len(nodes) != 1 else ''}"
        if self.remote is not None:
            return "Ray tasks"
        return "1 process" if self.used <= 1 else f"{self.used} workers"

    def map(self, fn: Callable, items: Sequence, names: Sequence[str], desc: str,
            progress: bool = True, sizes: Sequence[int] | None = None) -> list:
        """[fn(*item) for item in items], in order; `names` are the cases, for the progress
        bar's count and for the failure's message; `sizes` their input bytes (for `auto`)."""
        items, names = list(items), list(names)
        if self.remote is not None and items:
            return self.remote(fn, items, names, desc, progress)
        small = self.auto and sizes is not None and sum(sizes) < AUTO_MIN_BYTES
        self.used = 1 if self.workers <= 1 or len(items) <= 1 or small else min(self.workers, len(items))
        if self.used == 1:
            return _serial(fn, items, names, desc, progress)
        return _local(fn, items, names, desc, progress, self.used)


def _serial(fn, items, names, desc, progress) -> list:
    from tqdm import tqdm

    out = []
    for item, name in tqdm(list(zip(items, names)), desc=desc, unit="case", disable=not progress):
        try:
            out.append(fn(*item))
        except Exception as exc:
            raise named(exc, name) from None
    return out


def _local(fn, items, names, desc, progress, workers: int) -> list:
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    # forkserver: each worker forks from a clean server process that has imported the case
    # function's module once (no threads of this process, no torch import per worker)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([fn.__module__])
    threads = max(1, cores() // workers)
    results: dict[int, object] = {}
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as ex, \
            tqdm(total=len(items), desc=desc, unit="case", disable=not progress) as bar:
        futures = {ex.submit(fn, *item): i for i, item in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in sorted(done, key=futures.get):
                    exc = f.exception()
                    if isinstance(exc, BrokenProcessPool):  # killed (out of memory?) mid-case
                        raise DataError(f"case {names[futures[f]]}: a {desc} worker process died (out of "
                                        "memory?). Lower data.workers and run again.") from None
                    if exc is not None:
                        raise named(exc, names[futures[f]]) from None
                    results[futures[f]] = f.result()
                    bar.update(1)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    return [results[i] for i in range(len(items))]
