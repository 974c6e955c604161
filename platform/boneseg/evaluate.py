"""3-D evaluation: predict every slice of a patient, restack, resample back to the CT's
own grid, argmax, and score per DESIGN.md (bone Dice with the empty-truth policy,
per-class Dice, TP/FP/FN, volumes in ml). Also the nnU-Net-style summary of a fold."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from boneseg.dataset import fold_labels, fold_targets, open_targets
from boneseg.losses import segmentation_loss
from boneseg.metrics import dice, nanmean
from boneseg.nifti import LABEL_IDS, load_labels
from boneseg.slices import resize_back


def stack_all_25d(image_zss: np.ndarray) -> np.ndarray:
    """(Z, S, S) -> (Z, 3, S, S): every slice with its neighbours, edges repeated."""
    prev = np.concatenate([image_zss[:1], image_zss[:-1]])
    nxt = np.concatenate([image_zss[1:], image_zss[-1:]])
    return np.stack([prev, image_zss, nxt], axis=1)


@torch.no_grad()
def predict_slices(model, image_zss: np.ndarray, device, autocast: dict, batch: int = 32,
                   channels_last: bool = True) -> torch.Tensor:
    """Logits (Z, K, S, S) float32 on the CPU for every slice of one case."""
    model.eval()
    x_all = torch.from_numpy(stack_all_25d(np.asarray(image_zss, dtype=np.float32)))
    outs = []
    for i in range(0, x_all.shape[0], batch):
        x = x_all[i:i + batch].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(**autocast):
            outs.append(model(x).float().cpu())
    return torch.cat(outs)


def case_metrics(pred: np.ndarray, truth: np.ndarray, spacing, n_classes: int) -> dict:
    """pred/truth (X, Y, Z) label maps on the same grid -> metrics of one patient."""
    ml = float(np.prod(spacing)) / 1000.0
    out = {"bone_dice": dice(pred == 1, truth == 1), "dice": {}, "tp": {}, "fp": {}, "fn": {},
           "volume_ml_pred": {}, "volume_ml_truth": {}}
    for lid in range(1, n_classes):
        name = LABEL_IDS[lid]
        p, g = pred == lid, truth == lid
        out["dice"][name] = dice(p, g)
        out["tp"][name] = int((p & g).sum())
        out["fp"][name] = int((p & ~g).sum())
        out["fn"][name] = int((~p & g).sum())
        out["volume_ml_pred"][name] = round(int(p.sum()) * ml, 3)
        out["volume_ml_truth"][name] = round(int(g.sum()) * ml, 3)
    return out


def evaluate_case(model, case: str, slices_dir: Path, labels_dir: Path, index: dict, classes: str,
                  device, autocast: dict, loss_kind: str = "dice_ce", batch: int = 32, targets: str = "hard") -> dict:
    """Predict one patient and score it in its CT's own space; also the 2-D loss at slice
    size against the same kind of target that training uses."""
    d = Path(slices_dir) / case
    image = np.load(d / "image.npy", mmap_mode="r")
    small_truth = fold_targets(open_targets(d, targets, mmap=False), classes, targets)
    logits = predict_slices(model, image, device, autocast, batch)
    loss = float(segmentation_loss(logits, small_truth, loss_kind))
    info = index["cases"][case]
    probs = logits.softmax(dim=1).numpy()  # (Z, K, S, S)
    pred = resize_back(probs, tuple(info["shape"][:2])).argmax(axis=-1).astype(np.uint8)  # (X, Y, Z)
    truth = fold_labels(load_labels(Path(labels_dir) / f"{case}.nii.gz").data, classes)
    return {"case": case, "loss": loss, **case_metrics(pred, truth, info["spacing"], logits.shape[1])}


def summarise(rows: list[dict]) -> dict:
    """Fold score = mean bone Dice over patients (NaN = both empty, left out and counted)."""
    bone = [r["bone_dice"] for r in rows]
    classes = sorted({k for r in rows for k in r["dice"]})
    tp = sum(r["tp"].get("bone", 0) for r in rows)
    fp = sum(r["fp"].get("bone", 0) for r in rows)
    fn = sum(r["fn"].get("bone", 0) for r in rows)
    return {
        "bone_dice": nanmean(bone),
        "bone_dice_pooled": 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else float("nan"),
        "bone_tp": tp, "bone_fp": fp, "bone_fn": fn,
        "n_cases": len(rows),
        "n_nan": int(sum(np.isnan(b) for b in bone)),
        "loss": nanmean([r["loss"] for r in rows]),
        "dice": {c: nanmean([r["dice"].get(c) for r in rows]) for c in classes},
    }
