"""One trial: `fit(cfg, case, fold) -> TrialResult`, the unit the sweep multiplies.

Used unchanged by `boneseg train` and by the Ray Tune trainable. Ray and MLflow stay
outside: progress goes to `callbacks` (objects with optional on_start(info),
on_epoch(epoch, metrics, checkpoint_path) and on_end(result)).
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from boneseg.augment import augment, random_crop
from boneseg.config import CASES, Config, TrainConfig
from boneseg.dataset import SliceDataset
from boneseg.errors import ConfigError, DataError
from boneseg.evaluate import evaluate_case, summarise
from boneseg.losses import segmentation_loss
from boneseg.models import build_model
from boneseg.nifti import atomic_path, atomic_write_text
from boneseg.slices import load_index
from boneseg.splits import load_splits


@dataclass
class TrialResult:
    case: str
    fold: int
    bone_dice: float  # the fold score: mean over validation patients
    test_bone_dice: float
    history: list[dict]
    summary_path: str
    checkpoint_path: str
    weights: dict = field(default_factory=dict)
    resumed_from_epoch: int = 0


# ---------------------------------------------------------------- device and precision
def resolve_device(tc: TrainConfig) -> torch.device:
    if tc.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible. Use train.device=auto or cpu.")
    return torch.device("cuda" if tc.device != "cpu" and torch.cuda.is_available() else "cpu")


def autocast_args(tc: TrainConfig, device: torch.device) -> dict:
    """fp16/bf16 autocast on CUDA; fp32 on CPU (bf16 autocast is 10-70x slower on these CPUs)."""
    if device.type != "cuda" or tc.amp == "off":
        return {"device_type": device.type, "enabled": False}
    use_bf16 = tc.amp == "bf16" or (tc.amp == "auto" and torch.cuda.is_bf16_supported())
    return {"device_type": "cuda", "dtype": torch.bfloat16 if use_bf16 else torch.float16, "enabled": True}


def prepare_runtime(tc: TrainConfig) -> tuple[torch.device, dict]:
    """Threads, device and autocast settings of a training run (fit and pretrain)."""
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc)
    return device, autocast_args(tc, device)


def place_model(model, tc: TrainConfig, device: torch.device):
    model.to(device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def grad_scaler(autocast: dict) -> torch.amp.GradScaler:
    """Loss scaling only for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler("cuda", enabled=autocast.get("dtype") == torch.float16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- trial set-up
def trial_fingerprint(cfg: Config, case: str, fold: int) -> str:
    """What a checkpoint must match to be resumed: the trial and every setting it reads."""
    keys = {"case": case, "fold": fold, "train": cfg.train.model_dump(exclude={"out_dir", "num_workers", "device"}),
            "model": cfg.model.model_dump(), "data": {"image_size": cfg.data.image_size, "window": cfg.data.window}}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trial_dir(cfg: Config, case: str, fold: int) -> Path:
    return Path(cfg.train.out_dir) / case / f"fold{fold}"


def fold_cases(cfg: Config, fold: int) -> tuple[list[str], list[str], list[str]]:
    splits = load_splits(cfg.data.splits_file)
    if not 0 <= fold < len(splits["folds"]):
        raise ConfigError(f"--fold {fold}: {cfg.data.splits_file} has folds 0..{len(splits['folds']) - 1}.")
    f = splits["folds"][fold]
    return f["train"], f["val"], splits["test"]


def make_optim(model, tc: TrainConfig, steps_per_epoch: int, epochs: int):
    total = epochs * steps_per_epoch
    if total < 4:
        raise ConfigError(f"train: only {total} optimiser steps ({epochs} epochs x {steps_per_epoch} batches); "
                          "one-cycle needs at least 4. Raise the epochs (train.epochs, pretrain.epochs) or lower the batch size.")
    # tiny runs (tests, smoke): the warm-up must span at least ~1.5 steps for OneCycleLR
    pct = max(tc.pct_start, min(1.5 / total, 0.5))
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr / tc.div_factor, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=tc.lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=pct,
        div_factor=tc.div_factor, final_div_factor=tc.final_div_factor)
    return opt, sched


def make_loader(ds, tc: TrainConfig, epoch: int, seed: int) -> DataLoader:
    # a fresh generator per epoch: the shuffle order depends on (seed, epoch) only, so a
    # resumed run sees exactly the batches an uninterrupted one would
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    return DataLoader(ds, batch_size=tc.batch_size, shuffle=True, generator=g, drop_last=len(ds) >= tc.batch_size,
                      num_workers=tc.num_workers, persistent_workers=False)


def train_epoch(model, loader, opt, sched, scaler, tc: TrainConfig, device, autocast: dict) -> dict:
    model.train()
    total, n, t0 = 0.0, 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if tc.patch_size:
            x, y = random_crop(x, y, tc.patch_size)
        if tc.augment:
            x, y = augment(x, y)
        if tc.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(**autocast):
            logits = model(x)
        loss = segmentation_loss(logits, y, tc.loss, tc.ce_weight)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        total += loss.detach().item() * x.shape[0]
        n += x.shape[0]
    secs = time.perf_counter() - t0
    return {"train_loss": total / max(n, 1), "images_per_s": n / max(secs, 1e-9), "train_seconds": secs,
            "lr": float(sched.get_last_lr()[0])}


def validate(model, cases, cfg: Config, classes: str, device, autocast: dict, index: dict) -> tuple[dict, list]:
    rows = [evaluate_case(model, c, Path(cfg.data.slices_dir), Path(cfg.data.labels_dir), index, classes, device,
                          autocast, cfg.train.loss, cfg.train.eval_batch_size, cfg.train.targets) for c in cases]
    return summarise(rows), rows


def epoch_metrics(train: dict, val: dict) -> dict:
    m = {**train, "val_loss": val["loss"], "val_bone_dice": val["bone_dice"],
         "val_bone_dice_pooled": val["bone_dice_pooled"]}
    m.update({f"val_dice_{k}": v for k, v in val["dice"].items()})
    return m


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(f"{path}: checkpoint of a trial with other settings. Pass --restart to start over, "
                          "or another train.out_dir.")
    return state


# ---------------------------------------------------------------- fit
def fit(cfg: Config, case: str, fold: int, out_dir: str | Path | None = None, callbacks=(),
        resume: bool = True) -> TrialResult:
    """Train one (case, fold) trial, evaluate it in 3-D, write summary.json; resume if possible."""
    if case not in CASES:
        raise ConfigError(f"case {case!r}: expected one of {list(CASES)}")
    classes, init = CASES[case]
    tc = cfg.train
    out = Path(out_dir) if out_dir else trial_dir(cfg, case, fold)
    train_cases, val_cases, test_cases = fold_cases(cfg, fold)
    index = load_index(cfg.data.slices_dir)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device, autocast = prepare_runtime(tc)
    seed_everything(tc.seed + fold)
    model, weights = build_model(5 if classes == "multi" else 2,
                                 cfg.model.encoder_weights if init == "pretrained" else "none", cfg.model.thigh_weights)
    place_model(model, tc, device)
    ds = SliceDataset(cfg.data.slices_dir, train_cases, classes, tc.targets)
    if len(ds) == 0:
        raise DataError(f"fold {fold}: no training slices under {cfg.data.slices_dir}.")
    steps = len(make_loader(ds, tc, 0, tc.seed))
    opt, sched = make_optim(model, tc, steps, tc.epochs)
    scaler = grad_scaler(autocast)
    fp = trial_fingerprint(cfg, case, fold)
    ckpt_path = out / "checkpoint.pt"
    state = load_checkpoint(ckpt_path, fp) if resume else None
    history, start = [], 0
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        history, start = state["history"], state["epoch"] + 1
    info = {"case": case, "fold": fold, "classes": classes, "init": init, "weights": weights, "device": str(device),
            "amp": str(autocast.get("dtype", "fp32")) if autocast["enabled"] else "fp32", "train_cases": train_cases,
            "val_cases": val_cases, "test_cases": test_cases, "steps_per_epoch": steps, "resumed_from_epoch": start}
    for cb in callbacks:
        getattr(cb, "on_start", lambda i: None)(info)
    last_val = None  # (summary, rows) of the model as it stands
    for epoch in range(start, tc.epochs):
        tr = train_epoch(model, make_loader(ds, tc, epoch, tc.seed), opt, sched, scaler, tc, device, autocast)
        val, rows = last_val = validate(model, val_cases, cfg, classes, device, autocast, index)
        metrics = {"epoch": epoch, **epoch_metrics(tr, val)}
        history.append(metrics)
        save_checkpoint(ckpt_path, fingerprint=fp, epoch=epoch, model=model.state_dict(),
                        optimizer=opt.state_dict(), scheduler=sched.state_dict(), scaler=scaler.state_dict(),
                        rng=rng_state(), history=history, info=info)
        for cb in callbacks:
            getattr(cb, "on_epoch", lambda *a: None)(epoch, metrics, ckpt_path)
    result = finish(model, cfg, case, fold, out, history, info, device, autocast, index, ckpt_path, last_val)
    for cb in callbacks:
        getattr(cb, "on_end", lambda r: None)(result)
    return result


def finish(model, cfg, case, fold, out, history, info, device, autocast, index, ckpt_path,
           last_val=None) -> TrialResult:
    """Final 3-D evaluation of validation and test patients -> summary.json + model.pt.
    `last_val` is the last epoch's validation of this same model (None after a resume
    that had no epoch left to train)."""
    classes = info["classes"]
    val, val_rows = last_val or validate(model, info["val_cases"], cfg, classes, device, autocast, index)
    test, test_rows = validate(model, info["test_cases"], cfg, classes, device, autocast, index) \
        if info["test_cases"] else ({"bone_dice": float("nan")}, [])
    summary = {"case": case, "fold": fold, "classes": classes, "init": info["init"], "weights": info["weights"],
               "bone_dice": val["bone_dice"], "mean": val, "metric_per_case": val_rows,
               "test": {"bone_dice": test["bone_dice"], "mean": test, "metric_per_case": test_rows},
               "preprocessing": {"image_size": index["image_size"], "window": index["window"]}}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=float) + "\n")
    atomic_write_text(out / "history.json", json.dumps(history, indent=1) + "\n")
    save_checkpoint(out / "model.pt", model=model.state_dict(), classes=classes, case=case, fold=fold,
                    preprocessing=summary["preprocessing"], weights=info["weights"])
    return TrialResult(case, fold, val["bone_dice"], test["bone_dice"], history, str(out / "summary.json"),
                       str(ckpt_path), info["weights"], info["resumed_from_epoch"])


# ---------------------------------------------------------------- CLI
def baselines(cfg: Config, cases: list[str]) -> dict:
    """Threshold-only and threshold+fill bone Dice of the same patients (from label QA)."""
    qa_path = Path(cfg.data.labels_dir) / "qa.json"
    if not qa_path.is_file():
        return {}
    rows = {r["case"]: r for r in json.loads(qa_path.read_text())["cases"]}
    from boneseg.metrics import nanmean

    return {k: nanmean([rows[c].get(k) for c in cases if c in rows]) for k in ("dice_threshold", "dice_filled")}


class _Printer:
    def on_start(self, info):
        print(f"train: {info['case']} fold {info['fold']} on {info['device']} ({info['amp']}), "
              f"encoder {info['weights'].get('source')}, {len(info['train_cases'])} train / "
              f"{len(info['val_cases'])} val patients, {info['steps_per_epoch']} steps/epoch"
              + (f", resumed after epoch {info['resumed_from_epoch'] - 1}" if info["resumed_from_epoch"] else ""),
              flush=True)

    def on_epoch(self, epoch, m, _ckpt):
        print(f"  epoch {epoch}: train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
              f"val_bone_dice {m['val_bone_dice']:.4f}  ({m['images_per_s']:.1f} img/s)", flush=True)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train + evaluate one (case, fold) trial without Ray, tracked in MLflow")
    p.add_argument("--case", required=True, choices=list(CASES))
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-mlflow", action="store_true", help="do not record the run in MLflow")
    p.set_defaults(func=main)


def main(args, cfg: Config) -> int:
    callbacks: list = [_Printer()]
    tracker = None
    if not args.no_mlflow:
        from boneseg.tracking import MlflowTrial

        tracker = MlflowTrial(cfg, f"{args.case}/fold{args.fold}", {"kind": "train"})
        callbacks.append(tracker)
    ok = False
    try:
        t0 = time.perf_counter()
        r = fit(cfg, args.case, args.fold, callbacks=callbacks, resume=not args.restart)
        ok = True
    finally:
        if tracker:
            tracker.close(ok)
    _, val_cases, _ = fold_cases(cfg, args.fold)
    base = baselines(cfg, val_cases)
    print(f"train: {args.case} fold {args.fold}: validation bone Dice {r.bone_dice:.4f}, test {r.test_bone_dice:.4f} "
          f"({time.perf_counter() - t0:.0f} s)")
    if base:
        print(f"  baselines on the same validation patients: threshold-only {base['dice_threshold']:.4f}, "
              f"threshold+fill {base['dice_filled']:.4f}")
    print(f"  summary: {r.summary_path}" + (f"; MLflow run {tracker.run_id}" if tracker else ""))
    return 0
