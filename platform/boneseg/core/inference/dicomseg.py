"""`boneseg segment` on a DICOM CT series: a label map as NIfTI, or as a DICOM-SEG object
(highdicom) that references the source instances, so that OHIF or 3D Slicer overlay it
on the original series.

The DICOM-SEG is BINARY, one segment per label id present in the model's classes
(bone, kidney, vessel, liver: SNOMED CT codes from DICOM CID 7150/7151, the label
colours as CIELab), with boneseg and its version as the algorithm and the model
reference as its parameter. It copies the source's patient and study identifiers, as
any DICOM-SEG must to belong to its study: it is the one boneseg output that carries
them (docs/privacy.md). Every output is written atomically.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

import boneseg
from boneseg.core.config import Config
from boneseg.core.imaging.dicom import DicomCT, read_ct_folder
from boneseg.core.imaging.nifti import Volume, is_nifti_name, save_volume, to_canonical
from boneseg.core.inference.predict import (
    ModelRequest,
    inference_setup,
    output_ids,
    result_row,
    segment_volume,
)
from boneseg.core.io import atomic_write_bytes, atomic_write_text
from boneseg.core.labelmap import LABEL_COLOURS, LABEL_FILE, LABEL_IDS, label_description
from boneseg.errors import DataError

FORMATS = ("nifti", "dicom-seg")
# label id -> (segmented property category, type), SNOMED CT names in pydicom's code dictionary
SEGMENT_CODES = {
    1: ("Tissue", "Bone"),
    2: ("AnatomicalStructure", "Kidney"),
    3: ("AnatomicalStructure", "BloodVessel"),
    4: ("AnatomicalStructure", "Liver"),
}
SEG_SERIES_OFFSET = 1000  # the SEG's SeriesNumber: the source's + 1000


def plan_output(inp: Path, out: Path, fmt: str, seg_uid: str) -> Path:
    """The output file for one series folder: `out` itself if it names a file of the format,
    else `out/seg-<seg_uid>.nii.gz` (or .dcm): named after the SEG's own UID, never after the
    source folder (PACS exports name folders after patients)."""
    if fmt not in FORMATS:
        raise DataError(f"output format {fmt!r}: expected one of {', '.join(FORMATS)}.")
    suffix = ".nii.gz" if fmt == "nifti" else ".dcm"
    named = is_nifti_name(out) if fmt == "nifti" else out.suffix.lower() == ".dcm"
    if fmt == "dicom-seg" and is_nifti_name(out):
        raise DataError(f"{out}: a DICOM-SEG is a .dcm file (or give a folder).")
    dst = out if named else out / f"seg-{seg_uid}{suffix}"
    if inp.resolve() in dst.resolve().parents:
        raise DataError(f"{dst}: inside the input series folder, where it would join the series. "
                        "Write it elsewhere.")
    return dst


# Type-2 attributes of the patient and study modules that a SEG copies from its source:
# anonymised exports often leave them out; the standard allows them present but empty.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate",
                "StudyTime", "ReferringPhysicianName", "AccessionNumber")


def fill_type2(datasets: list) -> None:
    """Absent type-2 attributes become present and empty, as PS3.5 7.4 allows (in memory:
    the source files are never touched)."""
    for ds in datasets:
        for key in TYPE2_COPIED:
            if key not in ds:
                setattr(ds, key, "")


def seg_dataset(ct: DicomCT, labels_ijk: np.ndarray, ids: list[int], model_ref: str, seg_uid: str):
    """The highdicom Segmentation of a label map on the series' (column, row, slice) grid."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    fill_type2(ct.datasets)

    algo = hd.AlgorithmIdentificationSequence(
        name="boneseg", family=codes.cid7162.ArtificialIntelligence, version=boneseg.__version__,
        parameters={"model": model_ref or "unnamed"})
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=LABEL_IDS[i],
            segmented_property_category=getattr(codes.SCT, SEGMENT_CODES[i][0]),
            segmented_property_type=getattr(codes.SCT, SEGMENT_CODES[i][1]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
            tracking_uid=hd.UID(), tracking_id=f"boneseg {LABEL_IDS[i]}",
            display_color=hd.color.CIELabColor.from_rgb(*LABEL_COLOURS[i]))
        for n, i in enumerate(ids, start=1)
    ]
    frames = np.zeros(labels_ijk.shape[::-1], np.uint8)  # (slice, row, column), segment numbers
    kji = labels_ijk.transpose(2, 1, 0)
    for n, i in enumerate(ids, start=1):
        frames[kji == i] = n
    source_number = int(ct.datasets[0].get("SeriesNumber", 0) or 0)
    return hd.seg.Segmentation(
        source_images=ct.datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=seg_uid,
        series_number=source_number + SEG_SERIES_OFFSET, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="boneseg", manufacturer_model_name="boneseg 2.5-D U-Net fold ensemble",
        software_versions=boneseg.__version__, device_serial_number="none",
        content_label="BONESEG", content_description=f"boneseg {', '.join(LABEL_IDS[i] for i in ids)}",
        omit_empty_frames=bool(frames.any()))


def write_seg(ct: DicomCT, labels_ijk: np.ndarray, ids: list[int], model_ref: str, dst: Path,
              seg_uid: str) -> Path:
    buf = io.BytesIO()
    seg_dataset(ct, labels_ijk, ids, model_ref, seg_uid).save_as(buf, enforce_file_format=True)
    atomic_write_bytes(dst, buf.getvalue())
    return dst


def segment_series(cfg: Config, inp: Path, out: Path, req: ModelRequest, fmt: str = "nifti",
                   seg_uid: str | None = None) -> list[dict]:
    """Segment the one CT series in folder `inp` with the requested fold models
    (ensembled); a DICOM-SEG names the model as `req.ref`."""
    from pydicom.uid import generate_uid

    seg_uid = seg_uid or generate_uid()
    dst = plan_output(Path(inp), Path(out), fmt, seg_uid)
    t0 = time.perf_counter()
    ct, _ = read_ct_folder(inp)
    s = inference_setup(cfg, req)
    labels = segment_volume(s.models, ct.volume, s.rt, req.classes, s.tc.eval_batch_size, rule=s.rule)
    ids = output_ids(s.models, req.classes)
    if fmt == "nifti":  # the grid `boneseg import --layout dicom` gives the same series
        save_volume(to_canonical(Volume(labels, ct.volume.affine)), dst)
        atomic_write_text(dst.parent / LABEL_FILE, label_description(ids))
    else:
        write_seg(ct, labels, ids, req.ref, dst, seg_uid)
    return [result_row(dst, labels, ct.volume, t0)]
