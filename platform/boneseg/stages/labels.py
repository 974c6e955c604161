"""`boneseg labels`: derived label maps (threshold + marrow fill, corrections) and label QA."""
from __future__ import annotations

import argparse
import json

from boneseg.core.config import Config
from boneseg.core.labelling import derive_labels, source_table, table


def add_parser(sub) -> None:
    p = sub.add_parser("labels", help="derive label maps (threshold + marrow fill, corrections) and label QA")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    report = derive_labels(cfg)
    print(table(report["cases"]))
    print(source_table(report["total"]))
    print("total:", json.dumps(report["total"]))
    return 0
