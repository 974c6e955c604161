"""Label derivation: derived label maps + label QA (data/labels/<case>.nii.gz, qa.json).

- thigh CTs: the study's threshold masks: HU threshold -> 3-D connected components
  (small or dim ones dropped) -> closing -> slice-wise hole filling, which brings the
  marrow cavity (soft-tissue / fatty HU) into the femur;
- abdominal CTs: the same bone proposal, then the final map taken, in this order, from
  data/corrections/<case>.nii.gz (hand edited), else the case's ground truth, else the
  proposal (flagged unreviewed).
QA per case: bone Dice of threshold-only vs threshold+fill vs final against the truth,
the bone voxels the threshold misses, the kidney/vessel voxels "bright = bone" catches,
and the voxels the correction changed (the manual effort). Per proposal source
(threshold, filled, the V-Net's data/proposals/<case>.nii.gz): bone Dice, the share of
the proposed bone on kidney / vessel / liver, and the effort of correcting it into the
truth (`core.labelling.effort`: voxels, regions, axial slices); `labels.proposal` is the map an
annotator starts from and an unreviewed case keeps.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from boneseg.core.config import Config, LabelsConfig
from boneseg.core.evaluation.metrics import dice, nanmean
from boneseg.core.imaging.nifti import Volume, load_ct, load_labels, save_volume
from boneseg.core.io import write_json
from boneseg.core.labelling.effort import box, effort, proposal_qa
from boneseg.core.layout import PROPOSE_SUMMARY, QA_FILE, correction_path, find_cases, label_path
from boneseg.core.parallel import Pool, file_sizes
from boneseg.core.vocabulary import Cohort, parse
from boneseg.errors import DataError


def fill_marrow(hu: np.ndarray, spacing, threshold_hu: float, cfg: LabelsConfig) -> np.ndarray:
    """Threshold -> clean components -> closing -> slice-wise hole fill. (X, Y, Z) bool.
    The closing and the fill work inside the kept bone's in-plane bounding box (padded by
    the closing's radius), which gives the same mask as the whole volume: nothing outside
    it can be closed or enclosed."""
    mask = hu >= threshold_hu
    where = box(mask)
    if where is None:
        return mask
    bright = mask[where]
    lab, n = ndimage.label(bright)  # components lie inside their box
    at = lab[bright]  # each bright voxel's component: sizes and mean HU from those voxels alone
    sizes = np.bincount(at, minlength=n + 1)[1:]
    means = np.bincount(at, weights=hu[where][bright], minlength=n + 1)[1:] / sizes
    keep = (sizes >= cfg.min_component_voxels) & (means >= cfg.component_min_mean_hu)
    mask[where] = np.concatenate([[False], keep])[lab]
    r = int(round(cfg.closing_mm / float(min(spacing[0], spacing[1]))))
    where = box(mask)
    if where is None:
        return mask
    where = (*where[:2], slice(None))  # the closing and the fill are in-plane: every slice
    inner = mask[where]
    if r > 0:  # in-plane closing bridges partial-volume gaps in thin cortical shells
        st = ndimage.generate_binary_structure(2, 1)
        st = ndimage.iterate_structure(st, r)[..., None]
        padded = np.pad(inner, ((r, r), (r, r), (0, 0)))
        inner = ndimage.binary_closing(padded, structure=st)[r:-r, r:-r, :]
    for z in range(inner.shape[2]):
        inner[..., z] = ndimage.binary_fill_holes(inner[..., z])
    mask[where] = inner
    return mask


def bone_proposals(ct: Volume, cohort: str, cfg: LabelsConfig) -> dict[str, np.ndarray]:
    """The threshold proposals of one CT: {"threshold": HU >= the cohort's level,
    "filled": that + component cleaning, closing and marrow fill}, (X, Y, Z) bool."""
    level = getattr(cfg.threshold_hu, parse(Cohort, cohort, "the case's cohort").value)
    return {"threshold": ct.data >= level, "filled": fill_marrow(ct.data, ct.spacing, level, cfg)}


def vnet_proposal(ct: Volume, ct_path, proposals_dir: Path | None, case_id: str) -> np.ndarray | None:
    """data/proposals/<case>.nii.gz (`boneseg propose`) as a bone mask, if there is one."""
    path = Path(proposals_dir) / f"{case_id}.nii.gz" if proposals_dir else None
    if path is None or not path.is_file():
        return None
    try:
        return load_labels(path, ct, ct_path, allowed=(0, 1)).data == 1
    except DataError as exc:  # e.g. proposals left from another cohort
        raise DataError(f"{exc} The proposals do not belong to these CTs: run `boneseg propose` (or "
                        "`dvc repro propose`) again, or point data.proposals_dir elsewhere.") from None


def no_vnet(proposals_dir: Path | None) -> bool:
    """The propose stage ran and made no V-Net (no thigh CT): proposals fall back to
    threshold + fill instead of failing."""
    path = Path(proposals_dir) / PROPOSE_SUMMARY if proposals_dir else None
    try:
        return bool(path and path.is_file() and json.loads(path.read_text()).get("skipped"))
    except ValueError:
        return False


def derive_case(case: dict, corrections_dir: Path, cfg: LabelsConfig,
                proposals_dir: Path | None = None) -> tuple[Volume, dict]:
    ct = load_ct(case["ct"])
    truth = load_labels(case["truth"], ct, case["ct"]) if case["truth"] else None
    prop = bone_proposals(ct, case["cohort"], cfg)
    thr, filled = prop["threshold"], prop["filled"]
    if case["cohort"] != "thigh":
        vnet = vnet_proposal(ct, case["ct"], proposals_dir, case["case"])
        if vnet is not None:
            prop["vnet"] = vnet
        elif cfg.proposal == "vnet" and not no_vnet(proposals_dir):
            raise DataError(f"{case['case']}: labels.proposal is vnet but {proposals_dir} has no proposal "
                            "for it. Run `boneseg propose` (or `dvc repro propose`) first.")
    chosen = cfg.proposal if case["cohort"] != "thigh" and cfg.proposal in prop else "filled"
    proposal = prop[chosen].astype(np.uint8)
    correction = correction_path(corrections_dir, case["case"])
    record_path = correction.with_name(f"{case['case']}.json")
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if case["cohort"] == "thigh":
        final, source = proposal, "threshold"  # the study's femur masks are the threshold masks
    elif correction.is_file():
        final, source = load_labels(correction, ct, case["ct"]).data, "correction"
    elif truth is not None:
        final, source = truth.data, "truth"
    else:
        final, source = proposal, "proposal-unreviewed"
    started = record.get("started_from", chosen) if source == "correction" else chosen
    start = prop[started].astype(np.uint8) if started in prop else proposal
    qa = {
        "case": case["case"],
        "cohort": case["cohort"],
        "phase": case["phase"],
        "label_source": source,
        "reviewed": source in ("correction", "truth", "threshold"),
        "proposal": started,
        # manual effort: every voxel whose label differs from the proposal, and the bone part
        "corrected_voxels": int((final != start).sum()) if case["cohort"] != "thigh" else 0,
        "corrected_bone_voxels": int(((final == 1) != (start == 1)).sum())
        if case["cohort"] != "thigh"
        else 0,
    }
    if source == "correction":  # the effort of the correction as made (boneseg correct import)
        qa["correction_effort"] = effort(start, final) if started in prop else record.get("effort")
        if started not in prop and record.get("effort"):  # from the U-Net's map, as imported
            qa["corrected_voxels"] = record["effort"]["voxels"]
    if truth is not None:
        bone = truth.data == 1
        qa.update(dice_threshold=dice(thr, bone), dice_filled=dice(filled, bone),
                  dice_final=dice(final == 1, bone),
                  bone_missed_by_threshold=round(float((bone & ~thr).sum() / max(bone.sum(), 1)), 4),
                  non_bone_caught_by_threshold=int((thr & (truth.data >= 2)).sum()))  # kidney, vessel, liver
        if case["cohort"] != "thigh":  # each proposal source against the truth: Dice, organ share, effort
            qa["sources"] = {k: proposal_qa(m, truth.data) for k, m in prop.items()}
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
    total["sources"] = source_totals(rows)
    return total


SOURCE_ORDER = ("threshold", "filled", "vnet", "unet", "unet-bone")  # the U-Net's: `core.labelling.assist`


def source_totals(rows: list[dict]) -> dict:
    """Per proposal source over the cases that have it: mean bone Dice and organ shares,
    summed effort (voxels, regions, slices)."""
    out = {}
    for src in SOURCE_ORDER:
        qs = [r["sources"][src] for r in rows if src in r.get("sources", {})]
        if not qs:
            continue
        t = {"cases": len(qs)}
        for k in qs[0]:
            vals = [q[k] for q in qs]
            t[k] = sum(vals) if k in ("voxels", "components", "slices") else round(nanmean(vals), 4)
        out[src] = t
    return out


def label_case(case: dict, corrections_dir: Path, cfg: LabelsConfig, proposals_dir: Path | None,
               out: Path) -> dict:
    """One case's label map, written to data/labels/<case>.nii.gz; returns its QA row
    (a `core.parallel` case function)."""
    vol, qa = derive_case(case, corrections_dir, cfg, proposals_dir)
    save_volume(vol, label_path(out, case["case"]))
    return qa


def derive_labels(cfg: Config, progress: bool = True, pool: Pool | None = None) -> dict:
    """Write data/labels/<case>.nii.gz for every case (on `pool`) and data/labels/qa.json;
    return the QA."""
    out = Path(cfg.data.labels_dir)
    cases = find_cases(cfg.data.raw_dir)
    args = (Path(cfg.data.corrections_dir), cfg.labels, Path(cfg.data.proposals_dir), out)
    rows = (pool or Pool()).map(label_case, [(c, *args) for c in cases], [c["case"] for c in cases],
                                "labels", progress, file_sizes(c["ct"] for c in cases))
    report = {"threshold_hu": cfg.labels.threshold_hu.model_dump(), "total": summarise(rows), "cases": rows}
    write_json(out / QA_FILE, report)
    return report
