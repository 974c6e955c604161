"""Which case to correct next (`boneseg correct next`): the cases still to label, ranked by
how much the fold models disagree on them, as MONAI Label's epistemic strategy ranks
unlabelled images by the model's uncertainty.

A case is still to label when it is an abdominal CT with neither truth nor a correction.
Each fold model segments it on its own (no postprocessing); the score is
1 - the mean pairwise Dice of the fold models' non-background maps, averaged over the
label ids that any of them predicts (0: they agree voxel for voxel; 1: they share no
voxel). The models were trained on different folds, so where they disagree the
ensemble is least sure, and a correction teaches the most. The ranking is written to
<annotate_dir>/worklist.json, which `boneseg correct export` with no case follows.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from boneseg.core.config import Config
from boneseg.core.evaluation.metrics import dice
from boneseg.core.imaging.nifti import load_ct
from boneseg.core.io import write_json
from boneseg.core.layout import correction_path, find_cases
from boneseg.errors import DataError

if TYPE_CHECKING:
    from boneseg.core.inference.predict import ModelRequest

WORKLIST = "worklist.json"


def to_label(cfg: Config) -> list[dict]:
    """The abdominal cases with neither truth nor a correction, by case id."""
    return [c for c in find_cases(cfg.data.raw_dir) if c["cohort"] != "thigh" and c["truth"] is None
            and not correction_path(cfg.data.corrections_dir, c["case"]).is_file()]


def disagreement(maps: list[np.ndarray]) -> float:
    """1 - mean pairwise Dice of the fold models' maps, over the ids any of them predicts."""
    ids = sorted({int(i) for m in maps for i in np.unique(m) if i})
    if len(maps) < 2 or not ids:
        return 0.0
    per_id = []
    for i in ids:
        pairs = [dice(a == i, b == i, empty=1.0) for a, b in itertools.combinations(maps, 2)]
        per_id.append(1.0 - float(np.mean(pairs)))
    return float(np.mean(per_id))


def rank(cfg: Config, req: ModelRequest, cases: list[dict], progress=None) -> list[dict]:
    """[{"case", "disagreement", "bone_ml"}] sorted most uncertain first (ties: case id)."""
    from boneseg.core.inference.predict import bone_ml, fold_label_maps, inference_setup

    s = inference_setup(cfg, replace(req, postprocess=False))
    if len(s.models) < 2:
        raise DataError(f"--model {req.ref or req.checkpoints[0]}: one fold model cannot disagree with "
                        "itself; ranking needs the fold models of a sweep (results/model or "
                        "models:/boneseg@champion).")
    rows = []
    for c in cases:
        ct = load_ct(c["ct"])
        maps = fold_label_maps(s.models, ct, s.rt, s.tc.eval_batch_size)
        rows.append({"case": c["case"], "disagreement": round(disagreement(maps), 6),
                     "bone_ml": bone_ml(maps[0], ct.spacing)})
        if progress is not None:
            progress.update(1)
    return sorted(rows, key=lambda r: (-r["disagreement"], r["case"]))


def write_worklist(cfg: Config, rows: list[dict], model: str) -> Path:
    path = Path(cfg.data.annotate_dir) / WORKLIST
    write_json(path, {"model": model, "ranked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "score": "1 - mean pairwise Dice of the fold models' maps", "cases": rows})
    return path


def next_case(cfg: Config) -> str:
    """The top case of the worklist that is still to label (no truth, no correction)."""
    path = Path(cfg.data.annotate_dir) / WORKLIST
    try:
        small = path.is_file() and path.stat().st_size < 1 << 24
        rows = json.loads(path.read_text())["cases"] if small else None
    except (ValueError, KeyError, TypeError):
        rows = None
    if not isinstance(rows, list):
        raise DataError(f"{path}: no worklist. Name the case (`boneseg correct export CASE`), or rank the "
                        "cases first with `boneseg correct next`.")
    open_cases = {c["case"] for c in to_label(cfg)}
    for r in rows:
        if isinstance(r, dict) and r.get("case") in open_cases:
            return r["case"]
    raise DataError(f"{path}: every case on the worklist is labelled or corrected. Run `boneseg correct "
                    "next` again to rank what is left.")
