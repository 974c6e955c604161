"""`boneseg splits`: patient-level k folds + held-out test cases (data/splits.json)."""
from __future__ import annotations

import argparse

from boneseg.core.config import Config


def add_parser(sub) -> None:
    p = sub.add_parser("splits")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.data.splits import write_splits

    s = write_splits(cfg)
    for i, f in enumerate(s["folds"]):
        print(f"fold {i}: {len(f['train'])} train, {len(f['val'])} val: {' '.join(f['val'])}")
    print(f"test: {' '.join(s['test'])}")
    if s.get("to_label"):
        print(f"left out, still to label (no truth, no correction): {' '.join(s['to_label'])}")
    return 0
