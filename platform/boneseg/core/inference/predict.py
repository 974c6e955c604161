"""Inference: batched 2.5-D prediction, fold-model ensembles, and whole CTs in any
orientation to label maps on their own voxel grid.

Per CT: reorient to the closest RAS+ order (lossless), window and resample in-plane
exactly as training slices are (`preprocess.window_planes`), predict every 2.5-D slice
with every fold model, average the softmax probabilities, resample them back to the
CT's grid, argmax, undo the reorientation and write uint8 ids with the input's own
affine, plus an ITK-SNAP label description file beside the outputs. Model references
(registry, run ids) are resolved to checkpoint files by `boneseg.tracking.registry`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from boneseg.core.config import Config
from boneseg.core.data.preprocess import resize_back, stack_25d, window_planes
from boneseg.core.imaging.nifti import Volume
from boneseg.core.inference.onnxrt import OrtNet
from boneseg.core.inference.postprocess import apply_rule
from boneseg.core.labelmap import BONE, LabelSpec
from boneseg.core.networks.models import build_model
from boneseg.core.networks.runtime import Runtime
from boneseg.errors import DataError

CHUNK = 8  # full-size planes resampled back at a time


@dataclass(frozen=True)
class ModelRequest:
    """Which trained fold models segment, on which device, and which ids come out
    (`boneseg segment` / `boneseg assist`'s model options)."""

    checkpoints: list[Path]
    folds: list[int] | None = None  # None: every fold model
    device: str = "auto"  # auto | cpu | cuda
    classes: str = "all"  # all | bone
    ref: str = ""  # how the user named the model (a DICOM-SEG and the proposals' manifest record it)
    backend: str | None = None  # auto | torch | onnxruntime (None: infer.backend)
    precision: str | None = None  # auto | fp32 | int8 (None: infer.precision)
    postprocess: bool = True  # apply the models' cross-validated rule (and infer.postprocess is on)


@dataclass
class FoldModel:
    net: torch.nn.Module | OrtNet  # OrtNet: the ONNX Runtime backend (core.inference.backend)
    classes: str  # "multi" | "single"
    variant: str
    fold: int
    preprocessing: dict  # image_size, window


@torch.no_grad()
def predict_slices(model, image_zss: np.ndarray, rt: Runtime, batch: int = 32,
                   channels_last: bool = True) -> torch.Tensor:
    """Logits (Z, K, S, S) float32 on the CPU for every slice of one case (the input in
    channels_last memory unless `channels_last` is False)."""
    model.eval()
    x_all = torch.from_numpy(stack_25d(image_zss))  # (Z, 3, S, S)
    outs = []
    for i in range(0, x_all.shape[0], batch):
        x = x_all[i:i + batch].to(rt.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            outs.append(model(x).float().cpu())
    return torch.cat(outs)


def find_checkpoints(path: Path) -> list[Path]:
    """A model.pt file, or the fold*.pt (else every model.pt) in a folder such as results/model."""
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(path.glob("fold*.pt")) or sorted(path.rglob("model.pt"))
        if found:
            return found
        raise DataError(f"{path}: no fold*.pt or model.pt checkpoints in this folder.")
    raise DataError(f"{path}: not found.")


def read_model_file(path: Path) -> dict:
    """A trial's model.pt (weights + classes + preprocessing), or a clear error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(
            f"{path}: not a boneseg model checkpoint ({type(exc).__name__}). Pass a fold's model.pt."
        ) from None
    if not isinstance(state, dict) or not {"model", "classes", "preprocessing"} <= set(state):
        raise DataError(f"{path}: not a boneseg model.pt (needs model, classes, preprocessing). A training "
                        "checkpoint.pt holds optimiser state; use the trial's model.pt.")
    return state


def load_fold_models(paths: list[Path], rt: Runtime, folds: list[int] | None = None,
                     nets=None) -> list[FoldModel]:
    """The fold models of `paths` (only `folds`, if given), placed for inference by `rt`.
    `nets([(fold, channels), ...]) -> [OrtNet, ...] | None`: the folds' networks on another
    backend (None, or `nets` None: the checkpoints' PyTorch networks)."""
    states, seen = [], []
    for p in paths:
        state = read_model_file(p)
        seen.append(int(state.get("fold", -1)))
        if folds is None or seen[-1] in folds:
            states.append((seen[-1], LabelSpec.of(state["classes"]).channels, state))
    other = nets([(f, c) for f, c, _ in states]) if nets is not None and states else None
    out = []
    for i, (fold, channels, state) in enumerate(states):
        if other is not None:
            net = other[i]
        else:
            net, _ = build_model(channels, "none")
            net.load_state_dict(state["model"])
            rt.place(net).eval()
        out.append(FoldModel(net, state["classes"], state.get("variant", "?"), fold,
                             dict(state["preprocessing"])))
    if not out:
        raise DataError(f"folds {folds}: none of the {len(paths)} fold models ({sorted(seen)}) matches.")
    kinds = {(m.classes, m.preprocessing["image_size"], tuple(m.preprocessing["window"])) for m in out}
    if len(kinds) > 1:
        raise DataError(f"the fold models differ in classes or preprocessing {sorted(kinds)}; "
                        "an ensemble needs one kind. Pick them with --folds.")
    return out


@torch.no_grad()
def ensemble_probabilities(models: list[FoldModel], planes_zss: np.ndarray, rt: Runtime,
                           batch: int = 8, progress=None) -> np.ndarray:
    """(Z, S, S) windowed slices -> (Z, K, S, S) float32: the mean over fold models of the
    softmax probabilities. Batch-major: each batch of 2.5-D slices is built once and run
    through every fold model before the next (bench/segment_speed.py: faster than one
    model after another, and only one batch of activations is live)."""
    z = planes_zss.shape[0]
    total = None
    for i in range(0, z, batch):
        x = torch.from_numpy(stack_25d(planes_zss, np.arange(i, min(i + batch, z)))).to(rt.device)
        acc = None
        for m in models:
            if isinstance(m.net, OrtNet):
                logits = m.net(x)
            else:
                m.net.eval()
                with rt.autocast():
                    logits = m.net(x.contiguous(memory_format=torch.channels_last))
            probs = logits.float().softmax(dim=1)
            acc = probs if acc is None else acc.add_(probs)
        acc = acc.div_(len(models)).cpu()
        if total is None:
            total = np.empty((z, *acc.shape[1:]), np.float32)
        total[i:i + len(acc)] = acc.numpy()
        if progress is not None:
            progress.update(len(models) * len(acc) / z)
    return total


def _orientations(affine: np.ndarray):
    """(to RAS+, back to the file's order) as nibabel orientation transforms."""
    ornt = nib.orientations.io_orientation(affine)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    return ornt, back


def segment_volume(models: list[FoldModel], ct: Volume, rt: Runtime, classes: str = "all",
                   batch: int = 8, progress=None, rule: dict | None = None) -> np.ndarray:
    """CT in any orientation -> uint8 label ids on exactly its voxel grid (`rule`: a checked
    postprocessing rule, `core.inference.postprocess`, applied last)."""
    return _label_maps([models], ct, rt, classes, batch, progress, rule)[0]


def fold_label_maps(models: list[FoldModel], ct: Volume, rt: Runtime, batch: int = 8) -> list[np.ndarray]:
    """Each fold model's own label map of `ct` (all ids, no postprocessing), the CT
    reoriented, windowed and resampled once for all of them."""
    return _label_maps([[m] for m in models], ct, rt, "all", batch, None, None)


def _label_maps(groups: list[list[FoldModel]], ct: Volume, rt: Runtime, classes: str, batch: int,
                progress, rule: dict | None) -> list[np.ndarray]:
    """One label map per group of fold models (the group's ensemble), from one preparation of the CT."""
    to_ras, back = _orientations(ct.affine)
    ras = nib.orientations.apply_orientation(ct.data, to_ras)  # (X, Y, Z) in RAS+ order
    pre = groups[0][0].preprocessing
    planes = window_planes(np.asarray(ras, dtype=np.float32), int(pre["image_size"]), pre["window"])
    out = []
    for models in groups:
        probs = ensemble_probabilities(models, planes, rt, batch, progress)  # (Z, K, S, S)
        labels = np.empty(ras.shape, np.uint8)
        for z in range(0, probs.shape[0], CHUNK):  # a few full-size planes at a time
            labels[:, :, z:z + CHUNK] = resize_back(probs[z:z + CHUNK], ras.shape[:2]).argmax(axis=-1)
        del probs
        if LabelSpec.of(classes).bone_only:
            labels[labels != BONE] = 0
        labels = np.ascontiguousarray(nib.orientations.apply_orientation(labels, back))
        out.append(apply_rule(labels, rule, ct.spacing) if rule else labels)
    return out


def output_ids(models: list[FoldModel], classes: str) -> list[int]:
    """The label ids a segmentation can hold: bone only (single-class models, --classes bone) or 1-4."""
    return LabelSpec.of(models[0].classes).narrowed(LabelSpec.of(classes)).ids


def bone_ml(labels: np.ndarray, spacing) -> float:
    """The bone volume of a label map in ml (voxel volume from its spacing in mm)."""
    return round(int((labels == 1).sum()) * float(np.prod(spacing)) / 1000.0, 2)


@dataclass
class Setup:
    """A `segment` run's settings, runtime, fold models and postprocessing rule."""

    tc: object  # TrainConfig with the device and batch size of this run
    rt: Runtime
    models: list[FoldModel]
    rule: dict  # {} : none


def inference_setup(cfg: Config, req: ModelRequest) -> Setup:
    """The fold models on the backend that `core.inference.backend.choose` picks, and the
    postprocessing rule their manifest carries (unless turned off)."""
    from boneseg.core.inference.backend import choose, postprocess_rule

    # threads: as set, else this process's (a worker's share of the cores, `core.parallel`)
    tc = cfg.train.model_copy(update={"device": req.device, "eval_batch_size": cfg.infer.batch_size,
                                      "threads": cfg.train.threads or torch.get_num_threads()})
    rt = Runtime.of(tc, training=False)
    nets = choose(req.checkpoints, req.backend or cfg.infer.backend, req.precision or cfg.infer.precision,
                  rt.device.type, tc.threads)
    rule = postprocess_rule(req.checkpoints) if req.postprocess and cfg.infer.postprocess else {}
    return Setup(tc, rt, load_fold_models(req.checkpoints, rt, req.folds, nets), rule)


def result_row(dst: Path, labels: np.ndarray, ct: Volume, t0: float) -> dict:
    """What a segmentation reports: the file, the grid, the seconds it took, the bone volume."""
    return {"output": str(dst), "shape": list(ct.shape), "seconds": time.perf_counter() - t0,
            "bone_ml": bone_ml(labels, ct.spacing)}
