"""What several commands share: the model options (`segment`, `assist`) and their parsing,
the Ray options (`sweep`, `tune`).
Argument values are checked by argparse (`type=`), so a bad one is one usage line, exit 2."""
from __future__ import annotations

import argparse
from pathlib import Path

from boneseg.core.config import Config

MODEL_HELP = "models:/boneseg/<version> (or @alias), an MLflow run id, or a model.pt / folder of fold models"


def folds_arg(text: str) -> list[int] | None:
    """--folds: "all" (None) or fold numbers like "0,1"."""
    if text == "all":
        return None
    try:
        folds = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        folds = []
    if not folds or folds[0] < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 'all' or fold numbers like 0,1")
    return folds


def add_ray_options(p: argparse.ArgumentParser, what: str) -> None:
    """--address and --resume | --restart (`sweep`, `tune`): where Ray runs, and whether an
    unfinished run of `what` is resumed."""
    p.add_argument("--address", help="an existing Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help=f"require resuming an unfinished {what}")
    g.add_argument("--restart", action="store_true", help=f"start a new {what} even if one can be resumed")


def add_model_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--model", required=required, help=MODEL_HELP)
    p.add_argument("--folds", default="all", type=folds_arg,
                   help="fold models to ensemble: all, or fold numbers like 0,1 (default: all)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the models run; auto: CUDA when present (default: auto)")
    p.add_argument("--backend", default=None, choices=["auto", "torch", "onnxruntime"],
                   help="auto: ONNX Runtime on the CPU when the models carry a checked ONNX export, else "
                        "PyTorch (default: infer.backend)")
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "int8"],
                   help="ONNX Runtime only; auto: int8 when its Dice check passed (default: infer.precision)")
    p.add_argument("--no-postprocess", dest="postprocess", action="store_false",
                   help="skip the connected-component rule the sweep chose by cross-validation "
                        "(boneseg.json; infer.postprocess: false turns it off everywhere)")


def checkpoints(ref: str, cfg: Config) -> list[Path]:
    """--model -> the fold models' files (local, or fetched from MLflow)."""
    from boneseg.tracking.registry import resolve_model
    from boneseg.tracking.runs import tracking_uri

    return resolve_model(ref, tracking_uri(cfg), cfg.tracking.registered_model or "boneseg")

