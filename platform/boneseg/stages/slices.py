"""`boneseg slices`: resample + window every case for 2.5-D input (data/slices)."""
from __future__ import annotations

import argparse

from boneseg.core.config import Config
from boneseg.stages.pool import add_pool_options, case_pool


def add_parser(sub) -> None:
    p = sub.add_parser("slices")
    add_pool_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.data.slices import build_slices

    pool = case_pool(cfg, args.address)
    index = build_slices(cfg, pool=pool)
    n = sum(c["z"] for c in index["cases"].values())
    print(f"slices: {len(index['cases'])} cases, {n} slices at {index['image_size']}x{index['image_size']}, "
          f"window {index['window']} HU ({pool.where}) -> {cfg.data.slices_dir}")
    return 0
