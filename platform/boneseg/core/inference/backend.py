"""Which backend and precision run the fold models (`infer.backend`, `infer.precision`,
`segment --backend/--precision`).

auto picks ONNX Runtime on the CPU when the models' manifest (boneseg.json, written by the
sweep at registration) records a checked export for every fold: int8 when the int8
models passed their Dice check, else fp32, but only for slices of 256 px or more (below,
PyTorch is faster); on CUDA it picks PyTorch. A missing, damaged or
unrunnable export falls back to PyTorch with one line saying so; when the user forced the
backend or the precision, it is refused instead, with the fix. The manifest also carries
the postprocessing rule the sweep chose (`postprocess_rule`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from boneseg.core.inference.onnxrt import OnnxUnusable, OrtNet, onnx_files
from boneseg.core.inference.postprocess import check_rule
from boneseg.errors import ConfigError, DataError

MANIFEST = "boneseg.json"  # beside the fold models (sweep.results writes it)
MAX_MANIFEST_BYTES = 1 << 20
# auto without a checked int8 model: fp32 ONNX Runtime from this slice size up, PyTorch below
# (bench/segment_speed.py: 0.76x PyTorch's speed at 160 px, 1.21x at 320 px; docs/benchmarks.md#segment)
ORT_FP32_FROM_SIZE = 256


def read_manifest(folder: Path) -> dict:
    """The models' manifest, or {} when there is none or it is not a small JSON object."""
    p = folder / MANIFEST
    try:
        if not p.is_file() or p.stat().st_size > MAX_MANIFEST_BYTES:
            return {}
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _plain_name(name) -> str:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise OnnxUnusable(f"{MANIFEST}: {name!r} is not a file name beside the fold models")
    return name


def int8_verdict(manifest: dict) -> tuple[bool, str]:
    """(int8 offered, why not) from the sweep's int8 check in the manifest."""
    check = (manifest.get("onnx") or {}).get("int8") or {}
    if check.get("offered") is True:
        return True, ""
    return False, str(check.get("why") or "the models carry no checked int8 export")


def choose(checkpoints: list[Path], backend: str, precision: str, device: str,
           threads: int) -> Callable[[list[tuple[int, int]]], list[OrtNet] | None] | None:
    """-> `nets([(fold, channels), ...])` for `predict.load_fold_models`: the folds' ONNX Runtime
    networks, or None for PyTorch (the function itself is None when PyTorch is certain)."""
    if backend == "torch":
        if precision == "int8":
            raise ConfigError("--precision int8 runs on ONNX Runtime: pass --backend onnxruntime (or auto).")
        return None
    forced = backend == "onnxruntime"
    if device != "cpu":
        if forced:
            raise ConfigError(f"--backend onnxruntime runs on the CPU, not {device}: pass --device cpu, "
                              "or --backend torch.")
        return None
    folder = checkpoints[0].parent
    manifest = read_manifest(folder)
    offered, why = int8_verdict(manifest)
    if precision == "int8" and not offered:
        raise DataError(f"--precision int8: not offered for {folder} ({why}). Use --precision fp32 or auto.")
    prec = "int8" if precision == "int8" or (precision == "auto" and offered) else "fp32"
    size = (manifest.get("preprocessing") or {}).get("image_size")
    if backend == "auto" and precision == "auto" and prec == "fp32" and isinstance(size, int) \
            and size < ORT_FP32_FROM_SIZE:
        return None  # measured: PyTorch (batch 8) beats fp32 ONNX Runtime on small slices

    def nets(wanted: list[tuple[int, int]]) -> list[OrtNet] | None:
        try:
            return [_open(folder, manifest, prec, fold, channels, threads) for fold, channels in wanted]
        except OnnxUnusable as exc:
            if forced or precision == "int8":
                raise DataError(f"--backend onnxruntime: {exc}. Use --backend torch (infer.backend: torch), "
                                "or register the models again with infer.export: true.") from None
            print(f"boneseg: note: {exc}; these models run on PyTorch.", file=sys.stderr, flush=True)
            return None

    return nets


def _open(folder: Path, manifest: dict, prec: str, fold: int, channels: int, threads: int) -> OrtNet:
    entry = onnx_files(manifest, fold).get(prec)
    if not isinstance(entry, dict):
        raise OnnxUnusable(f"{folder}: no {prec} ONNX export of fold {fold} in {MANIFEST}")
    return OrtNet(folder / _plain_name(entry.get("file")), str(entry.get("sha256")), threads, channels)


def postprocess_rule(checkpoints: list[Path]) -> dict:
    """The checked postprocessing rule the models' manifest carries ({} when it has none;
    a malformed one is refused with the file named, `core.inference.postprocess.check_rule`)."""
    pp = read_manifest(checkpoints[0].parent).get("postprocess")
    if not isinstance(pp, dict) or "rule" not in pp:
        return {}
    return check_rule(pp["rule"], str(checkpoints[0].parent / MANIFEST))
