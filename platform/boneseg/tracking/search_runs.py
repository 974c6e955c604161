"""The MLflow tree of one hyperparameter search: a parent run, one child per trial.

Each child holds the trial's searched values as params (`train.lr`, ...: columns of the
runs table and axes of the parallel-coordinates chart) and its objective per validated
epoch (`val_bone_dice`, and `fold<k>_bone_dice`). A trial that ASHA stopped ends
FINISHED with the tag `stopped_early=true`. Only the search's driver writes, through
`RetryingClient`; a restarted driver continues the same parent and children (found by tags).
"""
from __future__ import annotations

import json

from boneseg.core.config import Config
from boneseg.tracking.retry import RetryingClient
from boneseg.tracking.runs import client_for, dvc_hashes, experiment_id, git_tags, log_finite, tracking_uri


class SearchRuns:
    def __init__(self, cfg: Config, name: str, parent_run_id: str | None = None, tags: dict | None = None):
        self.client = RetryingClient(client_for(cfg), cfg.tracking.outage_s, tracking_uri(cfg))
        self.exp_id = experiment_id(self.client, cfg.tracking.experiment)
        if parent_run_id is None:
            tags = {"mlflow.runName": name, "kind": "search", **git_tags(), **dvc_hashes(), **(tags or {})}
            parent_run_id = self.client.create_run(self.exp_id, run_name=name, tags=tags).info.run_id
            for key, spec in cfg.search.items():  # the space itself, as params of the parent
                self.client.log_param(parent_run_id, f"search.{key}",
                                      json.dumps(spec.model_dump(exclude_none=True)))
            for k, v in cfg.tune.model_dump(exclude={"overrides_dir"}).items():
                self.client.log_param(parent_run_id, f"tune.{k}", json.dumps(v))
        else:
            self.client.update_run(parent_run_id, status="RUNNING")
        self.parent = parent_run_id
        self._ids: dict[str, str] = {}
        self._logged: dict[str, int] = {}

    def trial_run(self, trial_id: str, setting: dict) -> str:
        """The trial's child run (created once, with the searched values as params)."""
        if trial_id not in self._ids:
            flt = f"tags.search_id = '{self.parent}' and tags.trial_id = '{trial_id}'"
            found = self.client.search_runs([self.exp_id], flt, max_results=1)
            if found:
                rid = found[0].info.run_id
                self.client.update_run(rid, status="RUNNING")
                hist = self.client.get_metric_history(rid, "val_bone_dice")
                self._logged[rid] = max((m.step for m in hist), default=0)
            else:
                rid = self.client.create_run(self.exp_id, run_name=f"trial-{trial_id}", tags={
                    "mlflow.parentRunId": self.parent, "search_id": self.parent, "level": "trial",
                    "trial_id": trial_id}).info.run_id
                for key, value in setting.items():
                    self.client.log_param(rid, key, value)
                self._logged[rid] = 0
            self._ids[trial_id] = rid
        return self._ids[trial_id]

    def log_result(self, rid: str, step: int, metrics: dict) -> None:
        """One validated epoch's objective (step: validated epochs so far), each step once."""
        if step <= self._logged.get(rid, 0):
            return
        log_finite(self.client, rid, {k: v for k, v in metrics.items() if k.endswith("bone_dice")}, step=step)
        self._logged[rid] = step

    def end_trial(self, rid: str, ok: bool, stopped_early: bool, validated: int) -> None:
        self.client.set_tag(rid, "stopped_early", str(stopped_early).lower())
        self.client.log_metric(rid, "validated_epochs", validated)
        self.client.set_terminated(rid, "FINISHED" if ok else "FAILED")

    def close(self, best: dict | None, epochs_spent: int, override: str | None, ok: bool) -> None:
        if best:
            log_finite(self.client, self.parent, {"best_val_bone_dice": best["val_bone_dice"]})
            self.client.set_tag(self.parent, "best_trial", best["trial_id"])
            for key, value in best["setting"].items():
                self.client.set_tag(self.parent, f"best.{key}", str(value))
        self.client.log_metric(self.parent, "trial_epochs", epochs_spent)
        if override:
            self.client.set_tag(self.parent, "override_file", override)
        self.client.set_terminated(self.parent, "FINISHED" if ok else "FAILED")
