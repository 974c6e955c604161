"""The ONNX Runtime backend: fold models exported to ONNX (fp32), quantized to int8 (static,
QDQ, per-channel weights), and run on the CPU in place of the PyTorch network
(`predict.ensemble_probabilities`).

Trust: an ONNX file is a protobuf (no code), read with its size checked first and its
SHA-256 compared with the one the model's manifest (boneseg.json) recorded at export; it
is handed to ONNX Runtime as bytes, so it cannot pull in external data files. Anything
wrong is an `OnnxUnusable` that names the file, for the caller to fall back to PyTorch
or refuse.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from boneseg.core.io import atomic_path
from boneseg.errors import DataError

OPSET = 17  # the TorchScript exporter's opset; ONNX Runtime 1.16+ runs it
MAX_ONNX_BYTES = 2 * 1024**3  # protobuf's own limit: a bigger file cannot be one model
INPUT, OUTPUT = "x", "logits"


class OnnxUnusable(DataError):
    """An ONNX model that is missing, damaged, not the one exported, or that this ONNX
    Runtime cannot run."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def export_onnx(net: torch.nn.Module, path: Path, size: int, name: str) -> None:
    """`net` (on the CPU, fp32) -> an ONNX file with a dynamic batch axis, written
    atomically. A failure raises DataError naming the model (`name`) and the opset."""
    net = net.float().cpu().eval()
    dummy = torch.zeros(2, 3, size, size)
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad(), \
                redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's deprecation notes, not the user's business
            torch.onnx.export(net, (dummy,), str(tmp), input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "n"}, OUTPUT: {0: "n"}}, opset_version=OPSET,
                              dynamo=False)
    except Exception as exc:
        raise DataError(f"{name}: ONNX export at opset {OPSET} failed ({_first_line(exc)}); "
                        "segment will use PyTorch for this model.") from None


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over (N, 3, S, S) float32 arrays."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._it = iter(batches)

    def get_next(self):
        b = next(self._it, None)
        return None if b is None else {INPUT: np.ascontiguousarray(b, dtype=np.float32)}


def quantize_int8(fp32: Path, out: Path, batches: Iterable[np.ndarray]) -> None:
    """Static int8 (QDQ; per-channel int8 weights, uint8 activations; MinMax ranges from
    `batches`) of the fp32 ONNX file `fp32`, written atomically to `out`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(tmp), _Batches(batches), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        finally:
            pre.unlink(missing_ok=True)


def threads_for(threads: int) -> int:
    return threads if threads > 0 else max(1, torch.get_num_threads())


def _opset_of(data: bytes) -> str:
    """The default-domain opset a model declares, for messages ("?" when unreadable)."""
    try:
        import onnx

        model = onnx.load_model_from_string(data)
        return ",".join(str(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")) or "?"
    except Exception:
        return "?"


class OrtNet:
    """An ONNX Runtime session that predict_slices can call like the torch network:
    (N, 3, S, S) tensor in, (N, K, S, S) float32 logits tensor out, on the CPU."""

    def __init__(self, path: Path, sha256: str | None, threads: int, channels: int):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxUnusable(f"{path}: missing")
        size = self.path.stat().st_size
        if not 0 < size <= MAX_ONNX_BYTES:
            raise OnnxUnusable(f"{path}: {size} bytes is not an ONNX model of this kind")
        data = self.path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise OnnxUnusable(f"{path}: its SHA-256 differs from the one recorded at export (damaged or "
                               "replaced)")
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads_for(threads), 1
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise OnnxUnusable(f"{path}: ONNX Runtime {ort.__version__} cannot run it (opset "
                               f"{_opset_of(data)}; {_first_line(exc)})") from None
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        shape_in, shape_out = ins[0].shape if ins else [], outs[0].shape if outs else []
        if [i.name for i in ins] != [INPUT] or len(shape_in) != 4 or shape_in[1] != 3 \
                or len(shape_out) != 4 or shape_out[1] != channels:
            raise OnnxUnusable(f"{path}: not a boneseg 2.5-D model with {channels} output channels")

    def eval(self) -> OrtNet:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: arr})[0])


def ort_version() -> str:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:  # pragma: no cover - a pinned requirement
        return "missing"


def onnx_files(manifest: dict, fold: int) -> dict:
    """{"fp32": {...}, "int8": {...}} recorded for `fold` in boneseg.json (empty: none)."""
    return (manifest.get("onnx") or {}).get("files", {}).get(str(fold), {})

