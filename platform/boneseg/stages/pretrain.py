"""`boneseg pretrain`: encoder weights learnt on the thigh cohort (offline "pretrained" variants)."""
from __future__ import annotations

import argparse

from boneseg.core.config import Config


def add_parser(sub) -> None:
    p = sub.add_parser("pretrain")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.engine.pretrain import pretrain

    r = pretrain(cfg)
    if r.get("skipped"):
        print(f"pretrain: {r['skipped']}: {r['weights']} holds no encoder; run the random variants, or give "
              "the pretrained ones other weights (model.encoder_weights)")
        return 0
    print(f"pretrain: {r['cases']} thigh cases, {r['slices']} slices, {r['epochs']} epochs, "
          f"loss {r['train_loss'][0]:.4f} -> {r['train_loss'][-1]:.4f}; encoder -> {r['weights']}")
    return 0
