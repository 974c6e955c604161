"""The MLflow tree of one sweep: parent -> one run per variant -> one run per fold.

Only the sweep's driver writes (one writer: no "database is locked" with sqlite,
whatever the number of parallel trials), through `RetryingClient`: a server that is
down or restarting is waited for, and nothing is lost or written twice. Runs are found
again by tags, so a restarted driver or a retried trial continues the same runs instead
of duplicating them. Every score logged here was computed by `core.evaluation.metrics` from the
trials' results.
"""
from __future__ import annotations

import json
from pathlib import Path

from boneseg.core.config import VARIANTS, Config
from boneseg.tracking.registry import CHALLENGER, CHAMPION, gate, register_model
from boneseg.tracking.retry import RetryingClient
from boneseg.tracking.runs import (
    FOLD_METRICS,
    VARIANT_METRICS,
    client_for,
    dvc_hashes,
    experiment_id,
    git_tags,
    log_epoch,
    log_finite,
    log_resources,
    log_trial_start,
    tracking_uri,
)


class SweepRuns:
    def __init__(
        self, cfg: Config, sweep_name: str, parent_run_id: str | None = None, tags: dict | None = None
    ):
        # every write waits out a server outage of up to tracking.outage_s (tracking/retry.py)
        self.client = RetryingClient(client_for(cfg), cfg.tracking.outage_s, tracking_uri(cfg))
        self.exp_id = experiment_id(self.client, cfg.tracking.experiment)
        self.cfg = cfg
        if parent_run_id is None:
            all_tags = {
                "mlflow.runName": sweep_name,
                "kind": "sweep",
                **git_tags(),
                **dvc_hashes(),
                **(tags or {}),
            }
            parent_run_id = self.client.create_run(
                self.exp_id, tags=all_tags, run_name=sweep_name
            ).info.run_id
        else:
            self.client.update_run(parent_run_id, status="RUNNING")
        self.parent = parent_run_id
        self.logged_epoch: dict[str, int] = {}
        self._ids: dict[tuple, str] = {}

    def _find(self, **tags) -> str | None:
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in {"sweep_id": self.parent, **tags}.items())
        runs = self.client.search_runs([self.exp_id], flt, max_results=2)
        return runs[0].info.run_id if runs else None

    def variant_run(self, variant: str) -> str:
        if (variant,) not in self._ids:
            rid = self._find(level="variant", variant=variant)
            if rid is None:
                classes, init = VARIANTS[variant].classes, VARIANTS[variant].init
                rid = self.client.create_run(self.exp_id, run_name=variant, tags={
                    "mlflow.parentRunId": self.parent, "sweep_id": self.parent, "level": "variant",
                    "variant": variant, "classes": classes, "init": init}).info.run_id
                # params too: the runs table shows params as columns beside the scores
                for k, v in {"variant": variant, "classes": classes, "init": init}.items():
                    self.client.log_param(rid, k, v)
            self._ids[(variant,)] = rid
        return self._ids[(variant,)]

    def fold_run(self, variant: str, fold: int, reopen: bool = False) -> str:
        """The fold's run id (looked up once); `reopen`: a (re)started trial marks it RUNNING
        and continues after the last epoch it logged."""
        key = (variant, fold)
        if key not in self._ids:
            rid = self._find(level="fold", variant=variant, fold=str(fold))
            if rid is None:
                rid = self.client.create_run(self.exp_id, run_name=f"{variant}/fold{fold}", tags={
                    "mlflow.parentRunId": self.variant_run(variant), "sweep_id": self.parent, "level": "fold",
                    "variant": variant, "fold": str(fold), **git_tags()}).info.run_id
                self.logged_epoch[rid] = -1
            self._ids[key] = rid
        rid = self._ids[key]
        if reopen and rid not in self.logged_epoch:
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

    def finish_fold(self, rid: str, summary: dict, node_id: str | None, resumed_from_epoch: int) -> None:
        if node_id:
            self.client.set_tag(rid, "ray_node_id", node_id)
        self.client.set_tag(rid, "resumed_from_epoch", str(resumed_from_epoch))
        values = {"bone_dice": summary["bone_dice"], "test_bone_dice": summary["test"]["bone_dice"],
                  **{k: summary["mean"][k] for k in FOLD_METRICS if k in summary["mean"]}}
        log_finite(self.client, rid, values)
        log_resources(self.client, rid, summary.get("resources"))
        self.client.log_text(rid, json.dumps(summary, indent=1, default=float) + "\n", "summary.json")
        self.client.set_terminated(rid, "FINISHED")

    def log_model(self, variant: str, fold: int, model_dir: str) -> None:
        path = Path(model_dir) / "model.pt"
        if self.cfg.sweep.log_model and path.is_file():
            self.client.log_artifact(self.fold_run(variant, fold), str(path), "model")

    def fail_fold(self, variant: str, fold: int) -> None:
        self.client.set_terminated(self.fold_run(variant, fold), "FAILED")

    def close_variant(self, variant: str, scores: dict) -> None:
        rid = self.variant_run(variant)
        log_finite(self.client, rid, {k: scores[k] for k in VARIANT_METRICS})
        self.client.set_terminated(rid, "FINISHED")

    def register(self, name: str, model_dir: Path, manifest: dict, say=print) -> str:
        """A new version of `name`, through the promotion gate (`registry.gate`): it becomes
        models:/NAME@champion only if it beats the champion on the same splits."""
        uri = register_model(self.client, name, self.variant_run(manifest["variant"]), model_dir, manifest)
        self.client.set_tag(self.parent, "registered_model", uri)
        self.client.set_tag(self.variant_run(manifest["variant"]), "registered_model", uri)
        promoted, why = gate(self.client, name, uri.rsplit("/", 1)[1])
        say(f"{uri} is models:/{name}@{CHAMPION if promoted else CHALLENGER}: {why}")
        return uri

    def close(self, table: dict, best: str | None, ok: bool) -> None:
        """The parent: the variants' scores as a table artifact and metrics, the best variant."""
        if table:
            head = ["variant", *VARIANT_METRICS]
            rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
            csv = [",".join(head)]
            for variant, s in table.items():
                vals = [s[k] for k in VARIANT_METRICS]
                rows.append(f"| {variant} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
                csv.append(variant + "," + ",".join(f"{v:.6f}" for v in vals))
            self.client.log_text(self.parent, "\n".join(rows) + "\n", "variants.md")
            self.client.log_text(self.parent, "\n".join(csv) + "\n", "variants.csv")
            self.client.set_tag(self.parent, "best_variant", best)
            self.client.log_metric(self.parent, "best_bone_dice_mean", table[best]["bone_dice_mean"])
            for variant, s in table.items():
                self.client.log_metric(self.parent, f"{variant}.bone_dice_mean", s["bone_dice_mean"])
        self.client.set_terminated(self.parent, "FINISHED" if ok else "FAILED")

    def set_progress(self, summary: str, done: int) -> None:
        """Where the sweep stands, on the parent run: the `progress` tag (shown in the runs
        table and the run page) and the `trials_done` metric."""
        self.client.set_tag(self.parent, "progress", summary)
        self.client.log_metric(self.parent, "trials_done", done, step=done)

    def log_data_input(self, slices_dir: str, digest: str) -> None:
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # "can be interpreted in multiple ways": all mean a local folder
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(slices_dir))
        ds = MetaDataset(source, name="slices", digest=digest[:36] or None)
        self.client.log_inputs(
            self.parent,
            datasets=[DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])],
        )


def log_report(cfg: Config, run_id: str | None, folder: Path) -> str | None:
    """The report folder as artifacts of the sweep's parent run, if this store has it."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException

    client = client_for(cfg)
    try:
        client.get_run(run_id)
    except MlflowException:
        return None
    client.log_artifacts(run_id, str(folder), "report")
    return run_id
