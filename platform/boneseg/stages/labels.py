"""`boneseg labels`: derived label maps (threshold + marrow fill, corrections) and label QA."""
from __future__ import annotations

import argparse
import json

from boneseg.core.config import Config
from boneseg.stages.pool import add_pool_options, case_pool


def add_parser(sub) -> None:
    p = sub.add_parser("labels")
    add_pool_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.labelling.labels import derive_labels
    from boneseg.stages.tables import source_table, table

    pool = case_pool(cfg, args.address)
    report = derive_labels(cfg, pool=pool)
    print(table(report["cases"]))
    print(source_table(report["total"]))
    print("total:", json.dumps(report["total"]))
    print(f"labels: {len(report['cases'])} cases ({pool.where}) -> {cfg.data.labels_dir}")
    todo = [r["case"] for r in report["cases"] if r["label_source"] == "proposal-unreviewed"]
    if todo:
        print(f"to label ({len(todo)}: no truth, no correction; left out of training and scoring unless "
              f"splits.include_unreviewed): {' '.join(todo)}")
        print(f"next: boneseg correct export {todo[0]}")
    return 0
