"""`boneseg tune`: hyperparameter search on Ray Tune over the experiment's `search` space.

Each trial is one sampled setting, trained on the inner folds `tune.folds` side by side
(`core.engine.search`); its objective after each validated epoch is their mean validation
bone Dice. Random search (seeded) or Optuna's TPE (`tune.algorithm`) samples
`tune.num_samples` settings; ASHA (`tune.scheduler`) stops poor ones at rungs of validated
epochs. The driver is the one MLflow writer (`tracking.search_runs`: a parent, one child
per trial). A killed driver is resumed by the same command, as the sweep is (the search's
fingerprint finds its experiment in `sweep.storage_path`); a failed trial starts afresh.
The best setting comes back as a dict for `stages.tune` to write as an override file.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time

from ray import tune

from boneseg.core.config import Config
from boneseg.core.engine.search import validated_epochs
from boneseg.errors import BonesegError, ConfigError
from boneseg.sweep.driver import absolute_config, preflight, trial_threads
from boneseg.sweep.session import on_ray
from boneseg.sweep.storage import Storage

METRIC, TIME_ATTR = "val_bone_dice", "validated_epochs"


def log(msg: str) -> None:
    print(f"tune: {msg}", flush=True)


def trainable(config: dict) -> None:
    """Ray Tune function trainable: one setting on the inner folds, a report per validated epoch."""
    from boneseg.core.engine.search import InnerFolds, apply_setting
    from boneseg.core.networks.runtime import deterministic

    cfg = apply_setting(Config.model_validate(config["cfg"]), config["setting"])
    with deterministic():
        folds = InnerFolds(cfg, config["variant"], list(config["folds"]))
        n = 0
        for epoch in range(cfg.train.epochs):
            result = folds.epoch(epoch)
            if result is not None:
                n += 1
                tune.report({**result, TIME_ATTR: n, "epochs_trained": epoch + 1})


def domain(spec):
    """A checked SpaceSpec -> Ray Tune's sampling domain."""
    if spec.uniform is not None:
        return tune.uniform(*spec.uniform)
    if spec.loguniform is not None:
        return tune.loguniform(*spec.loguniform)
    if spec.randint is not None:
        return tune.randint(spec.randint[0], spec.randint[1] + 1)  # both ends included
    return tune.choice(spec.choice)


def search_fingerprint(cfg: Config, variant: str) -> str:
    """What a resumable search must match: every setting the trials read, the space, the search."""
    keep = cfg.model_dump(mode="json", exclude={
        "sweep": {"storage_path", "storage_outage_s", "log_model", "model_dir", "trials_dir", "curves_file",
                  "dashboard"},
        "tune": {"overrides_dir"}, "tracking": True, "report": True, "infer": True, "experiment": True})
    return hashlib.sha256(json.dumps([keep, variant], sort_keys=True, default=str).encode()).hexdigest()[:12]


class SearchTracker(tune.Callback):
    """The driver's callback: one child run per trial, a line per trial event."""

    def __init__(self, cfg_dict: dict, name: str, parent: str, max_t: int):
        self.args, self.max_t = (cfg_dict, name, parent), max_t
        self._runs = None

    def __getstate__(self):
        return {**self.__dict__, "_runs": None}

    @property
    def runs(self):
        if self._runs is None:
            from boneseg.tracking.search_runs import SearchRuns

            self._runs = SearchRuns(Config.model_validate(self.args[0]), self.args[1], self.args[2])
        return self._runs

    def on_trial_start(self, iteration, trials, trial, **info):
        self.runs.trial_run(trial.trial_id, trial.config["setting"])
        log(f"trial {trial.trial_id} started: {_setting_text(trial.config['setting'])}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rid = self.runs.trial_run(trial.trial_id, trial.config["setting"])
        self.runs.log_result(rid, int(result[TIME_ATTR]), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        n = int((trial.last_result or {}).get(TIME_ATTR, 0))
        early = n < self.max_t
        self.runs.end_trial(self.runs.trial_run(trial.trial_id, trial.config["setting"]), True, early, n)
        dice = (trial.last_result or {}).get(METRIC, float("nan"))
        log(f"trial {trial.trial_id} {'stopped by ASHA' if early else 'finished'} after {n} validated "
            f"epoch(s): mean validation bone Dice {dice:.4f}")

    def on_trial_error(self, iteration, trials, trial, **info):
        n = int((trial.last_result or {}).get(TIME_ATTR, 0))
        self.runs.end_trial(self.runs.trial_run(trial.trial_id, trial.config["setting"]), False, False, n)
        where = getattr(trial, "local_path", None) or getattr(trial, "path", "")
        log(f"trial {trial.trial_id} failed (its error: {where}/error.txt)")


def _setting_text(setting: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items())


def _algorithm(cfg: Config):
    t = cfg.tune
    if t.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=t.seed)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=t.seed)


def _scheduler(cfg: Config):
    if cfg.tune.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr=TIME_ATTR, max_t=validated_epochs(cfg), grace_period=cfg.tune.grace_epochs,
                         reduction_factor=cfg.tune.reduction_factor)


def check_search(cfg: Config) -> tuple[str, list[int]]:
    """(variant, folds) of the search, or a ConfigError naming the key to fix."""
    from boneseg.core.layout import load_splits

    if not cfg.search:
        raise ConfigError("search: nothing to search. Add settings to an experiment file, e.g. "
                          "`search: {train.lr: {loguniform: [1e-4, 1e-2]}}` (docs/tune.md).")
    n = len(load_splits(cfg.data.splits_file)["folds"])
    bad = [f for f in cfg.tune.folds if not 0 <= f < n]
    if bad:
        raise ConfigError(f"tune.folds: {bad} not in {cfg.data.splits_file} (folds 0..{n - 1}).")
    if cfg.tune.grace_epochs > validated_epochs(cfg):
        raise ConfigError(f"tune.grace_epochs: {cfg.tune.grace_epochs} is more than the "
                          f"{validated_epochs(cfg)} validated epochs of train.epochs / train.val_every.")
    return cfg.tune.variant or cfg.sweep.variants[0], list(cfg.tune.folds)


def run_search(cfg: Config, address: str | None = None, mode: str = "auto", finish=None) -> dict:
    """Run (or resume) the search; returns {"name", "best", "trial_epochs", "trials", ...}.
    `finish(result) -> str`: writes the best setting out (the override file's path), before
    the MLflow parent closes with it."""
    variant, folds = check_search(cfg)
    cfg = absolute_config(cfg)
    problems = preflight(cfg, [variant])
    if problems:
        raise ConfigError("pre-flight checks failed, no trial was started:\n  " + "\n  ".join(problems))
    storage = Storage(cfg.sweep.storage_path, cfg.sweep.storage_outage_s)
    fingerprint = search_fingerprint(cfg, variant)
    name = None if mode == "restart" else storage.find_unfinished(fingerprint)
    if mode == "resume" and name is None:
        raise ConfigError(f"--resume: no unfinished search with these settings under {storage.where}.")
    cfg = trial_threads(cfg)
    return on_ray(cfg, address, storage,
                  lambda: _run(cfg, variant, folds, storage, fingerprint, name, finish))


def _run(cfg: Config, variant: str, folds: list[int], storage: Storage, fingerprint: str, name: str | None,
         finish):
    from boneseg.tracking.search_runs import SearchRuns

    trainable_ = tune.with_resources(trainable, {"cpu": cfg.sweep.cpus_per_trial,
                                                 "gpu": cfg.sweep.gpus_per_trial})
    restoring = name is not None and tune.Tuner.can_restore(storage.experiment(name))
    space = {"cfg": cfg.model_dump(mode="json"), "variant": variant, "folds": folds,
             "setting": {k: domain(s) for k, s in cfg.search.items()}}
    max_t = validated_epochs(cfg)
    if restoring:
        runs = SearchRuns(cfg, name, storage.read_state(name)["parent_run_id"])
        log(f"resuming {name}")
        tuner = tune.Tuner.restore(storage.experiment(name), trainable_, resume_errored=True,
                                   param_space=space)
    else:
        name = f"search-{time.strftime('%Y%m%d-%H%M%S')}-{fingerprint[:6]}"
        runs = SearchRuns(cfg, name, tags={"variant": variant, "folds": ",".join(map(str, folds)),
                                           "fingerprint": fingerprint, "search_algorithm": cfg.tune.algorithm,
                                           "scheduler": cfg.tune.scheduler})
        t = cfg.tune
        log(f"{name}: {t.num_samples} settings of {', '.join(cfg.search)} ({t.algorithm} search, scheduler "
            f"{t.scheduler}), variant {variant} on folds {folds}, up to {max_t} validated epoch(s) each; "
            f"MLflow parent {runs.parent}")
        tuner = tune.Tuner(
            trainable_, param_space=space,
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=_algorithm(cfg),
                                        scheduler=_scheduler(cfg), num_samples=t.num_samples,
                                        max_concurrent_trials=t.max_concurrent_trials,
                                        reuse_actors=cfg.sweep.reuse_actors),
            run_config=tune.RunConfig(name=name, storage_path=storage.uri, verbose=0,
                                      callbacks=[SearchTracker(cfg.model_dump(mode="json"), name, runs.parent,
                                                               max_t)],
                                      failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures)))
    storage.write_state(name, {"fingerprint": fingerprint, "parent_run_id": runs.parent, "status": "running",
                               "kind": "search"})
    try:
        grid = tuner.fit()
    except BaseException:
        runs.close(None, 0, None, ok=False)
        raise
    trials = []
    for r in grid:
        m = r.metrics or {}
        trials.append({"trial_id": m.get("trial_id", ""), "setting": r.config["setting"],
                       "val_bone_dice": m.get(METRIC, float("nan")),
                       "validated_epochs": int(m.get(TIME_ATTR, 0)),
                       "epochs_trained": int(m.get("epochs_trained", 0)), "error": bool(r.error)})
    done = [t for t in trials if not t["error"] and t["val_bone_dice"] == t["val_bone_dice"]]
    # the best setting among those that ran every validated epoch (an early-stopped trial's
    # last score is from fewer epochs), else among all that reported
    full = [t for t in done if t["validated_epochs"] == max_t] or done
    best = max(full, key=lambda t: t["val_bone_dice"]) if full else None
    spent = sum(t["epochs_trained"] for t in trials)
    out = {"name": name, "parent_run_id": runs.parent, "best": best, "trial_epochs": spent, "trials": trials,
           "variant": variant, "folds": folds, "max_t": max_t, "override": None}
    if best is not None and finish is not None:
        out["override"] = finish(out)
    runs.close(best, spent, out["override"], ok=best is not None)
    storage.write_state(name, {"fingerprint": fingerprint, "parent_run_id": runs.parent, "kind": "search",
                               "status": "finished" if best is not None else "failed"})
    if best is None:
        raise BonesegError(f"{name}: no trial reported a score ({sum(t['error'] for t in trials)} failed). "
                           "Fix the cause and run the same command again.")
    print(f"boneseg tune: {len(trials)} trials, {spent} trial-epochs", file=sys.stderr)
    return out
