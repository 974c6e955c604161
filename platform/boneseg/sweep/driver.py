"""The sweep's driver: the variants x folds grid on Ray Tune, pre-flight checks, run or
resume, then the results (`sweep.results`) back into DVC and MLflow.

A trial that fails is retried from its last validated epoch (FailureConfig; the trial's
resume point, see sweep.trial); a killed driver is resumed by running the same command
(the grid's fingerprint finds its experiment).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from boneseg.core.config import ENCODER_WEIGHT_NAMES, VARIANTS, Config
from boneseg.core.evaluation.metrics import best_variant
from boneseg.core.layout import load_index, load_splits
from boneseg.errors import BonesegError, ConfigError
from boneseg.sweep.results import TrialOutcome, collect, export, write_curves, write_results
from boneseg.sweep.session import on_ray
from boneseg.sweep.storage import Storage
from boneseg.sweep.tracker import Tracker, log


def absolute_config(cfg: Config) -> Config:
    """Paths made absolute, so trials read the same files whatever their working directory."""
    d = cfg.model_dump()
    for k in ("raw_dir", "labels_dir", "corrections_dir", "splits_file", "slices_dir"):
        d["data"][k] = str(Path(d["data"][k]).resolve())
    d["model"]["thigh_weights"] = str(Path(d["model"]["thigh_weights"]).resolve())
    w = d["model"]["encoder_weights"]
    if w not in ENCODER_WEIGHT_NAMES:
        d["model"]["encoder_weights"] = str(Path(w).resolve())
    return Config.model_validate(d)


def grid(cfg: Config) -> tuple[list[str], list[int]]:
    n = len(load_splits(cfg.data.splits_file)["folds"])
    folds = cfg.sweep.folds if cfg.sweep.folds is not None else list(range(n))
    bad = [f for f in folds if not 0 <= f < n]
    if bad:
        raise ConfigError(f"sweep.folds: {bad} not in {cfg.data.splits_file} (folds 0..{n - 1}).")
    return list(cfg.sweep.variants), list(folds)


def preflight(cfg: Config, variants: list[str]) -> list[str]:
    """Everything that would make all trials fail, as one line each (before any trial starts)."""
    from boneseg.core.networks.models import build_model
    from boneseg.tracking.runs import unreachable

    problems = []
    try:
        index = load_index(cfg.data.slices_dir)
        if index["image_size"] != cfg.data.image_size:
            problems.append(f"data: slices are {index['image_size']}px but data.image_size is "
                            f"{cfg.data.image_size}; run `dvc repro slices`.")
    except BonesegError as exc:
        problems.append(f"data: {exc}")
    if any(VARIANTS[v].pretrained for v in variants):
        try:
            build_model(2, cfg.model.encoder_weights, cfg.model.thigh_weights)
        except BonesegError as exc:
            problems.append(f"encoder weights: {exc}")
    why = unreachable(cfg)
    if why:
        problems.append(f"MLflow: {why}")
    why = Storage(cfg.sweep.storage_path).problem()
    if why:
        problems.append(why)
    return problems


def grid_fingerprint(cfg: Config, variants, folds) -> str:
    """What a resumable experiment must match: every setting the trials read, and the grid."""
    keep = cfg.model_dump(exclude={"sweep": {"storage_path", "storage_outage_s", "log_model", "model_dir",
                                             "trials_dir", "curves_file", "dashboard"},
                                   "tracking": True, "report": True, "infer": True})
    return hashlib.sha256(
        json.dumps([keep, variants, folds], sort_keys=True, default=str).encode()
    ).hexdigest()[:12]


def run_sweep(cfg: Config, address: str | None = None, mode: str = "auto") -> dict:
    """Run (or resume) the grid; returns {variant: scores}. mode: auto | resume | restart."""
    cfg = absolute_config(cfg)
    variants, folds = grid(cfg)
    problems = preflight(cfg, variants)
    if problems:
        raise ConfigError("pre-flight checks failed, no trial was started:\n  " + "\n  ".join(problems))
    storage = Storage(cfg.sweep.storage_path, cfg.sweep.storage_outage_s)
    fingerprint = grid_fingerprint(cfg, variants, folds)
    exp_name = None if mode == "restart" else storage.find_unfinished(fingerprint)
    if mode == "resume" and exp_name is None:
        raise ConfigError(f"--resume: no unfinished sweep with these settings under {storage.where}.")
    cfg = trial_threads(cfg)
    return on_ray(cfg, address, storage, lambda: _run(cfg, variants, folds, storage, fingerprint, exp_name))


def trial_threads(cfg: Config) -> Config:
    """Each trial's torch threads: its CPU share (sweep.cpus_per_trial, at least 1)."""
    threads = max(1, int(cfg.sweep.cpus_per_trial))
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": threads})})


def _tuner(cfg: Config, variants, folds, storage: Storage, fingerprint: str, exp_name: str | None):
    """(Tuner, SweepRuns, experiment name): a restored experiment, or a new one."""
    from ray import tune

    from boneseg.tracking.sweep_runs import SweepRuns

    trainable = tune.with_resources(
        _trainable(), {"cpu": cfg.sweep.cpus_per_trial, "gpu": cfg.sweep.gpus_per_trial}
    )
    restoring = exp_name is not None and tune.Tuner.can_restore(storage.experiment(exp_name))
    if not restoring:
        exp_name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{fingerprint[:6]}"
    space = {"cfg": cfg.model_dump(mode="json"), "variant": tune.grid_search(variants),
             "fold": tune.grid_search(folds), "storage": storage.uri, "experiment": exp_name}
    if restoring:
        state = storage.read_state(exp_name)
        runs = SweepRuns(cfg, exp_name, state["parent_run_id"])
        done, resuming = storage.progress(exp_name)
        total = len(variants) * len(folds)
        log(f"resuming {exp_name}: {done} of {total} trials finished and kept; {resuming} continue from "
            f"their last validated epoch, {total - done - resuming} start afresh")
        tuner = tune.Tuner.restore(storage.experiment(exp_name), trainable, resume_errored=True,
                                   param_space=space)
        return tuner, runs, exp_name
    name = exp_name
    where = f"{storage.where.rstrip('/')}/{name}"  # neither the endpoint nor credentials are part of the tag
    runs = SweepRuns(cfg, name, tags={"ray_storage_path": where, "fingerprint": fingerprint})
    _write_state(storage, name, fingerprint, runs.parent, "running")
    runs.log_data_input(cfg.data.slices_dir, _slices_digest())
    log(f"{name}: {len(variants)} variants x {len(folds)} folds = {len(variants) * len(folds)} trials, "
        f"{cfg.sweep.cpus_per_trial} CPU / {cfg.sweep.gpus_per_trial} GPU each; MLflow parent {runs.parent}")
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=cfg.sweep.reuse_actors),
        run_config=tune.RunConfig(
            name=name, storage_path=storage.uri, verbose=0,
            callbacks=[Tracker(cfg.model_dump(mode="json"), name, runs.parent,
                               [(v, f) for v in variants for f in folds], _slots(cfg))],
            failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures),
            # one checkpoint per trial, its final result (the resume points are the trial's own,
            # see sweep.storage); Tune deletes none, so no saved state can name a deleted one
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    return tuner, runs, name


def _slots(cfg: Config) -> int:
    """How many trials the cluster runs at once: its CPUs (and GPUs) over one trial's share."""
    import ray

    have = ray.cluster_resources()
    n = int(have.get("CPU", 1) // cfg.sweep.cpus_per_trial)
    if cfg.sweep.gpus_per_trial:
        n = min(n, int(have.get("GPU", 0) // cfg.sweep.gpus_per_trial))
    return max(n, 1)


def _trainable():
    from boneseg.sweep.trial import trainable

    return trainable


def _run(cfg: Config, variants, folds, storage: Storage, fingerprint: str, exp_name: str | None) -> dict:
    tuner, runs, exp_name = _tuner(cfg, variants, folds, storage, fingerprint, exp_name)
    try:
        grid_result = tuner.fit()
    except BaseException as exc:  # Ctrl-C, a lost cluster: the parent ends FAILED (the same command resumes)
        from boneseg.tracking.retry import outage_message

        outage = outage_message(exc)
        if outage:  # the server is gone: closing the parent would only wait again
            raise BonesegError(outage) from None
        runs.close({}, None, ok=False)
        raise
    t_end = time.perf_counter()
    from boneseg.sweep.trial import reap_scratch, scratch_root

    reap_scratch(scratch_root())  # killed trials' scratch on this host (a retry may have started too early)
    with tempfile.TemporaryDirectory(prefix="boneseg-fetched-") as fetched:  # s3:// checkpoints
        outcomes = outcomes_of(grid_result, Path(fetched))
        table, rows, failed = collect(outcomes, variants, folds)
        write_curves(cfg, outcomes)  # the learning curves, for `dvc plots show`
        for variant, scores in table.items():
            runs.close_variant(variant, scores)
        best = best_variant(table) if table else None  # one choice for metrics.json, results/model, MLflow
        registered = None
        if table and not failed:
            register = (lambda d, m: runs.register(cfg.tracking.registered_model, d, m,
                                                   say=lambda line: log(f"registry: {line}"))) \
                if cfg.tracking.registered_model else None
            registered = export(
                cfg, outcomes, table, best, {"name": exp_name, "run_id": runs.parent}, register,
                say=lambda line: log(f"export: {line}")
            )
    runs.close(table, best, ok=not failed)
    write_results(cfg, table, rows, best)
    if registered:
        log(f"best variant {best}: fold models in {cfg.sweep.model_dir}"
            + (f", registered as {registered}" if registered != "-" else ""))
    _write_state(storage, exp_name, fingerprint, runs.parent, "finished" if not failed else "failed")
    print(f"boneseg sweep: trials finished; results and MLflow closed in {time.perf_counter() - t_end:.1f} s",
          file=sys.stderr)
    if failed:
        raise BonesegError(f"{len(failed)} trial(s) failed after {cfg.sweep.max_failures} retries: "
                           f"{', '.join(failed)}. Fix the cause and run the same command again to resume.")
    return table


def outcomes_of(grid_result, fetched: Path) -> list[TrialOutcome]:
    """Tune's results -> one TrialOutcome per trial (the final summary decoded once).
    A checkpoint in object storage is fetched into `fetched` (the caller removes it)."""
    out = []
    for r in grid_result:
        m = r.metrics or {}
        variant, fold = r.config["variant"], int(r.config["fold"])
        if r.error or not m.get("final"):
            out.append(TrialOutcome(variant, fold, None))
            continue
        ckpt = r.checkpoint
        local = Path(ckpt.path) if ckpt is not None and os.path.isdir(ckpt.path) else \
            Path(ckpt.to_directory(str(fetched / f"{variant}-fold{fold}"))) if ckpt is not None else None
        out.append(TrialOutcome(variant, fold, json.loads(m["summary"]), local))
    return out


def _write_state(storage: Storage, name: str, fingerprint: str, parent: str, status: str) -> None:
    storage.write_state(name, {"fingerprint": fingerprint, "parent_run_id": parent, "status": status})


def _slices_digest() -> str:
    from boneseg.tracking.runs import dvc_hashes

    return dvc_hashes().get("dvc.slices", "")
