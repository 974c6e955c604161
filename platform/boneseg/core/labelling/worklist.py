"""Which case to correct next (`boneseg correct next`): the cases still to label, ranked by
how much the fold models disagree on them, as MONAI Label's epistemic strategy ranks
unlabelled images by the model's uncertainty.

A case is still to label when it is an abdominal CT with neither truth nor a correction.
Each fold model segments it on its own (no postprocessing); the score is
1 - the mean pairwise Dice of the fold models' non-background maps, averaged over the
label ids that any of them predicts (0: they agree voxel for voxel; 1: they share no
voxel). The models were trained on different folds, so where they disagree the
ensemble is least sure, and a correction teaches the most (`core.labelling.ranking` runs
the models). The ranking is written to <annotate_dir>/worklist.json, which `boneseg correct
export` with no case follows and `boneseg labels` and the report show. This module reads and
writes that file without loading a model, so the labels stage stays apart from inference.
"""
from __future__ import annotations

import itertools
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from boneseg.core.config import Config
from boneseg.core.evaluation.metrics import dice
from boneseg.core.io import write_json
from boneseg.core.layout import correction_path, find_cases
from boneseg.errors import DataError

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


def write_worklist(cfg: Config, rows: list[dict], model: str) -> Path:
    path = Path(cfg.data.annotate_dir) / WORKLIST
    write_json(path, {"model": model, "ranked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "score": "1 - mean pairwise Dice of the fold models' maps", "cases": rows})
    return path


def open_worklist(cfg: Config) -> list[dict] | None:
    """The worklist's rows whose case is still to label, in its order; None where there is no
    readable worklist."""
    path = Path(cfg.data.annotate_dir) / WORKLIST
    try:
        small = path.is_file() and path.stat().st_size < 1 << 24
        rows = json.loads(path.read_text())["cases"] if small else None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        rows = None
    if not isinstance(rows, list):
        return None
    open_cases = {c["case"] for c in to_label(cfg)}
    return [r for r in rows if isinstance(r, dict) and r.get("case") in open_cases
            and isinstance(r.get("disagreement"), (int, float))]


def next_case(cfg: Config) -> str:
    """The top case of the worklist that is still to label (no truth, no correction)."""
    path = Path(cfg.data.annotate_dir) / WORKLIST
    rows = open_worklist(cfg)
    if rows is None:
        raise DataError(f"{path}: no worklist. Name the case (`boneseg correct export CASE`), or rank the "
                        "cases first with `boneseg correct next`.")
    if not rows:
        raise DataError(f"{path}: every case on the worklist is labelled or corrected. Run `boneseg correct "
                        "next` again to rank what is left.")
    return rows[0]["case"]
