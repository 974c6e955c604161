"""MLflow at the edge: one run per `boneseg train` trial (`MlflowTrial`, a fit()
callback), and the run tree of a sweep (`SweepRuns`): parent -> one run per variant ->
one run per (variant, fold). Metric names are listed in docs/sweep.md.

The tracking URI is MLFLOW_TRACKING_URI if set, else `tracking.uri` (default
sqlite:///mlflow.db). Runs always end FINISHED or FAILED, never left RUNNING. MLflow
only records: every score it holds was computed before (`core.evaluation.metrics`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import time
from pathlib import Path

from boneseg.core.config import Config
from boneseg.core.project import anchored_uri, queued_workspace_root
from boneseg.core.redact import redact

# the per-epoch metric names; anything else in a result is not logged per epoch
EPOCH_METRIC_PREFIXES = ("train_loss", "train_seconds", "val_", "lr", "images_per_s")
FOLD_METRICS = ("bone_dice", "test_bone_dice", "bone_dice_pooled", "bone_tp", "bone_fp", "bone_fn")
VARIANT_METRICS = ("bone_dice_mean", "bone_dice_std", "bone_dice_pooled", "test_bone_dice")


def tracking_uri(cfg: Config) -> str:
    """MLFLOW_TRACKING_URI, else tracking.uri; a relative sqlite file is the project's own
    even in a queued DVC experiment's temporary copy (`core.project.anchored_uri`)."""
    return anchored_uri(os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri)


def client_for(cfg: Config):
    import mlflow

    return mlflow.MlflowClient(tracking_uri(cfg))


# MLflow 3 opens an experiment in the view its kind names; without the tag it guesses, and a
# sweep's experiment opened in the GenAI (traces) view. The note is the experiment's description.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "boneseg: multi-class bone segmentation of CT, the study's four variants x the cross-validation "
        "folds.\n\n"
        "**Compare the four variants**: in *Runs*, filter `tags.level = 'variant'` (one row per variant; add "
        "`and tags.sweep_id = '<parent run id>'` for one sweep), sort by `bone_dice_mean` (the study's final "
        "score: mean of the fold scores) and open the chart view: one bar chart each for `bone_dice_mean`, "
        "`bone_dice_pooled`, `bone_dice_std` and `test_bone_dice`. In the table view, *Columns* adds them "
        "and the params `classes`, `init`. "
        "**Every trial**: filter `tags.level = 'fold'`, group by `variant`, chart `val_bone_dice` per epoch. "
        "A sweep's parent run (`kind = sweep`) carries `progress` while it runs, the table `variants.md`, "
        "`best_variant` and the report (artifacts `report/`). Models > boneseg holds the best variant's "
        "fold models: `boneseg segment --model models:/boneseg/<version>`."
    ),
}


def experiment_id(client, name: str) -> str:
    """The experiment's id (created if needed), tagged as model development with a note on
    how to compare the variants; a note someone has edited is kept."""
    exp = client.get_experiment_by_name(name)
    root = queued_workspace_root()  # a queued DVC experiment: artifacts go to the project's ./mlruns too
    local = str(getattr(client, "tracking_uri", "")).startswith("sqlite:")
    where = (root / "mlruns").as_uri() if root is not None and local else None
    exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=where)
    have = exp.tags if exp else {}
    for k, v in EXPERIMENT_TAGS.items():
        if k not in have:
            client.set_experiment_tag(exp_id, k, v)
    return exp_id


def unreachable(cfg: Config) -> str | None:
    """None if the tracking store answers, else one line saying why and what to fix;
    fails in seconds, not after MLflow's minutes of HTTP retries (a server is asked once,
    with a 5 s timeout, through MLflow's own request function and credentials)."""
    why = _unreachable(tracking_uri(cfg))
    return redact(why) if why else None  # the message names the URI: never with its credentials


def _unreachable(uri: str) -> str | None:
    import mlflow

    try:
        if uri.startswith(("http://", "https://")):
            from mlflow.utils.credentials import get_default_host_creds
            from mlflow.utils.rest_utils import http_request

            resp = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "POST",
                                max_retries=0, timeout=5, json={"max_results": 1})
            if resp.status_code in (401, 403):
                user = os.environ.get("MLFLOW_TRACKING_USERNAME")
                who = f"user {user!r}" if user else "none given"
                return (f"{uri} refused the credentials ({resp.status_code}, {who}). "
                        "Set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (a team stack writes "
                        "them to infra/team/state/client.env).")
            if resp.status_code >= 400:
                return (f"{uri} answered HTTP {resp.status_code} to an experiment search. Check that "
                        "it is an MLflow server, or fix MLFLOW_TRACKING_URI / tracking.uri.")
            return None
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
        return None
    except Exception as exc:  # any failure to reach the store
        return (f"{uri} not reachable ({type(exc).__name__}: {str(exc)[:200]}). "
                "Start the server or fix MLFLOW_TRACKING_URI / tracking.uri.")


def git_tags() -> dict[str, str]:
    """The code version a run used: commit and whether the checkout had uncommitted changes."""
    def git(*args):
        r = subprocess.run(["git", *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git_commit": commit or "unknown", "git_dirty": str(dirty).lower()}


def dvc_hashes(lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """md5 of the data each sweep used (labels, splits, slices), read from dvc.lock."""
    import yaml

    p = Path(lock_path)
    if not p.is_file():
        return {}
    stages = (yaml.safe_load(p.read_text()) or {}).get("stages", {})
    return {f"dvc.{stage}": o.get("md5", "") for stage in ("labels", "splits", "slices")
            for o in stages.get(stage, {}).get("outs", [])}


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
    """Params and the tags that slice the grid in the MLflow UI: variant, classes, init, fold."""
    from mlflow.entities import Param

    w = info["weights"]
    init = "random" if info["init"] == "random" else f"pretrained:{w.get('source')}"
    fields = {"variant": info["variant"], "classes": info["classes"], "init": init, "fold": str(info["fold"]),
              "weights_source": w.get("source", "none"), "device": info["device"], "amp": info["amp"]}
    params = {**trial_params(cfg), **fields}
    existing = client.get_run(run_id).data.params  # a resumed trial: params are already there
    new = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
    if new:
        client.log_batch(run_id, params=new)
    for k, v in fields.items():
        client.set_tag(run_id, k, v)


def log_epoch(client, run_id: str, epoch: int, metrics: dict) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, epoch) for k, v in metrics.items()
          if k.startswith(EPOCH_METRIC_PREFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool)
          and not math.isnan(float(v))]
    client.log_batch(run_id, metrics=ms)


def log_finite(client, run_id: str, values: dict, step: int = 0) -> None:
    """Log the numbers that are not NaN (MLflow cannot chart NaN)."""
    for k, v in values.items():
        if v is not None and v == v:
            client.log_metric(run_id, k, float(v), step=step)


def log_resources(client, run_id: str, res: dict | None) -> None:
    """A trial's resources (summary.json "resources"): peak memory and mean img/s as
    metrics, the device and the peak's scope as tags."""
    if not isinstance(res, dict):
        return
    log_finite(client, run_id, {"peak_rss_gib": res.get("peak_rss_gib"),
                                "images_per_s_mean": res.get("images_per_s"),
                                "cuda_max_allocated_gib": res.get("cuda_max_allocated_gib"),
                                "cuda_max_reserved_gib": res.get("cuda_max_reserved_gib")})
    client.set_tag(run_id, "device_name", str(res.get("device", ""))[:250])
    client.set_tag(run_id, "peak_rss_scope", str(res.get("peak_rss_scope", "")))


class MlflowTrial:
    """fit() callback: params + tags at start, metrics per epoch, summary at the end."""

    def __init__(
        self, cfg: Config, run_name: str, tags: dict | None = None, parent_run_id: str | None = None
    ):
        self.client = client_for(cfg)
        exp_id = experiment_id(self.client, cfg.tracking.experiment)
        all_tags = {"mlflow.runName": run_name, **git_tags(), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        self.run_id = self.client.create_run(exp_id, tags=all_tags, run_name=run_name).info.run_id
        self.cfg = cfg

    def on_start(self, info) -> None:  # a TrialInfo
        log_trial_start(self.client, self.run_id, self.cfg, dataclasses.asdict(info))

    def on_epoch(self, epoch: int, metrics: dict, checkpoint_path=None) -> None:
        log_epoch(self.client, self.run_id, epoch, metrics)

    def on_end(self, result) -> None:
        log_finite(
            self.client, self.run_id, {"bone_dice": result.bone_dice, "test_bone_dice": result.test_bone_dice}
        )
        log_resources(self.client, self.run_id, result.summary.get("resources"))
        out = Path(result.out_dir)
        for name in ("summary.json", "history.json"):
            self.client.log_artifact(self.run_id, str(out / name))
        if (out / "model.pt").is_file():  # `boneseg segment --model <this run id>`
            self.client.log_artifact(self.run_id, str(out / "model.pt"), "model")

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def log_stage_run(cfg: Config, run_name: str, params: dict, metrics: dict, artifact: str | Path | None = None,
                  tags: dict | None = None) -> str:
    """One finished run for a pipeline stage (e.g. `propose`): params, numeric metrics,
    one artifact file; tagged `kind = <run_name>`. Returns the run id."""
    from mlflow.entities import Param

    client = client_for(cfg)
    exp_id = experiment_id(client, cfg.tracking.experiment)
    all_tags = {"mlflow.runName": run_name, "kind": run_name, **git_tags(), **(tags or {})}
    run_id = client.create_run(exp_id, tags=all_tags, run_name=run_name).info.run_id
    client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in flatten(params).items()])
    log_finite(client, run_id, metrics)
    if artifact is not None:
        client.log_artifact(run_id, str(artifact))
    client.set_terminated(run_id, "FINISHED")
    return run_id
