"""`boneseg import`: real CT (NIfTI, TotalSegmentator or DICOM series) under pseudonymous ids,
into a folder of your choice. A project's data/raw is the `raw` stage's output: list the
source in data.sources instead (docs/own-ct.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from boneseg.core.config import Config
from boneseg.core.vocabulary import Cohort, Layout
from boneseg.stages.pool import add_pool_options, case_pool


def add_parser(sub) -> None:
    p = sub.add_parser("import")
    p.add_argument("--source", required=True, help="folder to import from")
    p.add_argument("--out", help="output folder (default: data.raw_dir, which a DVC project's raw stage "
                                 "owns: there, list the source in data.sources instead)")
    p.add_argument("--layout", choices=[m.value for m in Layout], default="nifti",
                   help="nifti: images/ (+ labels/); totalsegmentator: sXXXX/ct.nii.gz; dicom: series in any "
                        "nesting (default: %(default)s)")
    p.add_argument("--cohort", choices=[m.value for m in Cohort], default="abdomen",
                   help="abdominal CTs (trained and scored) or thigh CTs (femur masks) "
                        "(default: %(default)s)")
    p.add_argument("--skip-invalid", action="store_true", help="import the valid cases, list the others")
    p.add_argument("--force", action="store_true",
                   help="replace a case whose source changed (its labels, cohort or layout)")
    p.add_argument("--id-map", help="the pseudonym map (default: <project>/.boneseg/import_idmap.json)")
    add_pool_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.data.importing import ImportOptions, import_cohort
    from boneseg.core.project import refuse_stage_output

    out = Path(args.out or cfg.data.raw_dir)
    refuse_stage_output(out)
    options = ImportOptions(args.skip_invalid, args.force, cfg.data.max_voxels)
    res = import_cohort(Path(args.source), out, args.layout, args.cohort, options,
                        Path(args.id_map) if args.id_map else None, case_pool(cfg, args.address))
    for line in res.skipped:
        print(f"import: skipped {line}")
    print(f"import: wrote {len(res.written)} cases under {out / args.cohort}, {len(res.unchanged)} already "
          f"there unchanged, skipped {len(res.skipped)}")
    return 0
