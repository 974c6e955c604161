"""`boneseg`: one console command, one subcommand per pipeline stage.

Stage modules are imported lazily: `boneseg --help` lists the commands from the table
below without importing any of them (no torch, Ray or MLflow), and `boneseg <command>`
imports that one command's module alone. Bad input never shows a traceback: argparse
errors, settings errors and the library's `BonesegError` end as one line and exit 2.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import sys
import time

from boneseg import __version__
from boneseg.errors import BonesegError

# command -> (stage module under boneseg.stages, one-line help), in pipeline order; each
# module has add_parser(sub) and main(args, cfg). The help lines live here only: the lazy
# parser shows them without importing the modules, and `Commands` gives them to the full one.
COMMANDS = {
    "config": ("config", "print the resolved settings (params.yaml + experiment + --set)"),
    "raw": ("raw", "the first stage: data/raw from data.sources (your CT), or the synthetic cohort "
                   "when none is set"),
    "synth": ("synth", "write the synthetic CT cohort (abdominal + thigh CTs with truth)"),
    "import": ("importer", "import real CT (nifti, TotalSegmentator or DICOM series) under pseudonymous ids"),
    "propose": ("propose", "train the V-Net on the thigh femur masks, propose abdominal bone masks"),
    "assist": ("assist", "a trained U-Net's four-class proposals for new CTs (model-assisted labelling)"),
    "correct": ("correct", "hand corrections: export a case to ITK-SNAP / 3D Slicer, import the edit"),
    "labels": ("labels", "derive label maps (threshold + marrow fill, corrections) and label QA"),
    "splits": ("splits", "patient-level k folds + held-out test cases (data/splits.json)"),
    "slices": ("slices", "resample + window every case for 2.5-D input (data/slices)"),
    "pretrain": ("pretrain", "pretrain the encoder on the thigh cohort (offline 'pretrained' variants)"),
    "train": ("train", "train + evaluate one (variant, fold) trial without Ray, tracked in MLflow"),
    "tune": ("tune", "search hyperparameters on Ray Tune (ASHA; random or Optuna), write "
                     "experiments/tuned-<id>.yaml"),
    "sweep": ("sweep", "run the variants x folds grid on Ray Tune, tracked in MLflow"),
    "report": ("report", "study-style figures, overlays and bootstrap CIs (results/report)"),
    "evaluate": ("evaluate", "Dice/TP/FP/FN/volumes of label maps vs ground truth (file or folder)"),
    "segment": ("segment", "label maps for new CTs with trained fold models (ensembled)"),
    "promote": ("promote", "make a registered version models:/boneseg@champion by hand"),
    "preview": ("preview", "write a PNG montage of a case or CT file (axial + coronal, labels)"),
}
STAGES = tuple(m for m, _ in COMMANDS.values())
SETTINGS_OPTIONS = ("--params", "--experiment", "--set")


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already names one (a
    default taken from the settings, e.g. "default: data.raw_dir")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


class Commands:
    """The subparsers as stage modules see them: each command's help line and description
    come from COMMANDS, so the lazy and the full parser say the same."""

    def __init__(self, sub):
        self.sub = sub

    def add_parser(self, name: str, **kw) -> argparse.ArgumentParser:
        text = COMMANDS[name][1]
        return self.sub.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".",
                                   formatter_class=HelpFormatter, **kw)


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _settings_options(parser: argparse.ArgumentParser, suffix: str = "") -> None:
    """--params/--experiment/--set, taken before the command and (suffix "_cmd") after it."""
    parser.add_argument("--params", dest="params" + suffix, default=None if suffix else "params.yaml",
                        metavar="FILE", help="settings file (default: params.yaml)")
    parser.add_argument("--experiment", dest="experiment" + suffix, metavar="NAME",
                        help="overrides from experiments/<NAME>.yaml, e.g. paper (default: the file's "
                             "`experiment` key)")
    parser.add_argument("--set", dest="overrides" + suffix, action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set data.image_size=128 "
                             "(repeatable; default: none)")


def _command_in(argv: list[str]) -> str | None:
    """The command word of argv (skipping the global options and their values)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in SETTINGS_OPTIONS:
            skip = True
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(only: str | None = None, lazy: bool = False) -> argparse.ArgumentParser:
    """The whole parser; with lazy=True only the command `only` (if any) is loaded, and the
    others appear in the help by name and help line alone."""
    parser = Parser(prog="boneseg",
                    description="Multi-class bone segmentation of CT: pipeline stages and tools.",
                    formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"boneseg {__version__}")
    _settings_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", parser_class=Parser)
    for name, (module, text) in COMMANDS.items():
        if lazy and name != only:
            sub.add_parser(name, help=text)
        else:
            importlib.import_module(f"boneseg.stages.{module}").add_parser(Commands(sub))
    for cmd in sub.choices.values():  # `boneseg train --case ... --set k=v` works as well
        nested = [a for a in cmd._actions if isinstance(a, argparse._SubParsersAction)]
        for leaf in nested[0].choices.values() if nested else [cmd]:  # `correct export X --set k=v`
            _settings_options(leaf, "_cmd")
    return parser


def _one_line(exc: BaseException) -> str:
    """An OS error as `file: reason`, anything else as its message, on one line."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv), lazy=True)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help/--version (0) or a usage error (2, one line printed)
        if done.code:
            return int(done.code)
        raise
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
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        print(f"boneseg {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk outside the atomic writers (which say more)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"boneseg {args.command}: error: {_one_line(exc)}. Free some space and run the same command "
              "again.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"boneseg {args.command}: interrupted; outputs are written whole or not at all",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
