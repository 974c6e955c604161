"""3-D evaluation of a model on the training slices of some cases: predict every slice,
restack, resample back to the CT's own grid, argmax, and score per docs/architecture.md
(`metrics.case_metrics`), keeping each predicted label map (a trial writes them as its
out-of-fold proposals, `core.labelling.assist`); and `evaluate_folder`, label maps on disk vs ground truth
(nnU-Net's evaluate_folder)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from boneseg.core.config import Config
from boneseg.core.data.dataset import open_targets, training_targets
from boneseg.core.data.preprocess import resize_back
from boneseg.core.evaluation.metrics import case_metrics, fold_summary, n_nan, nanmean
from boneseg.core.imaging.nifti import Volume, check_pair, load_labels, save_volume, strip_nifti_suffix
from boneseg.core.inference.predict import predict_slices
from boneseg.core.io import atomic_dir
from boneseg.core.labelmap import LABEL_IDS, LabelSpec
from boneseg.core.layout import SLICE_IMAGE, label_path
from boneseg.core.networks.losses import segmentation_loss
from boneseg.core.networks.runtime import Runtime
from boneseg.errors import DataError


def evaluate_case(model, case: str, cfg: Config, classes: str, rt: Runtime,
                  index: dict) -> tuple[dict, Volume]:
    """Predict one patient and score it in its CT's own space; also the 2-D loss at slice
    size against the same kind of target that training uses (`train.loss`,
    `train.targets`). -> (scores, the label map)."""
    tc = cfg.train
    d = Path(cfg.data.slices_dir) / case
    image = np.load(d / SLICE_IMAGE, mmap_mode="r")
    small_truth = training_targets(open_targets(d, tc.targets, mmap=False), classes, tc.targets)
    logits = predict_slices(model, image, rt, tc.eval_batch_size)
    loss = float(segmentation_loss(logits, small_truth, tc.loss))
    info = index["cases"][case]
    probs = logits.softmax(dim=1).numpy()  # (Z, K, S, S)
    pred = resize_back(probs, tuple(info["shape"][:2])).argmax(axis=-1).astype(np.uint8)  # (X, Y, Z)
    labels = load_labels(label_path(cfg.data.labels_dir, case))
    truth = LabelSpec.of(classes).merge(labels.data)
    row = {"case": case, "loss": loss, **case_metrics(pred, truth, info["spacing"], logits.shape[1])}
    return row, Volume(pred, labels.affine)


def validate(model, cases: list[str], cfg: Config, classes: str, rt: Runtime,
             index: dict) -> tuple[dict, list, dict]:
    """Score `cases` -> (fold summary, per-case rows, {case: predicted label map})."""
    rows, maps = [], {}
    for c in cases:
        row, maps[c] = evaluate_case(model, c, cfg, classes, rt, index)
        rows.append(row)
    return fold_summary(rows), rows, maps


def write_predictions(folder: Path, maps: dict) -> None:
    """{case: label map} -> folder/<case>.nii.gz (uint8 ids on the CT's grid), the folder
    replaced whole."""
    with atomic_dir(folder) as tmp:
        for case, vol in sorted(maps.items()):
            save_volume(vol, tmp / f"{case}.nii.gz")


# ---------------------------------------------------------------- label maps on disk
def pair_files(pred: Path, truth: Path) -> list[tuple[str, Path, Path]]:
    """FILE + FILE, or DIR + DIR matched by file name (every prediction needs its truth)."""
    if pred.is_file() and truth.is_file():
        return [(strip_nifti_suffix(pred.name), pred, truth)]
    if not (pred.is_dir() and truth.is_dir()):
        raise DataError(f"{pred} / {truth}: give two files or two folders that exist "
                        "(predictions, then truth).")
    truths = {strip_nifti_suffix(p.name): p for p in sorted(truth.glob("*.nii*"))}
    pairs = []
    for p in sorted(pred.glob("*.nii*")):
        key = strip_nifti_suffix(p.name)
        if key not in truths:
            raise DataError(f"{p}: no ground truth {truth}/{key}.nii.gz. Add it or remove the prediction.")
        pairs.append((key, p, truths[key]))
    if not pairs:
        raise DataError(f"{pred}: no .nii/.nii.gz predictions found.")
    return pairs


def evaluate_folder(pred: Path, truth: Path, classes: str = "all") -> dict:
    """classes="bone": score bone only (for single-class predictions; ids 2-4 count as background)."""
    n = LabelSpec.of(classes).channels
    rows = []
    for case, p, t in pair_files(Path(pred), Path(truth)):
        tv = load_labels(t)
        pv = load_labels(p)
        check_pair(tv, pv, t, p)
        rows.append({"case": case, **case_metrics(pv.data, tv.data, tv.spacing, n)})
    names = [LABEL_IDS[k] for k in range(1, n)]
    mean = {c: {"dice": nanmean([r["dice"][c] for r in rows]), "n_nan": n_nan([r["dice"][c] for r in rows])}
            for c in names}
    return {"metric_per_case": rows, "mean": mean, "bone_dice": mean["bone"]["dice"], "n_cases": len(rows)}
