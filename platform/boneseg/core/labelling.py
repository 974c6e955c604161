"""Label derivation: derived label maps + label QA (data/labels/<case>.nii.gz, qa.json).

- thigh CTs: the study's threshold masks: HU threshold -> 3-D connected components
  (small or dim ones dropped) -> closing -> slice-wise hole filling, which brings the
  marrow cavity (soft-tissue / fatty HU) into the femur;
- abdominal CTs: the same bone proposal, then the final map taken, in this order, from
  data/corrections/<case>.nii.gz (hand edited), else the case's ground truth, else the
  proposal (flagged unreviewed).
QA per case: bone Dice of threshold-only vs threshold+fill vs final against the truth,
the bone voxels the threshold misses, the kidney/vessel voxels "bright = bone" catches,
and the voxels the correction changed (the manual effort).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from boneseg.core.config import Config, LabelsConfig
from boneseg.core.io import write_json
from boneseg.core.layout import QA_FILE, correction_path, find_cases, label_path
from boneseg.core.metrics import dice, nanmean
from boneseg.core.nifti import Volume, load_ct, load_labels, save_volume


def fill_marrow(hu: np.ndarray, spacing, threshold_hu: float, cfg: LabelsConfig) -> np.ndarray:
    """Threshold -> clean components -> closing -> slice-wise hole fill. (X, Y, Z) bool."""
    mask = hu >= threshold_hu
    lab, n = ndimage.label(mask)
    if n:
        idx = np.arange(1, n + 1)
        sizes = ndimage.sum_labels(mask, lab, idx)
        means = ndimage.mean(hu, lab, idx)
        keep = (sizes >= cfg.min_component_voxels) & (means >= cfg.component_min_mean_hu)
        mask = np.isin(lab, idx[keep])
    r = int(round(cfg.closing_mm / float(min(spacing[0], spacing[1]))))
    if r > 0:  # in-plane closing bridges partial-volume gaps in thin cortical shells
        st = ndimage.generate_binary_structure(2, 1)
        st = ndimage.iterate_structure(st, r)[..., None]
        padded = np.pad(mask, ((r, r), (r, r), (0, 0)))
        mask = ndimage.binary_closing(padded, structure=st)[r:-r, r:-r, :]
    for z in range(mask.shape[2]):
        mask[..., z] = ndimage.binary_fill_holes(mask[..., z])
    return mask


def bone_proposals(ct: Volume, cohort: str, cfg: LabelsConfig) -> dict[str, np.ndarray]:
    """The threshold proposals of one CT: {"threshold": HU >= the cohort's level,
    "filled": that + component cleaning, closing and marrow fill}, (X, Y, Z) bool."""
    level = getattr(cfg.threshold_hu, cohort, cfg.threshold_hu.abdomen)
    return {"threshold": ct.data >= level, "filled": fill_marrow(ct.data, ct.spacing, level, cfg)}


def derive_case(case: dict, corrections_dir: Path, cfg: LabelsConfig) -> tuple[Volume, dict]:
    ct = load_ct(case["ct"])
    truth = load_labels(case["truth"], ct, case["ct"]) if case["truth"] else None
    prop = bone_proposals(ct, case["cohort"], cfg)
    thr, filled = prop["threshold"], prop["filled"]
    proposal = filled.astype(np.uint8)
    correction = correction_path(corrections_dir, case["case"])
    if case["cohort"] == "thigh":
        final, source = proposal, "threshold"  # the study's femur masks are the threshold masks
    elif correction.is_file():
        final, source = load_labels(correction, ct, case["ct"]).data, "correction"
    elif truth is not None:
        final, source = truth.data, "truth"
    else:
        final, source = proposal, "proposal-unreviewed"
    qa = {
        "case": case["case"],
        "cohort": case["cohort"],
        "phase": case["phase"],
        "label_source": source,
        "reviewed": source in ("correction", "truth", "threshold"),
        # manual effort: every voxel whose label differs from the proposal, and the bone part
        "corrected_voxels": int((final != proposal).sum()) if case["cohort"] != "thigh" else 0,
        "corrected_bone_voxels": int(((final == 1) != (proposal == 1)).sum())
        if case["cohort"] != "thigh"
        else 0,
    }
    if truth is not None:
        bone = truth.data == 1
        qa.update(dice_threshold=dice(thr, bone), dice_filled=dice(filled, bone),
                  dice_final=dice(final == 1, bone),
                  bone_missed_by_threshold=round(float((bone & ~thr).sum() / max(bone.sum(), 1)), 4),
                  non_bone_caught_by_threshold=int((thr & np.isin(truth.data, (2, 3, 4))).sum()))
    return Volume(final.astype(np.uint8), ct.affine), qa


def summarise(rows: list[dict]) -> dict:
    total = {}
    for key in ("dice_threshold", "dice_filled", "dice_final", "bone_missed_by_threshold"):
        for cohort in ("abdomen", "thigh"):
            vals = [r[key] for r in rows if r["cohort"] == cohort and key in r]
            if vals:
                total[f"{cohort}_{key}"] = round(nanmean(vals), 4)
    total["corrected_voxels"] = sum(r["corrected_voxels"] for r in rows)
    total["corrected_bone_voxels"] = sum(r["corrected_bone_voxels"] for r in rows)
    total["non_bone_caught_by_threshold"] = sum(r.get("non_bone_caught_by_threshold", 0) for r in rows)
    total["unreviewed_cases"] = sum(not r["reviewed"] for r in rows)
    return total


def table(rows: list[dict]) -> str:
    head = (f"{'case':<10} {'cohort':<8} {'source':<20} {'thr':>6} {'fill':>6} {'final':>6} {'missed':>7} "
            f"{'bright':>7} {'edited':>7}")
    lines = [head]
    fmt = lambda v: f"{v:6.3f}" if isinstance(v, float) else f"{'-':>6}"  # noqa: E731
    for r in rows:
        lines.append(
            f"{r['case']:<10} {r['cohort']:<8} {r['label_source']:<20} {fmt(r.get('dice_threshold'))} "
            f"{fmt(r.get('dice_filled'))} {fmt(r.get('dice_final'))} "
            f"{r.get('bone_missed_by_threshold', float('nan')):7.1%} "
            f"{r.get('non_bone_caught_by_threshold', 0):7d} {r['corrected_voxels']:7d}"
        )
    return "\n".join(lines)


def derive_labels(cfg: Config, progress: bool = True) -> dict:
    """Write data/labels/<case>.nii.gz for every case and data/labels/qa.json; return the QA."""
    from tqdm import tqdm

    out = Path(cfg.data.labels_dir)
    rows = []
    for case in tqdm(find_cases(cfg.data.raw_dir), desc="labels", unit="case", disable=not progress):
        vol, qa = derive_case(case, Path(cfg.data.corrections_dir), cfg.labels)
        save_volume(vol, label_path(out, case["case"]))
        rows.append(qa)
    report = {"threshold_hu": cfg.labels.threshold_hu.model_dump(), "total": summarise(rows), "cases": rows}
    write_json(out / QA_FILE, report)
    return report
