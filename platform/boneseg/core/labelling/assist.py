"""Model-assisted labelling, beyond the study (what MONAI Label does with a trained model,
but with the effort measured): a trained boneseg U-Net proposes all four classes.

- `propose_cts` (`boneseg assist --model REF --input DIR`): label maps for new,
  unlabelled CTs in `data.unet_proposals_dir`/<case>.nii.gz, the start that
  `boneseg correct export CASE --proposal unet` hands to an annotator. DIR is a
  data/raw-style folder (<cohort>/<case>/ct.nii.gz: named by case id, thigh CTs left out)
  or NIfTI files (named by file).
- `oof_sources`: the same proposals for the labelled cohort without leakage. Each case's
  map comes from the fold model that did not train on it, as its trial wrote it
  (results/trials/<variant>/fold<k>/predictions/, `training.finish`): a cross-validation
  case from the fold that validated it, a held-out test case from the lowest fold (no
  fold trained on it). Scored as the other sources are (`effort.proposal_qa` against the
  truth): "unet" is the best multi-class variant, "unet-bone" the best single-class one.
"""
from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from boneseg.core.config import VARIANTS, Config
from boneseg.core.evaluation.metrics import best_variant
from boneseg.core.imaging.nifti import load_labels
from boneseg.core.io import write_json
from boneseg.core.labelling.effort import proposal_qa
from boneseg.core.labelling.labels import source_totals
from boneseg.core.layout import PREDICTIONS, find_cases, load_qa, load_splits
from boneseg.core.parallel import Pool, file_sizes
from boneseg.errors import DataError

if TYPE_CHECKING:
    from boneseg.core.inference.predict import ModelRequest

SOURCES = {"unet": "multi", "unet-bone": "single"}  # source -> the classes of the variant behind it
MANIFEST = "proposals.json"


# ---------------------------------------------------------------- new CTs
def input_pairs(inp: Path, out: Path) -> list[tuple[Path, Path]]:
    """(CT, proposal) pairs: a data/raw-style folder by case id (not the thigh cohort, whose
    labels are the threshold masks), else NIfTI files as `boneseg segment` takes them."""
    from boneseg.core.inference.folder import plan_outputs

    if inp.is_dir() and any(inp.glob("*/*/ct.nii.gz")):
        pairs = [(c["ct"], out / f"{c['case']}.nii.gz") for c in find_cases(inp) if c["cohort"] != "thigh"]
        if not pairs:
            raise DataError(f"{inp}: only thigh CTs; the U-Net proposes abdominal label maps.")
        return pairs
    return plan_outputs(inp, out)


def propose_cts(cfg: Config, inp: Path, out: Path | None, req: ModelRequest,
                pool: Pool | None = None) -> list[dict]:
    """Propose every CT of `inp` with the fold models (ensembled, the CTs on `pool`); each map is written
    atomically, and out/proposals.json records which model proposed which case."""
    import json

    from boneseg.core.inference.folder import segment_pairs

    out = Path(out or cfg.data.unet_proposals_dir)
    res = segment_pairs(cfg, input_pairs(Path(inp), out), replace(req, classes="all"), pool=pool)
    path = out / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    for r in res:
        manifest[Path(r["output"]).name] = {"model": req.ref, "folds": req.folds or "all"}
    write_json(path, dict(sorted(manifest.items())))
    return res


# ---------------------------------------------------------------- the cohort, out of fold
def best_of(metrics: dict, classes: str) -> str | None:
    """The best-scoring variant with these classes (multi or single), ranked as the sweep
    ranks them (`metrics.best_variant`)."""
    table = {v: metrics[v] for v, var in VARIANTS.items()
             if var.classes == classes and isinstance(metrics.get(v), dict)}
    return best_variant(table) if table else None


def oof_maps(trials_dir: Path, splits: dict, variant: str) -> dict[str, Path]:
    """{case: the label map of the fold model that did not train on it} for one variant."""
    base = Path(trials_dir) / variant
    maps = {case: base / f"fold{k}" / PREDICTIONS / f"{case}.nii.gz"
            for k, fold in enumerate(splits["folds"]) for case in fold["val"]}
    for case in splits.get("test", []):
        found = [base / f"fold{k}" / PREDICTIONS / f"{case}.nii.gz" for k in range(len(splits["folds"]))]
        maps[case] = next((p for p in found if p.is_file()), found[0])
    return {c: p for c, p in sorted(maps.items()) if p.is_file()}


def oof_sources(cfg: Config, metrics: dict, pool: Pool | None = None) -> dict:
    """-> {"variants": {source: variant}, "cases": {case: {source: proposal_qa}}} over the
    abdominal cases that have a truth (scored on `pool`); a sweep without predictions gives no cases."""
    splits = load_splits(cfg.data.splits_file)
    truths = {c["case"]: c["truth"] for c in find_cases(cfg.data.raw_dir)
              if c["truth"] and c["cohort"] != "thigh"}
    out: dict = {"variants": {}, "cases": {}}
    maps = {}  # source -> {case: map}
    for source, classes in SOURCES.items():
        variant = best_of(metrics, classes)
        maps[source] = oof_maps(Path(cfg.sweep.trials_dir), splits, variant) if variant else {}
        if maps[source]:
            out["variants"][source] = variant
    have = {case: {s: m[case] for s, m in maps.items() if case in m} for case in truths}
    cases = [case for case in truths if have[case]]
    scores = (pool or Pool()).map(score_case, [(truths[c], have[c]) for c in cases], cases, "report", False,
                                  file_sizes(truths[c] for c in cases))
    out["cases"] = dict(zip(cases, scores))
    return out


def score_case(truth_path: Path, maps: dict[str, Path]) -> dict:
    """{source: proposal_qa} of one case's maps against its truth, read once (a
    `core.parallel` case function); each map on the CT's grid, or refused."""
    truth = load_labels(truth_path)
    return {s: proposal_qa(load_labels(p, truth, truth_path).data, truth.data) for s, p in maps.items()}


# ---------------------------------------------------------------- the report's effort section
def labelling_effort(cfg: Config, metrics: dict, pool: Pool | None = None) -> dict:
    """The labels QA's sources per abdominal case (data/labels/qa.json) beside the U-Net's
    out-of-fold proposals (`core.labelling.assist`): per case and totalled per source."""
    qa = [r for r in (load_qa(cfg.data.labels_dir) or {}).get("cases", []) if r.get("sources")]
    oof = oof_sources(cfg, metrics, pool)
    cases = {r["case"]: {**r["sources"], **oof["cases"].get(r["case"], {})} for r in qa}
    return {"totals": source_totals([{"sources": q} for q in cases.values()]), "cases": cases,
            "unet_variants": oof["variants"]}


def effort_html(totals: dict, cases: dict[str, dict], variants: dict) -> str:
    """Per source side by side (threshold -> filled -> V-Net -> U-Net): totals, then per case."""
    kinds = {"unet": "U-Net", "unet-bone": "U-Net, bone only"}
    names = {"threshold": "threshold", "filled": "threshold + fill", "vnet": "V-Net",
             **{s: f"{kinds[s]} ({v}, out of fold)" for s, v in variants.items()}}
    rows = "".join(
        f"<tr><td>{html.escape(names.get(k, k))}</td><td>{t['cases']}</td><td>{t['bone_dice']:.4f}</td>"
        f"<td>{t['on_kidney']:.1%}</td><td>{t['on_vessel']:.1%}</td><td>{t['on_liver']:.1%}</td>"
        f"<td>{t['voxels']}</td><td>{t['components']}</td><td>{t['slices']}</td></tr>"
        for k, t in totals.items())
    order = list(totals)
    head = "".join(f"<th>{html.escape(names.get(s, s))}</th>" for s in order)
    cell = lambda q, s: (f"<td>{q[s]['voxels']} / {q[s]['components']} / {q[s]['slices']}</td>"  # noqa: E731
                         if s in q else "<td>-</td>")
    per_case = "".join(f"<tr><td>{html.escape(case)}</td>{''.join(cell(q, s) for s in order)}</tr>"
                       for case, q in sorted(cases.items()))
    return (f"<table><tr><th>start from</th><th>cases</th><th>bone Dice</th><th>on kidney</th>"
            f"<th>on vessel</th><th>on liver</th><th>voxels</th><th>regions</th><th>slices</th></tr>{rows}"
            f"</table><p>Per case: voxels / regions / slices.</p><table><tr><th>case</th>{head}</tr>"
            f"{per_case}</table>")
