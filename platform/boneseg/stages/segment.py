"""`boneseg segment`: label maps for new CTs from trained fold models, ensembled.

--model takes a checkpoint file or folder (results/model), `models:/boneseg/<version>`
(or `@alias`), or an MLflow run id; `boneseg.tracking.registry` resolves it to files.
--input may also be a DICOM series folder (`core.inference.dicomseg`): the output is then NIfTI, or
with --output-format dicom-seg a DICOM-SEG that references the series.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from boneseg.core.config import Config
from boneseg.errors import DataError
from boneseg.stages.common import add_model_options, checkpoints
from boneseg.stages.pool import add_pool_options, case_pool


def dicom_input(inp: Path) -> bool:
    """A folder without NIfTI files but with DICOM files: one series to segment."""
    from boneseg.core.imaging.dicom import is_dicom_folder
    from boneseg.core.imaging.nifti import is_nifti_name

    return inp.is_dir() and not any(is_nifti_name(p) for p in inp.iterdir()) and is_dicom_folder(inp)


def check_outputs(outputs: list[Path], force: bool) -> None:
    """Refuse to write into the lab's data or DVC-tracked folders, and over existing files
    unless --force."""
    from boneseg.core.project import protected

    for dst in outputs:
        why = protected(dst)
        if why:
            raise DataError(f"--output {dst}: {why}. Write segmentations elsewhere (e.g. --output seg/).")
    existing = [d for d in outputs if d.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise DataError(f"--output {existing[0]}: exists{more}. "
                        "Nothing was written. Pass --force to replace, or choose another --output.")


def model_label(ref: str, files: list[Path]) -> str:
    """How a DICOM-SEG names its model: the registry name and version or alias, or an MLflow
    run, or (for files) their content hash; never a local path."""
    import hashlib
    import re

    if ref.startswith("models:/"):
        return ref.removeprefix("models:/")
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        return f"mlflow run {ref}"
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.read_bytes())
    return f"checkpoints sha256:{h.hexdigest()[:16]}"


def add_parser(sub) -> None:
    p = sub.add_parser("segment")
    p.add_argument("--input", required=True,
                   help="a CT .nii/.nii.gz, a folder of them, or a DICOM series folder")
    p.add_argument("--output", required=True, help="the label map file, or a folder (one file per input)")
    p.add_argument("--output-format", default="nifti", choices=["nifti", "dicom-seg"],
                   help="dicom-seg: a DICOM-SEG on the source series (DICOM input only)")
    add_model_options(p, required=True)
    p.add_argument("--classes", default="all", choices=["all", "bone"], help="bone: keep bone (1) only")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    add_pool_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.inference.folder import plan_outputs, segment_files
    from boneseg.core.inference.predict import ModelRequest

    folds = args.folds
    inp, out = Path(args.input), Path(args.output)
    dicom = dicom_input(inp)
    if dicom:  # bad paths fail before any model is fetched
        from pydicom.uid import generate_uid

        from boneseg.core.inference.dicomseg import plan_output, segment_series

        seg_uid = generate_uid()  # the SEG's SeriesInstanceUID, and the default file name
        check_outputs([plan_output(inp, out, args.output_format, seg_uid)], args.force)
    elif args.output_format == "dicom-seg":
        raise DataError(f"--input {inp}: a DICOM-SEG needs a DICOM series as input (it references the source "
                        "instances). Pass the series folder, or use --output-format nifti.")
    else:
        check_outputs([dst for _, dst in plan_outputs(inp, out)], args.force)
    files = checkpoints(args.model, cfg)
    if dicom:
        req = ModelRequest(files, folds, args.device, args.classes, model_label(args.model, files),
                           args.backend, args.precision, args.postprocess)
        res = segment_series(cfg, inp, out, req, args.output_format, seg_uid)
    else:
        req = ModelRequest(files, folds, args.device, args.classes, backend=args.backend,
                           precision=args.precision, postprocess=args.postprocess)
        res = segment_files(cfg, inp, out, req, pool=case_pool(cfg, args.address))
    for r in res:
        print(f"segment: {r['output']}  {'x'.join(map(str, r['shape']))}  bone {r['bone_ml']} ml  "
              f"({r['seconds']:.1f} s)")
    print(json.dumps({"volumes": len(res), "seconds": round(sum(r["seconds"] for r in res), 2)}))
    return 0
