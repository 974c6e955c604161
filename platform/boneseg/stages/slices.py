"""`boneseg slices`: resample + window every case for 2.5-D input (data/slices)."""
from __future__ import annotations

import argparse

from boneseg.core.config import Config


def add_parser(sub) -> None:
    p = sub.add_parser("slices")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.data.slices import build_slices

    index = build_slices(cfg)
    n = sum(c["z"] for c in index["cases"].values())
    print(f"slices: {len(index['cases'])} cases, {n} slices at {index['image_size']}x{index['image_size']}, "
          f"window {index['window']} HU -> {cfg.data.slices_dir}")
    return 0
