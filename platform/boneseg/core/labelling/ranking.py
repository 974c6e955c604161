"""The fold models' disagreement on each case still to label, for `boneseg correct next`
(the score and the worklist file: `core.labelling.worklist`)."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from boneseg.core.config import Config
from boneseg.core.imaging.nifti import load_ct
from boneseg.core.labelling.worklist import disagreement
from boneseg.errors import DataError

if TYPE_CHECKING:
    from boneseg.core.inference.predict import ModelRequest


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
