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
        print(next_hint(cfg, todo))
    return 0


def next_hint(cfg: Config, todo: list[str], n: int = 3) -> str:
    """The next cases to correct: the worklist's top ones where `boneseg correct next` ranked
    them, else a pointer to that ranking where fold models exist, else the first case id."""
    from pathlib import Path

    from boneseg.core.labelling.worklist import open_worklist

    ranked = open_worklist(cfg)
    if ranked:
        top = ", ".join(f"{r['case']} ({r['disagreement']:.3f})" for r in ranked[:n])
        return (f"next, by the fold models' disagreement (worklist): {top}; "
                f"boneseg correct export {ranked[0]['case']}")
    if any(Path(cfg.sweep.model_dir).glob("fold*.pt")):
        return (f"next: rank them by the fold models' disagreement with `boneseg correct next --model "
                f"{cfg.sweep.model_dir}`, or take the first: boneseg correct export {todo[0]}")
    return f"next: boneseg correct export {todo[0]}"
