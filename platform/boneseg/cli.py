"""`boneseg`: one console command, one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import sys

from boneseg import __version__
from boneseg.errors import BonesegError

# subcommand modules, in pipeline order; each has add_parser(sub) and main(args, cfg)
STAGES = ("config", "synth", "importer", "labels", "splits", "slices", "pretrain", "train", "sweep", "report", "evaluate_cmd", "segment", "preview")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boneseg", description="Multi-class bone segmentation of CT: pipeline stages and tools.")
    parser.add_argument("--version", action="version", version=f"boneseg {__version__}")
    parser.add_argument("--params", default="params.yaml", help="settings file (default: params.yaml)")
    parser.add_argument("--experiment", help="override from experiments/<name>.yaml, e.g. paper")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set data.image_size=128 (repeatable)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    import importlib

    for name in STAGES:
        importlib.import_module(f"boneseg.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from boneseg.config import load_config

    try:
        cfg = load_config(args.params, args.experiment, args.overrides)
        return int(args.func(args, cfg) or 0)
    except BonesegError as exc:
        print(f"boneseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
