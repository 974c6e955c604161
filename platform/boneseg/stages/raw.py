"""`boneseg raw`: the first pipeline stage, data/raw from data.sources (a lab's own CT) or,
with none configured, the synthetic cohort (`core.data.raw`)."""
from __future__ import annotations

import argparse

from boneseg.core.config import Config
from boneseg.stages.pool import add_pool_options, case_pool


def add_parser(sub) -> None:
    p = sub.add_parser("raw")
    p.add_argument("--force", action="store_true",
                   help="rebuild even if data/raw holds cases that no configured source gives (they go)")
    add_pool_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.data.raw import build_raw

    pool = case_pool(cfg, args.address)
    res = build_raw(cfg, force=args.force, pool=pool)
    for line in res["skipped"]:
        print(f"raw: skipped {line}")
    print(f"raw: {res['cases']} cases in {cfg.data.raw_dir} from {res['source']}, "
          f"skipped {len(res['skipped'])}")
    return 0
