"""`boneseg segment` and `boneseg assist` over files and folders: (CT, output) pairs planned
so that no input is overwritten, each CT segmented by the fold ensemble on a
`core.parallel.Pool` (each worker loads the models once), one atomic file per CT, and the
label description file beside them."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from boneseg.core.config import Config
from boneseg.core.imaging.nifti import Volume, is_nifti_name, load_ct, save_volume
from boneseg.core.inference.predict import (
    ModelRequest,
    Setup,
    inference_setup,
    output_ids,
    result_row,
    segment_volume,
)
from boneseg.core.io import atomic_write_text
from boneseg.core.labelmap import LABEL_FILE, label_description
from boneseg.core.parallel import Pool, file_sizes
from boneseg.errors import DataError


def plan_outputs(inp: Path, out: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs: FILE -> FILE (or into a folder), DIR -> DIR by file name."""
    if inp.is_dir():
        files = sorted(p for p in inp.iterdir() if p.is_file() and is_nifti_name(p))
        if not files:
            raise DataError(f"{inp}: no .nii/.nii.gz files in this folder.")
        if is_nifti_name(out):
            raise DataError(f"{out}: a folder input needs a folder output.")
        pairs = [(p, out / p.name) for p in files]
    elif inp.is_file():
        if not is_nifti_name(inp):
            raise DataError(f"{inp}: expected a .nii or .nii.gz file.")
        pairs = [(inp, out if is_nifti_name(out) else out / inp.name)]
    else:
        raise DataError(f"{inp}: not found. Give a CT .nii/.nii.gz file or a folder of them.")
    for src, dst in pairs:
        if dst.resolve() == src.resolve():
            raise DataError(f"{dst}: would overwrite its input CT. Choose another output path.")
    return pairs


def segment_files(cfg: Config, inp: Path, out: Path, req: ModelRequest, progress: bool = True,
                  pool: Pool | None = None) -> list[dict]:
    """Segment a CT file or folder with the requested fold models (ensembled), the CTs on `pool`."""
    return segment_pairs(cfg, plan_outputs(Path(inp), Path(out)), req, progress, pool)


_SETUPS: dict[str, Setup] = {}  # a worker's fold models, loaded once per request


def setup_key(cfg: Config, req: ModelRequest) -> str:
    return f"{req!r}|{cfg.model_dump_json()}"


def segment_case(cfg: Config, req: ModelRequest, src: Path, dst: Path) -> dict:
    """One CT's label map, one atomic file (a `core.parallel` case function: each worker
    loads the fold models once); returns its result row."""
    key = setup_key(cfg, req)
    if key not in _SETUPS:
        _SETUPS.clear()
        _SETUPS[key] = inference_setup(cfg, req)
    s = _SETUPS[key]
    t0 = time.perf_counter()
    ct = load_ct(src)
    labels = segment_volume(s.models, ct, s.rt, req.classes, s.tc.eval_batch_size, None, s.rule)
    save_volume(Volume(labels, ct.affine), dst)
    return {**result_row(dst, labels, ct, t0), "ids": output_ids(s.models, req.classes)}


def segment_pairs(cfg: Config, pairs: list[tuple[Path, Path]], req: ModelRequest,
                  progress: bool = True, pool: Pool | None = None) -> list[dict]:
    """(CT, output) pairs -> label maps (one atomic file each, the CTs on `pool`; on CUDA
    one after another in this process) and the label description file in every output folder."""
    if req.device != "cpu" and torch.cuda.is_available():
        pool = None
    _SETUPS.clear()
    # the fold models are loaded (and checked) here first: a bad model is one line before any
    # bar or worker starts; run here, the cases reuse them
    _SETUPS[setup_key(cfg, req)] = inference_setup(cfg, req)
    try:
        if pool is not None and pool.workers > 1:
            _SETUPS.clear()  # the workers load their own
        results = (pool or Pool()).map(segment_case, [(cfg, req, src, dst) for src, dst in pairs],
                                       [src.name for src, _ in pairs], "segment", progress,
                                       file_sizes(src for src, _ in pairs))
    finally:
        _SETUPS.clear()
    ids = results[0].pop("ids") if results else []
    for r in results:
        r.pop("ids", None)
    for folder in {dst.parent for _, dst in pairs}:
        atomic_write_text(folder / LABEL_FILE, label_description(ids))
    return results
