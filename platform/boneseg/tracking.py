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


class MlflowTrial:
    """fit() callback: params + tags at start, metrics per epoch, summary at the end."""

    def __init__(self, cfg: Config, run_name: str, tags: dict | None = None, parent_run_id: str | None = None):
        import mlflow

        self.mlflow = mlflow
        self.client = mlflow.MlflowClient(tracking_uri(cfg))
        exp = self.client.get_experiment_by_name(cfg.tracking.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.tracking.experiment)
        all_tags = {"mlflow.runName": run_name, **git_tags(), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        self.run_id = self.client.create_run(exp_id, tags=all_tags, run_name=run_name).info.run_id
        self.cfg = cfg

    def on_start(self, info: dict) -> None:
        w = info["weights"]
        init = "random" if info["init"] == "random" else f"pretrained:{w.get('source')}"
        fields = {"case": info["case"], "classes": info["classes"], "init": init, "fold": str(info["fold"]),
                  "weights_source": w.get("source", "none"), "device": info["device"], "amp": info["amp"]}
        params = {**trial_params(self.cfg), **fields}
        existing = self.client.get_run(self.run_id).data.params
        self.client.log_batch(self.run_id, params=[self.mlflow.entities.Param(k, v[:6000])
                                                   for k, v in params.items() if k not in existing])
        for k, v in fields.items():
            self.client.set_tag(self.run_id, k, v)

    def on_epoch(self, epoch: int, metrics: dict, checkpoint_path=None) -> None:
        import math
        import time

        now = int(time.time() * 1000)
        ms = [self.mlflow.entities.Metric(k, float(v), now, epoch) for k, v in metrics.items()
              if k != "epoch" and isinstance(v, (int, float)) and not math.isnan(float(v))]
        self.client.log_batch(self.run_id, metrics=ms)

    def on_end(self, result) -> None:
        final = {"bone_dice": result.bone_dice, "test_bone_dice": result.test_bone_dice}
        for k, v in final.items():
            if v == v:  # not NaN
                self.client.log_metric(self.run_id, k, float(v))
        out = Path(result.summary_path).parent
        for name in ("summary.json", "history.json"):
            self.client.log_artifact(self.run_id, str(out / name))

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
