"""One trial: `fit(cfg, variant, fold) -> TrialResult`, the unit the sweep multiplies.

Used unchanged by `boneseg train` and by the Ray Tune trial adapter. Ray and MLflow stay
outside: progress goes to `callbacks` (objects with optional on_start(info),
on_epoch(epoch, metrics, checkpoint_path) and on_end(result)). The result carries its
summary in memory; summary.json, history.json and model.pt are written for people and
for `boneseg segment`.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from boneseg.core.config import VARIANTS, Config, TrainConfig
from boneseg.core.data.dataset import SliceDataset, make_loader
from boneseg.core.data.device_data import DeviceSlices, use_device_data
from boneseg.core.engine import resources
from boneseg.core.engine.augment import prepare_batch
from boneseg.core.evaluation.validate import validate, write_predictions
from boneseg.core.io import atomic_path, write_json
from boneseg.core.labelmap import LabelSpec
from boneseg.core.layout import PREDICTIONS, load_index, load_splits
from boneseg.core.networks.checkpoint import CorruptCheckpoint, read_checkpoint, save_checkpoint
from boneseg.core.networks.losses import segmentation_loss
from boneseg.core.networks.models import build_model
from boneseg.core.networks.optim import Stepper
from boneseg.core.networks.runtime import Runtime, deterministic, rng_state, seed_everything, set_rng_state
from boneseg.errors import ConfigError, DataError


@dataclass
class TrialInfo:
    """What a trial is and how it runs, known before its first epoch; callbacks get it in
    `on_start` (the MLflow run's tags, the terminal's first line)."""

    variant: str
    fold: int
    classes: str  # "multi" | "single"
    init: str  # "random" | "pretrained"
    weights: dict  # the encoder's initial weights: {"source": ..., ...}
    device: str
    amp: str  # fp32 | float16 | bfloat16
    train_cases: list[str]
    val_cases: list[str]
    test_cases: list[str]
    steps_per_epoch: int
    data_on_device: bool
    resumed_from_epoch: int
    out_dir: str
    setup_seconds: float = 0.0


@dataclass
class TrialResult:
    variant: str
    fold: int
    bone_dice: float  # the fold score: mean over validation patients
    test_bone_dice: float
    summary: dict  # what summary.json holds: scores, per-case rows, test, preprocessing
    history: list[dict]
    out_dir: str  # summary.json, history.json, model.pt
    weights: dict = field(default_factory=dict)
    resumed_from_epoch: int = 0


# ---------------------------------------------------------------- trial set-up
def trial_fingerprint(cfg: Config, variant: str, fold: int) -> str:
    """What a checkpoint must match to be resumed: the trial and every setting it reads."""
    keys = {
        "variant": variant,
        "fold": fold,
        "train": cfg.train.model_dump(exclude={"out_dir", "num_workers", "device", "data_on_device",
                                                "data_memory_gib"}),
        "model": cfg.model.model_dump(),
        "data": {"image_size": cfg.data.image_size, "window": cfg.data.window},
    }
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trial_dir(cfg: Config, variant: str, fold: int) -> Path:
    return Path(cfg.train.out_dir) / variant / f"fold{fold}"


def fold_cases(cfg: Config, fold: int) -> tuple[list[str], list[str], list[str]]:
    """(train, validation, test) case ids of cross-validation fold `fold`."""
    splits = load_splits(cfg.data.splits_file)
    if not 0 <= fold < len(splits["folds"]):
        raise ConfigError(f"fold {fold}: {cfg.data.splits_file} has folds 0..{len(splits['folds']) - 1}.")
    f = splits["folds"][fold]
    return f["train"], f["val"], splits["test"]


def train_epoch(model, loader, stepper: Stepper, tc: TrainConfig, rt: Runtime) -> dict:
    model.train()
    total, n, t0, skipped = 0.0, 0, time.perf_counter(), 0
    for x, y in loader:
        x, y = prepare_batch(x, y, tc, rt)
        with rt.autocast():
            logits = model(x)
        loss = segmentation_loss(logits, y, tc.loss, tc.ce_weight)
        skipped += stepper.step(loss)
        total += loss.detach().item() * x.shape[0]
        n += x.shape[0]
    secs = time.perf_counter() - t0
    out = {"train_loss": total / max(n, 1), "images_per_s": n / max(secs, 1e-9), "train_seconds": secs,
           "lr": stepper.lr}
    if stepper.scaler.is_enabled():  # fp16: steps the scaler skipped (inf/NaN gradients)
        out["amp_skipped_steps"] = skipped
    return out


def validates(epoch: int, tc: TrainConfig) -> bool:
    """Validation after every `train.val_every`-th epoch and always after the last one."""
    return (epoch + 1) % tc.val_every == 0 or epoch == tc.epochs - 1


def epoch_metrics(val: dict) -> dict:
    m = {
        "val_loss": val["loss"],
        "val_bone_dice": val["bone_dice"],
        "val_bone_dice_pooled": val["bone_dice_pooled"],
    }
    m.update({f"val_dice_{k}": v for k, v in val["dice"].items()})
    return m


# ---------------------------------------------------------------- checkpoints
def discard_corrupt(path: Path, why: str) -> None:
    """Move a damaged checkpoint aside (`<name>.corrupt`, for a look) with a warning naming it:
    it must never block the trial that would resume from it."""
    os.replace(path, path.with_name(path.name + ".corrupt"))
    print(f"boneseg: warning: {path}: {why}; set aside as {path.name}.corrupt, training starts afresh.",
          file=sys.stderr, flush=True)


def load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The training state at `path`, or None if there is none or it is damaged (set aside)."""
    if not path.is_file():
        return None
    try:
        state = read_checkpoint(path)
    except CorruptCheckpoint as exc:
        discard_corrupt(path, str(exc))
        return None
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(f"{path}: checkpoint of a trial with other settings. Pass --restart to start over, "
                          "or another train.out_dir.")
    return state


def maybe_resume(path: Path, fingerprint: str, model, stepper: Stepper) -> tuple[list[dict], int]:
    """Restore every piece of training state from `path` if it exists: (history, next epoch)."""
    state = load_checkpoint(path, fingerprint)
    if not state:
        return [], 0
    model.load_state_dict(state["model"])
    stepper.load_state_dict(state)
    set_rng_state(state["rng"])
    return state["history"], state["epoch"] + 1


# ---------------------------------------------------------------- fit
def fit(cfg: Config, variant: str, fold: int, out_dir: str | Path | None = None, callbacks=(),
        resume: bool = True) -> TrialResult:
    """Train one (variant, fold) trial, evaluate it in 3-D, write summary.json; resume if possible.
    torch's deterministic algorithms are on for the trial and as they were afterwards."""
    with deterministic():
        return _fit(cfg, variant, fold, out_dir, callbacks, resume)


def epoch_loader(ds: SliceDataset, tc: TrainConfig, rt: Runtime):
    """(epoch -> that epoch's batches, whether they come from the device): the same batches
    either way (core/data/device_data.py)."""
    on_device = use_device_data(tc.data_on_device, ds, rt.device, tc.data_memory_gib)
    slices = DeviceSlices.from_dataset(ds, rt.device, rt.channels_last) if on_device else None

    def loader(epoch: int):
        if slices is not None:
            return slices.batches(tc.batch_size, epoch, tc.seed)
        return make_loader(ds, tc, epoch, tc.seed)

    return loader, on_device


def setup_fold(cfg: Config, variant: str, fold: int, train_cases: list[str], rt: Runtime):
    """(model, weights, loader, on_device, steps per epoch, stepper): one fold's seeded network with the
    variant's initialisation, placed by `rt`, its epochs' batches and its optimiser and
    schedule; what `fit` trains, and each inner fold of a search (`core.engine.search`)."""
    tc, (classes, init) = cfg.train, (VARIANTS[variant].classes, VARIANTS[variant].init)
    seed_everything(tc.seed + fold)
    model, weights = build_model(LabelSpec.of(classes).channels,
                                 cfg.model.encoder_weights if init == "pretrained" else "none",
                                 cfg.model.thigh_weights)
    rt.place(model)
    ds = SliceDataset(cfg.data.slices_dir, train_cases, classes, tc.targets)
    if len(ds) == 0:
        raise DataError(f"fold {fold}: no training slices under {cfg.data.slices_dir}.")
    loader, on_device = epoch_loader(ds, tc, rt)
    steps = len(loader(0))
    return model, weights, loader, on_device, steps, Stepper.build(model, tc, steps, tc.epochs, rt)


def _fit(cfg: Config, variant: str, fold: int, out_dir, callbacks, resume: bool) -> TrialResult:
    t_start = time.perf_counter()
    if variant not in VARIANTS:
        raise ConfigError(f"variant {variant!r}: expected one of {list(VARIANTS)}")
    classes, init = VARIANTS[variant].classes, VARIANTS[variant].init
    tc = cfg.train
    out = Path(out_dir) if out_dir else trial_dir(cfg, variant, fold)
    train_cases, val_cases, test_cases = fold_cases(cfg, fold)
    index = load_index(cfg.data.slices_dir)
    rt = Runtime.of(tc)
    rss_scope = resources.start(rt.device)  # this trial's peaks, not the (reused) worker's
    model, weights, loader, on_device, steps, stepper = setup_fold(cfg, variant, fold, train_cases, rt)
    fingerprint = trial_fingerprint(cfg, variant, fold)
    ckpt_path = out / "checkpoint.pt"
    history, start = maybe_resume(ckpt_path, fingerprint, model, stepper) if resume else ([], 0)
    info = TrialInfo(variant, fold, classes, init, weights, str(rt.device), rt.amp, train_cases, val_cases,
                     test_cases, steps, on_device, start, str(out))
    for cb in callbacks:
        getattr(cb, "on_start", lambda i: None)(info)
    info.setup_seconds = time.perf_counter() - t_start
    last_val = None  # (summary, rows, maps) of the model as it stands, if validated after its last epoch
    for epoch in range(start, tc.epochs):
        tr = train_epoch(model, loader(epoch), stepper, tc, rt)
        metrics, last_val = {"epoch": epoch, **tr}, None
        if validates(epoch, tc):
            t = time.perf_counter()
            val, _, _ = last_val = validate(model, val_cases, cfg, classes, rt, index)
            metrics.update(epoch_metrics(val), val_seconds=time.perf_counter() - t)
        history.append(metrics)
        save_checkpoint(ckpt_path, dict(fingerprint=fingerprint, epoch=epoch, model=model.state_dict(),
                                        **stepper.state_dict(), rng=rng_state(), history=history,
                                        info=asdict(info)))
        for cb in callbacks:
            getattr(cb, "on_epoch", lambda *a: None)(epoch, metrics, ckpt_path)
    result = finish(model, cfg, info, history, rt, last_val, rss_scope)
    for cb in callbacks:
        getattr(cb, "on_end", lambda r: None)(result)
    return result


def finish(model, cfg: Config, info: TrialInfo, history: list, rt: Runtime, last_val=None,
           rss_scope: str = "process") -> TrialResult:
    """Final 3-D evaluation of validation and test patients -> summary.json + model.pt, and
    every predicted label map in predictions/ (cases this model did not train on).
    `last_val` is the last epoch's validation of this same model (None after a resume
    that had no epoch left to train)."""
    classes, out, index = info.classes, Path(info.out_dir), load_index(cfg.data.slices_dir)
    t0 = time.perf_counter()
    val, val_rows, maps = last_val or validate(model, info.val_cases, cfg, classes, rt, index)
    t1 = time.perf_counter()
    test, test_rows, test_maps = (
        validate(model, info.test_cases, cfg, classes, rt, index)
        if info.test_cases
        else ({"bone_dice": float("nan")}, [], {})
    )
    write_predictions(out / PREDICTIONS, {**maps, **test_maps})
    timing = {"setup_s": info.setup_seconds,
              "train_s": sum(h.get("train_seconds", 0.0) for h in history),
              "epoch_val_s": sum(h.get("val_seconds", 0.0) for h in history),
              "final_val_s": t1 - t0, "test_s": time.perf_counter() - t1}
    pre = {"image_size": index["image_size"], "window": index["window"]}
    summary = {
        "variant": info.variant,
        "fold": info.fold,
        "classes": classes,
        "init": info.init,
        "weights": info.weights,
        "bone_dice": val["bone_dice"],
        "mean": val,
        "metric_per_case": val_rows,
        "test": {"bone_dice": test["bone_dice"], "mean": test, "metric_per_case": test_rows},
        "preprocessing": pre,
        "timing": timing,  # seconds; the sweep adds its reporting time (docs/benchmarks.md)
        "resources": resources.read(rt.device, history, rss_scope),  # device, peak memory, img/s
    }
    write_json(out / "summary.json", summary)
    write_json(out / "history.json", history)
    with atomic_path(out / "model.pt") as tmp:  # a plain torch file: torch.load(weights_only=True) reads it
        torch.save(dict(model=model.state_dict(), classes=classes, variant=info.variant, fold=info.fold,
                        preprocessing=pre, weights=info.weights), tmp)
    return TrialResult(info.variant, info.fold, val["bone_dice"], test["bone_dice"], summary, history,
                       str(out), info.weights, info.resumed_from_epoch)
