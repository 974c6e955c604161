"""MLflow at the edge: a `fit()` callback that records one trial as one run.

The tracking URI is MLFLOW_TRACKING_URI if set, else `tracking.uri` (default
sqlite:///mlflow.db). Runs always end FINISHED or FAILED, never left RUNNING.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from boneseg.config import Config


def tracking_uri(cfg: Config) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri


def experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def git_tags() -> dict[str, str]:
    """The code version a run used: commit and whether the checkout had uncommitted changes."""
    def git(*args):
        r = subprocess.run(["git", *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit or "unknown", "git_dirty": str(dirty).lower()}


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def trial_params(cfg: Config) -> dict[str, str]:
    return flatten({"train": cfg.train.model_dump(), "model": cfg.model.model_dump(),
                    "data": {"image_size": cfg.data.image_size, "window": list(cfg.data.window)},
                    "experiment": cfg.experiment or "quick"})


def log_trial_start(client, run_id: str, cfg: Config, info: dict) -> None:
    """Params and the tags that slice the grid in the MLflow UI: case, classes, init, fold."""
    from mlflow.entities import Param

    w = info["weights"]
    init = "random" if info["init"] == "random" else f"pretrained:{w.get('source')}"
    fields = {"case": info["case"], "classes": info["classes"], "init": init, "fold": str(info["fold"]),
              "weights_source": w.get("source", "none"), "device": info["device"], "amp": info["amp"]}
    params = {**trial_params(cfg), **fields}
    existing = client.get_run(run_id).data.params  # a resumed trial: params are already there
    new = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
    if new:
        client.log_batch(run_id, params=new)
    for k, v in fields.items():
        client.set_tag(run_id, k, v)


# the per-epoch metric names (docs/tracking.md); anything else in a result is not logged
EPOCH_METRIC_PREFIXES = ("train_loss", "train_seconds", "val_", "lr", "images_per_s")


def log_epoch(client, run_id: str, epoch: int, metrics: dict) -> None:
    import math
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, epoch) for k, v in metrics.items()
          if k.startswith(EPOCH_METRIC_PREFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool)
          and not math.isnan(float(v))]
    client.log_batch(run_id, metrics=ms)


class MlflowTrial:
    """fit() callback: params + tags at start, metrics per epoch, summary at the end."""

    def __init__(self, cfg: Config, run_name: str, tags: dict | None = None, parent_run_id: str | None = None):
        import mlflow

        self.mlflow = mlflow
        self.client = mlflow.MlflowClient(tracking_uri(cfg))
        exp_id = experiment_id(self.client, cfg.tracking.experiment)
        all_tags = {"mlflow.runName": run_name, **git_tags(), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        self.run_id = self.client.create_run(exp_id, tags=all_tags, run_name=run_name).info.run_id
        self.cfg = cfg

    def on_start(self, info: dict) -> None:
        log_trial_start(self.client, self.run_id, self.cfg, info)

    def on_epoch(self, epoch: int, metrics: dict, checkpoint_path=None) -> None:
        log_epoch(self.client, self.run_id, epoch, metrics)

    def on_end(self, result) -> None:
        final = {"bone_dice": result.bone_dice, "test_bone_dice": result.test_bone_dice}
        for k, v in final.items():
            if v == v:  # not NaN
                self.client.log_metric(self.run_id, k, float(v))
        out = Path(result.summary_path).parent
        for name in ("summary.json", "history.json"):
            self.client.log_artifact(self.run_id, str(out / name))
        if (out / "model.pt").is_file():  # `boneseg segment --model <this run id>`
            self.client.log_artifact(self.run_id, str(out / "model.pt"), "model")

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


# ---------------------------------------------------------------- sweep: parent / case / fold runs
def dvc_hashes(lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """md5 of the data each sweep used (labels, splits, slices), read from dvc.lock."""
    import yaml

    p = Path(lock_path)
    if not p.is_file():
        return {}
    stages = (yaml.safe_load(p.read_text()) or {}).get("stages", {})
    out = {}
    for stage in ("labels", "splits", "slices"):
        for o in stages.get(stage, {}).get("outs", []):
            out[f"dvc.{stage}"] = o.get("md5", "")
    return out


class SweepRuns:
    """The MLflow tree of one sweep: parent -> one child per case -> one grandchild per fold.

    Only the driver writes (one writer: no "database is locked" with sqlite, whatever
    the number of parallel trials). Runs are found again by tags, so a restarted driver
    or a retried trial continues the same runs instead of duplicating them.
    """

    def __init__(self, cfg: Config, sweep_name: str, parent_run_id: str | None = None, tags: dict | None = None):
        import mlflow

        self.mlflow = mlflow
        self.client = mlflow.MlflowClient(tracking_uri(cfg))
        self.exp_id = experiment_id(self.client, cfg.tracking.experiment)
        self.cfg = cfg
        if parent_run_id is None:
            all_tags = {"mlflow.runName": sweep_name, "kind": "sweep", **git_tags(), **dvc_hashes(), **(tags or {})}
            parent_run_id = self.client.create_run(self.exp_id, tags=all_tags, run_name=sweep_name).info.run_id
        else:
            self.client.update_run(parent_run_id, status="RUNNING")
        self.parent = parent_run_id
        self.logged_epoch: dict[str, int] = {}

    def _find(self, **tags) -> str | None:
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in {"sweep_id": self.parent, **tags}.items())
        runs = self.client.search_runs([self.exp_id], flt, max_results=2)
        return runs[0].info.run_id if runs else None

    def case_run(self, case: str) -> str:
        rid = self._find(level="case", case=case)
        if rid is None:
            classes, init = _case_fields(case)
            rid = self.client.create_run(self.exp_id, run_name=case, tags={
                "mlflow.parentRunId": self.parent, "sweep_id": self.parent, "level": "case", "case": case,
                "classes": classes, "init": init}).info.run_id
        return rid

    def fold_run(self, case: str, fold: int) -> str:
        rid = self._find(level="fold", case=case, fold=str(fold))
        if rid is None:
            parent = self.case_run(case)
            rid = self.client.create_run(self.exp_id, run_name=f"{case}/fold{fold}", tags={
                "mlflow.parentRunId": parent, "sweep_id": self.parent, "level": "fold", "case": case,
                "fold": str(fold), **git_tags()}).info.run_id
        else:
            self.client.update_run(rid, status="RUNNING")
            hist = self.client.get_metric_history(rid, "val_bone_dice")
            self.logged_epoch[rid] = max((m.step for m in hist), default=-1)
        return rid

    def log_epoch(self, rid: str, epoch: int, metrics: dict) -> None:
        """Per-epoch metrics, each epoch once (a retried trial does not log an epoch twice)."""
        if epoch <= self.logged_epoch.get(rid, -1):
            return
        log_epoch(self.client, rid, epoch, metrics)
        self.logged_epoch[rid] = epoch

    def start_fold(self, rid: str, info: dict) -> None:
        log_trial_start(self.client, rid, self.cfg, info)

    def finish_fold(self, rid: str, final: dict, summary_text: str) -> None:
        if final.get("node_id"):
            self.client.set_tag(rid, "ray_node_id", final["node_id"])
        self.client.set_tag(rid, "resumed_from_epoch", str(final.get("resumed_from_epoch", 0)))
        for k in ("bone_dice", "test_bone_dice", "bone_dice_pooled", "bone_tp", "bone_fp", "bone_fn"):
            v = final.get(k)
            if v is not None and v == v:
                self.client.log_metric(rid, k, float(v))
        self.client.log_text(rid, summary_text, "summary.json")
        self.client.set_terminated(rid, "FINISHED")

    def log_model(self, case: str, fold: int, model_dir: str) -> None:
        rid = self._find(level="fold", case=case, fold=str(fold))
        path = Path(model_dir) / "model.pt"
        if rid and self.cfg.sweep.log_model and path.is_file():
            self.client.log_artifact(rid, str(path), "model")

    def register_model(self, name: str, case: str, model_dir: Path, manifest: dict) -> str:
        """The case's fold models (+ boneseg.json) as the case run's `ensemble` artifact,
        registered as a new version of `name`; returns models:/<name>/<version>."""
        from mlflow.exceptions import MlflowException

        rid = self.case_run(case)
        self.client.log_artifacts(rid, str(model_dir), "ensemble")
        try:
            self.client.create_registered_model(
                name, description="boneseg fold-model ensembles: `boneseg segment --model models:/NAME/VERSION`")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        s = manifest["scores"]
        mv = self.client.create_model_version(
            name, f"runs:/{rid}/ensemble", run_id=rid,
            tags={"case": case, "classes": manifest.get("classes", ""), "folds": ",".join(map(str, manifest["folds"])),
                  "image_size": str(manifest.get("preprocessing", {}).get("image_size", "")),
                  "window": json.dumps(manifest.get("preprocessing", {}).get("window", [])),
                  "sweep_id": self.parent, "bone_dice_mean": f"{s['bone_dice_mean']:.4f}"},
            description=f"{case}: {len(manifest['folds'])} fold models, softmax-averaged; "
                        f"bone Dice {s['bone_dice_mean']:.4f} +- {s['bone_dice_std']:.4f} over folds")
        uri = f"models:/{name}/{mv.version}"
        self.client.set_tag(self.parent, "registered_model", uri)
        self.client.set_tag(rid, "registered_model", uri)
        return uri

    def fail_fold(self, case: str, fold: int) -> None:
        rid = self._find(level="fold", case=case, fold=str(fold))
        if rid:
            self.client.set_terminated(rid, "FAILED")

    def finished_folds(self, case: str) -> list:
        flt = f"tags.sweep_id = '{self.parent}' and tags.level = 'fold' and tags.`case` = '{case}'"
        return [r for r in self.client.search_runs([self.exp_id], flt) if r.info.status == "FINISHED"]

    def close_case(self, case: str, n_folds: int) -> dict | None:
        """When every fold of `case` is done: the study's final score and friends on the case run."""
        import numpy as np

        runs = self.finished_folds(case)
        if len(runs) < n_folds:
            return None
        m = [r.data.metrics for r in runs]
        folds = np.array([x["bone_dice"] for x in m], dtype=float)
        tp, fp, fn = (sum(x.get(k, 0.0) for x in m) for k in ("bone_tp", "bone_fp", "bone_fn"))
        scores = {"bone_dice_mean": float(np.nanmean(folds)),
                  "bone_dice_std": float(np.nanstd(folds, ddof=1)) if len(folds) > 1 else 0.0,
                  "bone_dice_pooled": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
                  "test_bone_dice": float(np.nanmean([x.get("test_bone_dice", np.nan) for x in m]))}
        rid = self.case_run(case)
        for k, v in scores.items():
            if v == v:
                self.client.log_metric(rid, k, v)
        self.client.set_terminated(rid, "FINISHED")
        return scores

    def close(self, table: dict, ok: bool) -> None:
        from boneseg.metrics import best_case

        if table:
            rows = ["| case | bone_dice_mean | bone_dice_std | bone_dice_pooled | test_bone_dice |",
                    "| --- | --- | --- | --- | --- |"]
            csv = ["case,bone_dice_mean,bone_dice_std,bone_dice_pooled,test_bone_dice"]
            for case, s in table.items():
                vals = [s["bone_dice_mean"], s["bone_dice_std"], s["bone_dice_pooled"], s["test_bone_dice"]]
                rows.append(f"| {case} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
                csv.append(case + "," + ",".join(f"{v:.6f}" for v in vals))
            self.client.log_text(self.parent, "\n".join(rows) + "\n", "cases.md")
            self.client.log_text(self.parent, "\n".join(csv) + "\n", "cases.csv")
            best = best_case(table)
            self.client.set_tag(self.parent, "best_case", best)
            self.client.log_metric(self.parent, "best_bone_dice_mean", table[best]["bone_dice_mean"])
            for case, s in table.items():
                self.client.log_metric(self.parent, f"{case}.bone_dice_mean", s["bone_dice_mean"])
        self.client.set_terminated(self.parent, "FINISHED" if ok else "FAILED")

    def log_data_input(self, slices_dir: str, digest: str) -> None:
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # "can be interpreted in multiple ways": all mean a local folder
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(slices_dir))
        ds = MetaDataset(source, name="slices", digest=digest[:36] or None)
        self.client.log_inputs(self.parent, datasets=[DatasetInput(ds._to_mlflow_entity(),
                                                                   [InputTag("mlflow.data.context", "training")])])


def _case_fields(case: str) -> tuple[str, str]:
    from boneseg.config import CASES

    return CASES[case]
