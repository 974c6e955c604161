"""The hand-correction round trip (`boneseg correct`), as the study labelled its
abdominal CTs: hand a case to an annotator with a starting label map, take the edited
map back with checks.

- export: <annotate_dir>/<case>/ holds ct.nii.gz, start.nii.gz (the chosen proposal,
  `labels.proposal`, as label ids), the ITK-SNAP label description file, a 3D Slicer
  colour table, workspace.json and a README with the one command that opens it all.
  Only the pseudonymous case id appears; the folder is written whole or not at all.
- import: the edited file must be a 3-D integer NIfTI on the CT's grid (shape, and the
  affine within 0.001 mm) holding ids 0-4 only; then data/corrections/<case>.nii.gz and
  <case>.json (which proposal it started from, when; the effort of the correction) are
  written atomically. A refused file writes nothing.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from boneseg.core import project
from boneseg.core.config import Config
from boneseg.core.imaging.nifti import Volume, load_ct, load_labels, save_volume, to_nifti_bytes
from boneseg.core.io import atomic_dir, atomic_path
from boneseg.core.labelling.effort import effort
from boneseg.core.labelling.labels import bone_proposals, vnet_proposal
from boneseg.core.labelmap import LABEL_FILE, LABEL_IDS, SLICER_FILE, label_description, slicer_color_table
from boneseg.core.layout import correction_path, find_case
from boneseg.errors import DataError

WORKSPACE = "workspace.json"
START = "start.nii.gz"
README = """# Correct {case} (boneseg)

Open the CT with the starting labels (proposal: {proposal}):

    {command}

In ITK-SNAP: the labels are 1 bone (cortical bone and marrow), 2 kidney, 3 vessel,
4 liver. Paint the voxels that are wrong; relabel a wrong region at once with
"Paint over: <label>" and the 3-D fill. Save the segmentation (Segmentation > Save
Segmentation Image) over {start} or as a new .nii.gz, then take it back with

    boneseg correct import {case} <the saved file>

In 3D Slicer: load ct.nii.gz as a volume and {start} as a label map with the colour
table {slicer}, edit in Segment Editor, export the segmentation as a label map .nii.gz.
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def start_map(cfg: Config, case: dict, ct: Volume, proposal: str) -> np.ndarray:
    """The label map an annotator starts from: a bone proposal as ids (1 bone, 0 else), or
    the U-Net's four-class map (`boneseg assist --model`)."""
    if proposal == "unet":
        path = Path(cfg.data.unet_proposals_dir) / f"{case['case']}.nii.gz"
        if not path.is_file():
            raise DataError(f"{path}: no U-Net proposal for {case['case']}. Run `boneseg assist --model "
                            f"REF --input {cfg.data.raw_dir}` (REF: results/model, models:/boneseg/N or a "
                            "run id), or start from another proposal.")
        try:
            return load_labels(path, ct, case["ct"]).data
        except DataError as exc:
            raise DataError(f"{exc} Propose this case again with `boneseg assist --model REF`.") from None
    if proposal == "vnet":
        mask = vnet_proposal(ct, case["ct"], Path(cfg.data.proposals_dir), case["case"])
        if mask is None:
            raise DataError(f"{cfg.data.proposals_dir}: no V-Net proposal for {case['case']}. Run `boneseg "
                            "propose` (or `dvc repro propose`), or start from labels.proposal=filled.")
        return mask.astype(np.uint8)
    return bone_proposals(ct, case["cohort"], cfg.labels)[proposal].astype(np.uint8)


def export_case(cfg: Config, case_id: str, out_dir: str | Path | None = None,
                proposal: str | None = None, force: bool = False) -> tuple[Path, str]:
    """Write the workspace; returns (folder, the ITK-SNAP command that opens it). An existing
    workspace may hold an annotator's unsaved work: it is replaced only with `force`."""
    case = find_case(cfg.data.raw_dir, case_id)
    folder = Path(out_dir or cfg.data.annotate_dir) / case_id
    if folder.exists() and not force:
        raise DataError(f"{folder}: a workspace for {case_id} exists and may hold edits. Import them "
                        f"(`boneseg correct import {case_id} FILE`), or export again with --force to start "
                        "over.")
    proposal = proposal or cfg.labels.proposal
    ct = load_ct(case["ct"])
    start = start_map(cfg, case, ct, proposal)
    ids = sorted(k for k in LABEL_IDS if k)
    command = f"itksnap -g {folder / 'ct.nii.gz'} -s {folder / START} -l {folder / LABEL_FILE}"
    with atomic_dir(folder) as tmp:
        shutil.copyfile(case["ct"], tmp / "ct.nii.gz")  # boneseg's own header: no source text
        (tmp / START).write_bytes(to_nifti_bytes(start, ct.affine, gz=True))
        (tmp / LABEL_FILE).write_text(label_description(ids))
        (tmp / SLICER_FILE).write_text(slicer_color_table(ids))
        (tmp / WORKSPACE).write_text(json.dumps({"case": case_id, "proposal": proposal,
                                                 "exported_at": now()}, indent=1) + "\n")
        (tmp / "README.md").write_text(README.format(case=case_id, proposal=proposal, command=command,
                                                     start=START, slicer=SLICER_FILE))
    return folder, command


def import_correction(cfg: Config, case_id: str, edited: str | Path, force: bool = False) -> dict:
    """Check `edited` against the case's CT and store it as the case's correction; returns
    the record written beside it (with the effort against the proposal it started from).
    An existing correction is replaced only with `force`; one import at a time (flock)."""
    if not Path(edited).is_file():
        raise DataError(f"{edited}: file not found. Pass the label map that ITK-SNAP or 3D Slicer saved "
                        "(e.g. the workspace's start.nii.gz after editing).")
    corrections = Path(cfg.data.corrections_dir)
    with project.exclusive(corrections, project.lock_name("correct", corrections),
                           f"a correction import into {corrections}"):
        return _import_correction(cfg, case_id, Path(edited), force)


def _import_correction(cfg: Config, case_id: str, edited: Path, force: bool) -> dict:
    case = find_case(cfg.data.raw_dir, case_id)
    dst = correction_path(cfg.data.corrections_dir, case_id)
    if dst.exists() and not force:
        raise DataError(f"{dst}: {case_id} has a correction already (someone's hand work). Nothing was "
                        f"written. Pass --force to replace it with {edited}.")
    ws = edited.parent / WORKSPACE
    meta = json.loads(ws.read_text()) if ws.is_file() else {}
    if meta.get("case") not in (None, case_id):
        raise DataError(f"{edited}: its workspace is for case {meta['case']}, not {case_id}. Import it "
                        f"with `boneseg correct import {meta['case']} {edited}`.")
    ct = load_ct(case["ct"])
    if edited.is_file():
        import nibabel as nib

        try:
            kind = nib.load(str(edited)).get_data_dtype()
        except Exception:
            kind = None  # load_labels below names the problem
        if kind is not None and not np.issubdtype(kind, np.integer):
            raise DataError(f"{edited}: stored as {kind}, not an integer label map. Save the "
                            "segmentation as a label image (ITK-SNAP: Segmentation > Save; 3D Slicer: "
                            "export as labelmap).")
    try:
        final = load_labels(edited, ct, case["ct"])
    except DataError as exc:
        raise DataError(f"{exc} (boneseg correct import: nothing was written; save the segmentation from "
                        f"the workspace opened with `boneseg correct export {case_id}`)") from None
    proposal = meta.get("proposal", cfg.labels.proposal)
    record = {"case": case_id, "started_from": proposal, "exported_at": meta.get("exported_at"),
              "imported_at": now(), "effort": effort(start_map(cfg, case, ct, proposal), final.data)}
    with atomic_path(dst.with_name(f"{case_id}.json")) as tmp_json:  # the record appears after the map
        tmp_json.write_text(json.dumps(record, indent=1) + "\n")
        save_volume(Volume(final.data, ct.affine), dst)
    return record
