"""`boneseg`: one console command, one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import sys
import time

from boneseg import __version__
from boneseg.errors import BonesegError

# stage modules (boneseg.stages.<name>), in pipeline order; each has add_parser(sub) and main(args, cfg)
STAGES = ("config", "raw", "synth", "importer", "propose", "correct", "labels", "splits", "slices",
          "pretrain", "train", "sweep", "report", "evaluate", "segment", "preview")


def _settings_options(parser: argparse.ArgumentParser, suffix: str = "") -> None:
    """--params/--experiment/--set, taken before the command and (suffix "_cmd") after it."""
    parser.add_argument("--params", dest="params" + suffix, default=None if suffix else "params.yaml",
                        help="settings file (default: params.yaml)")
    parser.add_argument("--experiment", dest="experiment" + suffix,
                        help="override from experiments/<name>.yaml, e.g. paper")
    parser.add_argument("--set", dest="overrides" + suffix, action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set data.image_size=128 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boneseg", description="Multi-class bone segmentation of CT: pipeline stages and tools.")
    parser.add_argument("--version", action="version", version=f"boneseg {__version__}")
    _settings_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    import importlib

    for name in STAGES:
        importlib.import_module(f"boneseg.stages.{name}").add_parser(sub)
    for cmd in sub.choices.values():  # `boneseg train --case ... --set k=v` works as well
        nested = [a for a in cmd._actions if isinstance(a, argparse._SubParsersAction)]
        for leaf in nested[0].choices.values() if nested else [cmd]:  # `correct export X --set k=v`
            _settings_options(leaf, "_cmd")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from boneseg.core.config import load_config

    try:
        cfg = load_config(args.params_cmd or args.params, args.experiment_cmd or args.experiment,
                          args.overrides + args.overrides_cmd)
        t0 = time.perf_counter()
        rc = int(args.func(args, cfg) or 0)
        # one line per command on stderr: the main command's time budget reads these (bench/main_budget.py)
        print(f"boneseg {args.command}: finished in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return rc
    except BonesegError as exc:
        print(f"boneseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
