"""The pipeline's first stage (`boneseg raw`, DVC stage `raw`): data/raw from the
configured sources, or, with none, from the synthetic cohort.

data.sources lists the lab's own folders (each a `boneseg import` layout and cohort)
under data.sources_dir, the stage's DVC dependency: dvc.lock pins what was imported,
and a changed source re-runs this stage and what follows. data/raw is built whole in a
folder beside it and swapped in (`io.atomic_dir`), so it is never half-written, and
every run gives the same case ids for the same CTs (the project's id map, keyed by
content). The sources themselves are only read: `dvc repro` deletes and rebuilds
data/raw, never a source.
"""
from __future__ import annotations

from pathlib import Path

from boneseg.core import project
from boneseg.core.config import Config
from boneseg.core.data.importing import ImportOptions, import_cohort
from boneseg.core.data.synth import synthesize
from boneseg.core.io import atomic_dir
from boneseg.core.layout import find_cases
from boneseg.core.parallel import Pool
from boneseg.errors import DataError


def check_sources(cfg: Config) -> list[Path]:
    """Each source folder, checked to exist and to lie under data.sources_dir."""
    base = Path(cfg.data.sources_dir).resolve()
    out = []
    for i, src in enumerate(cfg.data.sources):
        p = Path(src.path)
        if base not in p.resolve().parents:
            raise DataError(f"data.sources[{i}].path {src.path}: not under data.sources_dir "
                            f"({cfg.data.sources_dir}), the folder the raw stage depends on, so DVC would "
                            f"not see it change. Move or link it to {cfg.data.sources_dir}/<name> (and "
                            "`dvc add` it).")
        if not p.is_dir():
            raise DataError(f"data.sources[{i}].path {src.path}: folder not found. Put the source there "
                            "(e.g. copy the DICOM export), or fix the path in params.yaml.")
        out.append(p)
    return out


def _corrections(cfg: Config) -> list[str]:
    d = Path(cfg.data.corrections_dir)
    return sorted(p.name for p in d.glob("*.nii.gz")) if d.is_dir() else []


def build_raw(cfg: Config, force: bool = False, progress: bool = True, pool: Pool | None = None) -> dict:
    """Write data.raw_dir whole (the sources' cases read on `pool`); returns {"cases", "imported",
    "skipped" (lines naming sources: for the terminal only), "source"}."""
    out = Path(cfg.data.raw_dir)
    paths = check_sources(cfg)
    id_map = project.id_map_path(out)
    if paths and not id_map.is_file() and _corrections(cfg):
        raise DataError(f"{id_map}: the id map is missing, but {cfg.data.corrections_dir} holds corrections "
                        "made under its case ids; importing again could give those ids to other CTs. "
                        "Restore the map from your backup.")
    skipped: list[str] = []
    with project.exclusive(out, project.lock_name("raw", out), f"building {out}"), atomic_dir(out) as tmp:
        if not paths:
            synthesize(cfg.data.synth, tmp, progress=progress)
        for src, path in zip(cfg.data.sources, paths):
            options = ImportOptions(src.skip_invalid, max_voxels=cfg.data.max_voxels)
            res = import_cohort(path, tmp, src.layout, src.cohort, options, id_map_path=id_map, pool=pool)
            skipped += res.skipped
        if not any(tmp.glob("*/*/ct.nii.gz")):
            first = f"; the first: {skipped[0]}" if skipped else ""
            raise DataError(f"data.sources gave no case ({len(skipped)} skipped{first}). Check the source "
                            "folders and their layout.")
        new = {(c["cohort"], c["case"]) for c in find_cases(tmp)}
        old = {(c["cohort"], c["case"]) for c in find_cases(out)} if any(out.glob("*/*/ct.nii.gz")) else set()
        lost = sorted(old - new)
        if lost and not force:
            raise DataError(f"{out}: {len(lost)} case(s) there ({', '.join(c for _, c in lost[:5])}) "
                            "come from no configured source, and rebuilding would remove them. Add their "
                            "source to data.sources, or pass --force to rebuild without them.")
    return {"cases": len(new), "skipped": skipped,
            "source": "synthetic" if not paths else f"{len(paths)} source folder(s)"}
