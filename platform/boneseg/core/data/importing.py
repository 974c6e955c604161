"""`boneseg import`: bring real CT (and optional labels) into data/raw under pseudonymous ids.

Three source layouts:
- nifti:            DIR/images/<id>.nii(.gz) [+ DIR/labels/<id>.nii(.gz), ids per docs/architecture.md]
- totalsegmentator: DIR/sXXXX/ct.nii.gz + DIR/sXXXX/segmentations/<class>.nii.gz (+ meta.csv)
- dicom:            every CT series under DIR (nested folders, by SeriesInstanceUID; `core.imaging.dicom`),
                    one case per series; localizers are skipped and listed

Every case is validated before anything is written; one bad case stops the import with
the output folder untouched (or, with --skip-invalid, is listed and left out). Case ids
are keyed by content (`core.data.pseudonyms`); the map is written before any case folder
appears, so a killed import never leaves a case the map does not know. Cases are staged
beside the output (`staging_root`), where no case glob looks, and each moves into place
by one rename; the next import clears a killed one's staging. One import per output
folder at a time (flock). CTs are reoriented to the closest RAS+ order and written with
fresh headers (no source header text).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from boneseg.core import project
from boneseg.core.data.pseudonyms import assign_ids, content_key, load_id_map, save_id_map
from boneseg.core.data.sources import (
    SourceCase,
    case_name,
    read_case,
    scan_dicom,
    scan_nifti,
    scan_totalsegmentator,
)
from boneseg.core.imaging.nifti import (
    MAX_VOXELS,
    Volume,
    save_volume,
    to_canonical,
    to_hu16,
)
from boneseg.core.io import atomic_write_text
from boneseg.core.parallel import Pool, file_sizes
from boneseg.core.vocabulary import Cohort, Layout, parse
from boneseg.errors import DataError


def refuse_or_skip(case: SourceCase, exc: DataError, skip_invalid: bool) -> str:
    """The skipped line for an invalid case, or (without --skip-invalid) the refusal."""
    why = str(exc).removeprefix(f"{case_name(case)}: ")  # DICOM messages name their series
    if not skip_invalid:
        raise DataError(f"case {case_name(case)} is invalid, nothing was imported: {why}\n"
                        "Fix or remove it, or pass --skip-invalid to import the rest.") from None
    return f"{case_name(case)}: {why}"


# ct.nii.gz at gzip level 1: CT noise makes level 6 ~7x slower for ~1.5 % smaller files
# (bench/dicom_import.py); still deterministic bytes (mtime 0), the same fresh header
CT_GZIP_LEVEL = 1


def stage_case(case: SourceCase, layout: str, d: Path, max_voxels: int) -> tuple[str | None, str | None]:
    """Read and check one case, writing it under staging folder `d` if valid (a
    `core.parallel` case function). Returns (its content key, None) or (None, why it is invalid)."""
    try:
        image, labels = read_case(case, layout, max_voxels)
    except DataError as exc:
        return None, str(exc)
    image = to_canonical(Volume(to_hu16(image.data), image.affine))
    key = content_key(image)
    save_volume(image, d / "ct.nii.gz", CT_GZIP_LEVEL)
    del image
    if labels is not None:
        save_volume(to_canonical(labels), d / "truth.nii.gz")
    return key, None


def _source_bytes(case: SourceCase) -> int:
    files = case.series.files if case.series is not None else [case.image]
    return sum(file_sizes(files))


def stage_cases(cases, layout, staging: Path, skip_invalid: bool, max_voxels: int,
                pool: Pool | None = None) -> tuple[list, list[str]]:
    """Read and check each case once (on `pool`), writing the valid ones under staging/<n>/
    (outside the cohort folder and its case glob, so a refusal or a kill leaves the output
    as it was). Returns ([(case, folder, content key)], skipped lines), in the sources'
    order; a second copy of one CT is skipped."""
    dirs = [staging / f"{n:05d}" for n in range(len(cases))]
    got = (pool or Pool()).map(stage_case, [(c, layout, d, max_voxels) for c, d in zip(cases, dirs)],
                               [case_name(c) for c in cases], "import", True,
                               [_source_bytes(c) for c in cases])
    ok, skipped, seen = [], [], {}
    for case, d, (key, why) in zip(cases, dirs, got):
        if why is not None:
            skipped.append(refuse_or_skip(case, DataError(why), skip_invalid))
        elif key in seen:
            skipped.append(f"{case_name(case)}: the same CT as {seen[key]}, imported once")
            shutil.rmtree(d, ignore_errors=True)
        else:
            seen[key] = case_name(case)
            ok.append((case, d, key))
    return ok, skipped


def _same(a: Path, b: Path) -> bool:
    names = lambda d: sorted(p.name for p in d.iterdir())  # noqa: E731
    return names(a) == names(b) and all((a / n).read_bytes() == (b / n).read_bytes() for n in names(a))


def place_cases(staged, layout: str, out: Path, cohort: str, ids: dict[str, str],
                force: bool = False) -> tuple[list[Path], list[Path]]:
    """Give each staged case its meta.json and move it into place under its pseudonym.
    A case already there with the same files is left alone; with other files it is
    replaced only with `force` (checked for every case before any is moved).
    Returns (case folders written, case folders already up to date)."""
    plan = []
    for _case, d, key in staged:
        cid = ids[key]
        meta = {"case": cid, "cohort": cohort, "phase": "unknown", "source": f"import:{layout}"}
        atomic_write_text(d / "meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
        dst = out / cohort / cid
        there = [p for p in out.glob(f"*/{cid}") if p.is_dir()] if out.is_dir() else []
        same = dst.is_dir() and _same(d, dst)
        if there and not same and not force:
            raise DataError(f"{there[0]}: case {cid} exists with other data (its source's labels, cohort or "
                            "layout changed). Nothing was imported. Pass --force to replace it "
                            "(its corrections stay under its id).")
        plan.append((d, dst, there, same))
    written, unchanged = [], []
    for d, dst, there, same in plan:
        if same:
            unchanged.append(dst)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        gone = [old.with_name(f".{old.name}.replaced") for old in there]  # --force: hidden, then deleted
        for old, g in zip(there, gone):
            os.replace(old, g)
        os.replace(d, dst)  # a kill before this line leaves the old copy under its dot name, not half a case
        for g in gone:
            shutil.rmtree(g)
        written.append(dst)
    return written, unchanged


def _has_imported_cases(out: Path) -> bool:
    for meta in out.glob("*/*/meta.json"):
        try:
            if str(json.loads(meta.read_text()).get("source", "")).startswith("import:"):
                return True
        except (OSError, ValueError):
            return True  # unreadable: assume a lab's case
    return False


def staging_root(out: Path) -> Path:
    """<out's parent>/.<out name>.import-staging: beside the output (so a case moves into
    place by rename) but outside it, where no case glob looks."""
    return out.parent / f".{out.name}.import-staging"


@dataclass(frozen=True)
class ImportOptions:
    """How strict an import is: skip invalid cases (listing them) or stop at the first;
    replace a case whose source changed; the largest CT accepted, in voxels."""

    skip_invalid: bool = False
    force: bool = False
    max_voxels: int = MAX_VOXELS


def import_cohort(source: Path, out: Path, layout: str = "nifti", cohort: str = "abdomen",
                  options: ImportOptions = ImportOptions(), id_map_path: Path | None = None,
                  pool: Pool | None = None) -> ImportResult:
    """Read, check and stage every case (on `pool`), then move them into place (each read
    once), under the output folder's lock. Returns the folders written, those already up to date, and
    the skipped reasons (for the terminal only: they name sources)."""
    source, out = Path(source), Path(out)
    layout = parse(Layout, layout, "layout")
    parse(Cohort, cohort, "cohort")
    if not source.is_dir():
        raise DataError(f"{source}: source folder not found.")
    listed = []
    if layout == "dicom":
        cases, listed = scan_dicom(source, options.skip_invalid)
    else:
        cases = {Layout.NIFTI: scan_nifti, Layout.TOTALSEGMENTATOR: scan_totalsegmentator}[layout](source)
    id_map_path = Path(id_map_path) if id_map_path else project.id_map_path(out)
    with project.exclusive(out, project.lock_name("import", out), f"an import into {out}"):
        id_map = load_id_map(id_map_path)
        if not id_map_path.is_file() and out.is_dir() and _has_imported_cases(out):
            raise DataError(f"{out}: holds imported cases, but the id map {id_map_path} is missing, so a new "
                            "source could be given an existing case's id. Restore the map from your backup, "
                            "or import into an empty folder.")
        stage = staging_root(out)
        shutil.rmtree(stage, ignore_errors=True)  # a killed import's leftovers (we hold the lock)
        existed = out.exists()
        try:
            staged, skipped = stage_cases(cases, layout, stage / "cases", options.skip_invalid,
                                          options.max_voxels, pool)
            taken = {p.name for p in out.glob("*/*") if p.is_dir()} if existed else set()
            ids = assign_ids([k for _, _, k in staged], id_map, taken)
            if ids != id_map:  # the map first: a case folder never exists without its map entry
                save_id_map(id_map_path, ids)
            written, unchanged = place_cases(staged, layout, out, cohort, ids, options.force)
        except BaseException:
            if not existed:  # a refused import leaves no folder behind either
                shutil.rmtree(out, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return ImportResult(written, unchanged, listed + skipped)


class ImportResult(NamedTuple):
    written: list[Path]
    unchanged: list[Path]
    skipped: list[str]  # name sources: the terminal only, never files or logs
