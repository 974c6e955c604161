"""A sweep's finished trials -> the science it hands back to DVC (no Ray, no MLflow):
results/metrics.json (each variant's scores, the best variant), results/folds.csv (one
row per validation case), results/trials (every trial's summary + history, read by
`report`) and results/model (the best variant's fold models, `segment --model`); each trial folder also
holds predictions/, its label maps of the cases it did not train on.

Scores come from `core.evaluation.metrics.variant_scores` over the trials' own summaries, never
from the tracking store, so a tracking outage cannot change them.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from boneseg.core.config import Config
from boneseg.core.engine.export import export_fold_models
from boneseg.core.evaluation.metrics import variant_scores
from boneseg.core.evaluation.postprocess import choose_postprocessing
from boneseg.core.io import atomic_dir, atomic_write_text, write_json
from boneseg.core.labelmap import LABEL_IDS
from boneseg.core.layout import PREDICTIONS, label_path

MODEL_MANIFEST = "boneseg.json"
FOLDS_COLUMNS = ["variant", "fold", "case", "bone_dice"]


@dataclass
class TrialOutcome:
    """One trial as the driver found it at the end of the sweep."""

    variant: str
    fold: int
    summary: dict | None  # None: the trial did not finish
    model_dir: Path | None = None  # a local folder with model.pt + history.json

    @property
    def finished(self) -> bool:
        return self.summary is not None


def collect(outcomes: list[TrialOutcome], variants: list[str], folds: list[int]) -> tuple[dict, list, list]:
    """-> (scores per variant whose every fold finished, per-case rows, failed trial names)."""
    failed = sorted(f"{o.variant}/fold{o.fold}" for o in outcomes if not o.finished)
    done = {(o.variant, o.fold): o.summary for o in outcomes if o.finished}
    table = {}
    for v in variants:
        summaries = [done[v, f] for f in folds if (v, f) in done]
        if len(summaries) == len(folds):
            table[v] = variant_scores(summaries)
    rows = [{"variant": v, "fold": f, "case": c["case"], "bone_dice": c["bone_dice"]}
            for (v, f), s in done.items() for c in s["metric_per_case"]]
    return table, sorted(rows, key=lambda x: (x["variant"], x["fold"], x["case"])), failed


CURVE_KEYS = ("train_loss", "val_loss", "val_bone_dice")


def write_curves(cfg: Config, outcomes: list[TrialOutcome]) -> int:
    """results/curves.json: one record per validated epoch of every finished trial
    ({"trial": "<variant>/fold<k>", "epoch", "train_loss", "val_loss", "val_bone_dice"}),
    so `dvc plots show` draws one line per trial (template .dvc/plots/trials.json; DVC
    needs every record to hold the plotted fields). Returns the number of records."""
    records = []
    for o in sorted((o for o in outcomes if o.finished and o.model_dir), key=lambda o: (o.variant, o.fold)):
        h = o.model_dir / "history.json"
        for e in json.loads(h.read_text()) if h.is_file() else []:
            if all(isinstance(e.get(k), (int, float)) and e[k] == e[k] for k in CURVE_KEYS):
                records.append({"trial": f"{o.variant}/fold{o.fold}", "epoch": int(e["epoch"]),
                                **{k: round(float(e[k]), 6) for k in CURVE_KEYS}})
    atomic_write_text(cfg.sweep.curves_file, json.dumps(records, indent=0) + "\n")
    return len(records)


def write_results(cfg: Config, table: dict, rows: list, best: str | None) -> None:
    """`best`: `core.evaluation.metrics.best_variant(table)`, chosen once by the driver (None: no table)."""
    metrics = {v: {k: round(x, 6) for k, x in s.items()} for v, s in table.items()}
    if best is not None:
        metrics["best_variant"] = best
    write_json(cfg.sweep.metrics_file, metrics)
    buf = io.StringIO()
    w = csv.DictWriter(buf, FOLDS_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(cfg.sweep.folds_file, buf.getvalue())


def splits_md5(cfg: Config) -> str:
    """The splits' content hash (what DVC records for data/splits.json)."""
    p = Path(cfg.data.splits_file)
    return hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else ""


def postprocessing(cfg: Config, outcomes: list[TrialOutcome], best: str, classes: str) -> dict:
    """The best variant's postprocessing rule, chosen on its out-of-fold validation maps
    (`core.evaluation.postprocess`): the manifest's "postprocess" section."""
    pairs = [(o.model_dir / PREDICTIONS / f"{c['case']}.nii.gz", label_path(cfg.data.labels_dir, c["case"]))
             for o in outcomes if o.variant == best and o.finished and o.model_dir
             for c in o.summary["metric_per_case"]]
    pairs = [(p, t) for p, t in pairs if p.is_file() and t.is_file()]
    if not pairs:
        return {"rule": {}, "description": "none", "cases": 0, "why": "no out-of-fold label maps to score"}
    return choose_postprocessing(pairs, classes, cfg.infer.postprocess_min_ml, cfg.infer.postprocess_min_gain)


def export(cfg: Config, outcomes: list[TrialOutcome], table: dict, best: str, sweep: dict,
           register: Callable[[Path, dict], str] | None = None, say: Callable[[str], None] = print) -> str:
    """Every trial's summary + history into results/trials, the best variant's fold
    models + manifest into results/model, both atomically. `sweep`: {"name", "run_id"};
    `register(model_dir, manifest) -> uri` registers the models (None: not). Returns the
    registered model URI ("-" when not registered). With `infer.export` the fold models are
    exported to ONNX (fp32 + checked int8, `core.engine.export`) before registration, so the
    registered version carries them and the manifest records the checks; with
    `infer.postprocess` the manifest carries the postprocessing rule chosen by
    cross-validation, which `segment` applies."""
    manifest = {"variant": best, "folds": [], "label_ids": {str(k): v for k, v in LABEL_IDS.items()},
                "scores": table[best], "sweep": sweep["name"], "sweep_run_id": sweep["run_id"],
                "splits_md5": splits_md5(cfg),  # the promotion gate compares scores on the same splits
                # how the served model (tracking.served) runs, without a project's params.yaml
                "infer": cfg.infer.model_dump(include={"backend", "precision", "batch_size", "postprocess"})}
    with atomic_dir(cfg.sweep.trials_dir) as trials, atomic_dir(cfg.sweep.model_dir) as models:
        for o in sorted((o for o in outcomes if o.finished), key=lambda o: (o.variant, o.fold)):
            t = trials / o.variant / f"fold{o.fold}"
            t.mkdir(parents=True)
            (t / "summary.json").write_text(json.dumps(o.summary, indent=1, default=float) + "\n")
            if o.model_dir and (o.model_dir / "history.json").is_file():
                shutil.copy2(o.model_dir / "history.json", t / "history.json")
            if o.model_dir and (o.model_dir / PREDICTIONS).is_dir():  # out-of-fold maps (labelling.assist)
                shutil.copytree(o.model_dir / PREDICTIONS, t / PREDICTIONS)
            if o.variant == best and o.model_dir:
                shutil.copy2(o.model_dir / "model.pt", models / f"fold{o.fold}.pt")
                manifest["folds"].append(o.fold)
                manifest.update(classes=o.summary["classes"], preprocessing=o.summary["preprocessing"])
        if cfg.infer.postprocess and manifest["folds"]:
            manifest["postprocess"] = pp = postprocessing(cfg, outcomes, best, manifest["classes"])
            say(f"postprocess: {pp['description']} (CV bone Dice {pp.get('bone_dice_before')} -> "
                f"{pp.get('bone_dice_after')} over {pp['cases']} validation cases)")
        if cfg.infer.export and manifest["folds"]:
            manifest["onnx"] = export_fold_models(cfg, models, manifest["folds"], say)
        # written once, before registration, so the registered version carries it too; the
        # version's URI is recorded in results/trials/index.json
        (models / MODEL_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        uri = register(models, manifest) if register is not None else "-"
        (trials / "index.json").write_text(
            json.dumps(
                {
                    "sweep": sweep["name"],
                    "sweep_run_id": sweep["run_id"],
                    "best_variant": best,
                    "registered_model": uri,
                },
                indent=1,
            )
            + "\n"
        )
    return uri
