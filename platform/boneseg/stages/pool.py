"""Where a per-case stage's cases run (`raw`, `import`, `propose`, `labels`, `slices`,
`segment`, `assist`, `report`): --address (or RAY_ADDRESS) for Ray tasks on a cluster,
else `data.workers` local processes (`core.parallel`)."""
from __future__ import annotations

import argparse
import os

from boneseg.core.config import Config
from boneseg.core.parallel import Pool, resolve_workers


def add_pool_options(p: argparse.ArgumentParser) -> None:
    """--address (the per-case stages): the cases as Ray tasks on a cluster."""
    p.add_argument("--address", help="run the cases as Ray tasks on this Ray cluster, the project on a "
                                     "shared filesystem (default: RAY_ADDRESS; without either: data.workers "
                                     "local processes)")


def case_pool(cfg: Config, address: str | None = None) -> Pool:
    """Where a per-case stage's cases run (`core.parallel.Pool`): Ray tasks on the cluster at
    `address` or RAY_ADDRESS, else data.workers local processes."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        from boneseg.sweep.tasks import RayRunner

        return Pool(remote=RayRunner(address))
    return Pool(workers=resolve_workers(cfg.data.workers), auto=cfg.data.workers == "auto")

