"""`boneseg sweep`: Ray Tune runs the cases x folds grid; MLflow records it; the final
scores flow back into DVC (results/metrics.json, results/folds.csv).

Ray lives here and MLflow in boneseg.tracking; the trainable is a thin adapter around
the same `fit()` that `boneseg train` uses. One writer: trials only `tune.report`; the
driver's callback writes every MLflow run. A trial that fails is retried from its last
checkpoint (FailureConfig); a killed driver is resumed by running the same command.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from boneseg.config import CASES, Config
from boneseg.errors import BonesegError, ConfigError
from boneseg.metrics import best_case
from boneseg.nifti import LABEL_IDS, atomic_dir, atomic_write_text

# read by Ray when the driver starts it: Tune warns on every checkpoint of short trials
# (one per epoch is what we want), and only the legacy reporter honours verbose=0 (no
# boxed tables; our callback prints one line per event)
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

STATE_FILE = "boneseg_sweep.json"
MODEL_MANIFEST = "boneseg.json"
FAULT_ENV = "BONESEG_INJECT_FAULT"  # tests only: "raise|sigkill:<case>:<fold>:<epoch>:<marker file>"


# ---------------------------------------------------------------- the trainable (runs on Ray workers)
class _TuneReporter:
    """fit() callback: every epoch's metrics + full-state checkpoint go to `tune.report`."""

    def __init__(self, work: Path, case: str, fold: int):
        import ray

        self.work, self.case, self.fold = work, case, fold
        self.node = ray.get_runtime_context().get_node_id()
        self.fault = _parse_fault(os.environ.get(FAULT_ENV, ""), case, fold)
        self.meta: dict = {}

    def on_start(self, info):
        self.meta = {"weights_source": info["weights"].get("source", "none"), "device": info["device"],
                     "amp": info["amp"]}

    def on_epoch(self, epoch, metrics, ckpt_path):
        from ray import tune

        d = self.work / f"report_{epoch}"
        d.mkdir(parents=True, exist_ok=True)
        try:  # a hard link, not a copy: Tune copies it into storage anyway
            os.link(ckpt_path, d / "checkpoint.pt")
        except OSError:
            shutil.copy2(ckpt_path, d / "checkpoint.pt")
        tune.report({**metrics, **self.meta, "case": self.case, "fold": self.fold, "node_id": self.node},
                    checkpoint=tune.Checkpoint.from_directory(str(d)))
        shutil.rmtree(d, ignore_errors=True)
        self._maybe_fail(epoch)

    def _maybe_fail(self, epoch):
        if not self.fault or self.fault["epoch"] != epoch or Path(self.fault["marker"]).exists():
            return
        Path(self.fault["marker"]).write_text(self.fault["kind"])  # fail once only
        if self.fault["kind"] == "raise":
            raise RuntimeError(f"injected fault after epoch {epoch}")
        # SIGKILL mid-way through the next epoch, as an OOM killer or a lost node would
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()


def _parse_fault(spec: str, case: str, fold: int) -> dict | None:
    if not spec:
        return None
    kind, fcase, ffold, epoch, marker = spec.split(":", 4)
    if fcase != case or int(ffold) != fold:
        return None
    return {"kind": kind, "epoch": int(epoch), "marker": marker}


def trainable(config: dict) -> None:
    """Ray Tune function trainable: restore the checkpoint, run fit(), report the result."""
    import ray
    from ray import tune

    from boneseg.train import fit

    cfg = Config.model_validate(config["cfg"])
    case, fold = config["case"], config["fold"]
    work = Path(tune.get_context().get_trial_dir()) / "work"
    work.mkdir(parents=True, exist_ok=True)
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # retried or restored trial: continue from the last epoch
        with ckpt.as_directory() as d:
            if (Path(d) / "final.json").is_file():
                # finished before the driver died: report the same result again, train nothing
                tune.report(json.loads((Path(d) / "final.json").read_text()), checkpoint=ckpt)
                return
            if (Path(d) / "checkpoint.pt").is_file():
                shutil.copy2(Path(d) / "checkpoint.pt", work / "checkpoint.pt")
    r = fit(cfg, case, fold, out_dir=work, callbacks=[_TuneReporter(work, case, fold)], resume=True)
    summary = json.loads(Path(r.summary_path).read_text())
    final_dir = work / "final"
    final_dir.mkdir(exist_ok=True)
    os.replace(work / "model.pt", final_dir / "model.pt")
    shutil.copy2(work / "history.json", final_dir / "history.json")
    (work / "checkpoint.pt").unlink(missing_ok=True)  # the trial is done: keep the final model only
    mean = summary["mean"]
    final = {"final": True, "case": case, "fold": fold, "bone_dice": r.bone_dice,
             "test_bone_dice": r.test_bone_dice, "bone_dice_pooled": mean["bone_dice_pooled"],
             **{k: mean[k] for k in ("bone_tp", "bone_fp", "bone_fn")}, "summary": json.dumps(summary, default=float),
             "node_id": ray.get_runtime_context().get_node_id(), "resumed_from_epoch": r.resumed_from_epoch}
    (final_dir / "final.json").write_text(json.dumps(final))
    tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(final_dir)))
    # persisted to storage_path by now; the local copy sits in Ray's session folder
    # (/tmp/ray/session_*/artifacts), which Ray never cleans: ~100 MB per trial otherwise
    shutil.rmtree(final_dir, ignore_errors=True)


# ---------------------------------------------------------------- driver-side callback
def _log(msg: str) -> None:
    print(f"sweep: {msg}", flush=True)


def _make_tracker(cfg_dict: dict, sweep_name: str, parent_run_id: str, n_folds: dict):
    from ray import tune

    class Tracker(tune.Callback):
        """The one MLflow writer: per-epoch metrics, final scores, case scores, progress lines.
        Picklable (Tune saves it with the experiment): MLflow state is rebuilt on first use,
        so a restored driver continues the same parent run."""

        def __init__(self):
            self.args = (cfg_dict, sweep_name, parent_run_id, n_folds)
            self._runs = None
            self._rid: dict[tuple, str] = {}  # (case, fold) -> fold run id
            self._started: set[str] = set()  # fold runs whose params are logged

        def __getstate__(self):
            return {"args": self.args, "_runs": None, "_rid": {}, "_started": set()}

        def _fold_run(self, case, fold):
            if (case, fold) not in self._rid:
                self._rid[case, fold] = self.runs.fold_run(case, fold)
            return self._rid[case, fold]

        @property
        def runs(self):
            if self._runs is None:
                from boneseg.tracking import SweepRuns

                self._runs = SweepRuns(Config.model_validate(self.args[0]), self.args[1], self.args[2])
            return self._runs

        def on_trial_start(self, iteration, trials, trial, **info):
            case, fold = trial.config["case"], trial.config["fold"]
            self._rid[case, fold] = self.runs.fold_run(case, fold)  # a retry reopens its run
            _log(f"start   {case}/fold{fold}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            case, fold = trial.config["case"], trial.config["fold"]
            rid = self._fold_run(case, fold)
            if result.get("final"):
                self.runs.finish_fold(rid, result, result["summary"])
                _log(f"done    {case}/fold{fold}: bone Dice {result['bone_dice']:.4f} "
                     f"(test {result['test_bone_dice']:.4f})")
                scores = self.runs.close_case(case, self.args[3][case])
                if scores:
                    _log(f"case    {case}: bone Dice {scores['bone_dice_mean']:.4f} +- {scores['bone_dice_std']:.4f}")
                return
            if rid not in self._started:  # idempotent: a resumed run keeps its logged params
                self._started.add(rid)
                self.runs.start_fold(rid, {"case": case, "fold": fold, "classes": CASES[case][0],
                                           "init": CASES[case][1], "device": result.get("device", "?"),
                                           "amp": result.get("amp", "?"),
                                           "weights": {"source": result.get("weights_source", "?")}})
            self.runs.log_epoch(rid, int(result["epoch"]), result)
            _log(f"epoch   {case}/fold{fold} {int(result['epoch'])}: val_bone_dice {result['val_bone_dice']:.4f}"
                 f"  train_loss {result['train_loss']:.4f}  ({result['images_per_s']:.1f} img/s)")

        def on_trial_complete(self, iteration, trials, trial, **info):
            # the final checkpoint (model.pt) is registered by now
            d = _checkpoint_dir(trial)
            if d:
                self.runs.log_model(trial.config["case"], trial.config["fold"], d)

        def on_trial_recover(self, iteration, trials, trial, **info):
            _log(f"retry   {trial.config['case']}/fold{trial.config['fold']}: restarting from its last checkpoint")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.runs.fail_fold(trial.config["case"], trial.config["fold"])
            _log(f"FAILED  {trial.config['case']}/fold{trial.config['fold']}")

    return Tracker()


def _checkpoint_dir(trial) -> str | None:
    ckpt = getattr(trial, "checkpoint", None)
    return ckpt.path if ckpt is not None and os.path.isdir(ckpt.path) else None


# ---------------------------------------------------------------- driver
def absolute_config(cfg: Config) -> Config:
    """Paths made absolute, so trials read the same files whatever their working directory."""
    d = cfg.model_dump()
    for k in ("raw_dir", "labels_dir", "corrections_dir", "splits_file", "slices_dir"):
        d["data"][k] = str(Path(d["data"][k]).resolve())
    d["model"]["thigh_weights"] = str(Path(d["model"]["thigh_weights"]).resolve())
    w = d["model"]["encoder_weights"]
    if w not in ("none", "imagenet", "thigh"):
        d["model"]["encoder_weights"] = str(Path(w).resolve())
    return Config.model_validate(d)


def grid(cfg: Config) -> tuple[list[str], list[int]]:
    from boneseg.splits import load_splits

    n = len(load_splits(cfg.data.splits_file)["folds"])
    folds = cfg.sweep.folds if cfg.sweep.folds is not None else list(range(n))
    bad = [f for f in folds if not 0 <= f < n]
    if bad:
        raise ConfigError(f"sweep.folds: {bad} not in {cfg.data.splits_file} (folds 0..{n - 1}).")
    return list(cfg.sweep.cases), list(folds)


def preflight(cfg: Config, cases: list[str]) -> list[str]:
    """Everything that would make all trials fail, as one line each (before any trial starts)."""
    from boneseg.models import build_model
    from boneseg.slices import load_index
    from boneseg.tracking import tracking_uri

    problems = []
    try:
        index = load_index(cfg.data.slices_dir)
        if index["image_size"] != cfg.data.image_size:
            problems.append(f"data: slices are {index['image_size']}px but data.image_size is "
                            f"{cfg.data.image_size}; run `dvc repro slices`.")
    except BonesegError as exc:
        problems.append(f"data: {exc}")
    if any(CASES[c][1] == "pretrained" for c in cases):
        try:
            build_model(2, cfg.model.encoder_weights, cfg.model.thigh_weights)
        except BonesegError as exc:
            problems.append(f"encoder weights: {exc}")
    try:
        import mlflow

        # fail in seconds, not after MLflow's minutes of HTTP retries
        saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
        os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
        try:
            mlflow.MlflowClient(tracking_uri(cfg)).search_experiments(max_results=1)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    except Exception as exc:  # any failure to reach the store
        problems.append(f"MLflow: {tracking_uri(cfg)} not reachable ({type(exc).__name__}: {str(exc)[:200]}). "
                        "Start the server or fix MLFLOW_TRACKING_URI / tracking.uri.")
    return problems


def check_resources(cfg: Config) -> None:
    import ray

    have = ray.cluster_resources()
    need = {"CPU": cfg.sweep.cpus_per_trial, "GPU": cfg.sweep.gpus_per_trial}
    for k, v in need.items():
        if v and have.get(k, 0) < v:
            raise ConfigError(f"sweep: each trial asks for {v} {k} but the Ray cluster has {have.get(k, 0)}. "
                              f"Lower sweep.{'cpus' if k == 'CPU' else 'gpus'}_per_trial or add nodes.")


def fingerprint(cfg: Config, cases, folds) -> str:
    keep = cfg.model_dump(exclude={"sweep": {"storage_path", "log_model", "model_dir", "trials_dir"}, "tracking": True,
                                   "report": True})
    return hashlib.sha256(json.dumps([keep, cases, folds], sort_keys=True, default=str).encode()).hexdigest()[:12]


def find_unfinished(storage: Path, fp: str) -> Path | None:
    if not storage.is_dir():
        return None
    for state in sorted(storage.glob(f"*/{STATE_FILE}"), reverse=True):
        s = json.loads(state.read_text())
        if s.get("fingerprint") == fp and s.get("status") != "finished":
            return state.parent
    return None


def auth_env_for(address: str | None) -> None:
    """Ray 2.59+ protects clusters with a token. A local ray.init() makes and uses one by
    itself; to join a `ray start` cluster the driver needs RAY_AUTH_MODE=token and the
    cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)."""
    if not address or "RAY_AUTH_MODE" in os.environ:
        return
    has_token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or \
        Path("~/.ray/auth_token").expanduser().is_file()
    if has_token:
        os.environ["RAY_AUTH_MODE"] = "token"


def connect(address: str | None) -> None:
    import ray

    auth_env_for(address)
    # keep the driver's output readable: Ray's own logs go to its session folder
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=True,
             logging_level="WARNING")


def run_sweep(cfg: Config, address: str | None = None, mode: str = "auto") -> dict:
    """Run (or resume) the grid; returns {case: scores}. mode: auto | resume | restart."""
    import ray

    cfg = absolute_config(cfg)
    cases, folds = grid(cfg)
    problems = preflight(cfg, cases)
    if problems:
        raise ConfigError("pre-flight checks failed, no trial was started:\n  " + "\n  ".join(problems))
    storage = Path(cfg.sweep.storage_path).resolve()
    fp = fingerprint(cfg, cases, folds)
    exp_dir = None if mode == "restart" else find_unfinished(storage, fp)
    if mode == "resume" and exp_dir is None:
        raise ConfigError(f"--resume: no unfinished sweep with these settings under {storage}.")
    threads = max(1, int(cfg.sweep.cpus_per_trial))
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": threads})})
    connect(address or os.environ.get("RAY_ADDRESS"))
    try:
        check_resources(cfg)
        return _run(cfg, cases, folds, storage, fp, exp_dir)
    finally:
        ray.shutdown()


def _run(cfg: Config, cases, folds, storage: Path, fp: str, exp_dir: Path | None) -> dict:
    from ray import tune

    from boneseg.tracking import SweepRuns

    n_folds = {c: len(folds) for c in cases}
    trainable_r = tune.with_resources(trainable, {"cpu": cfg.sweep.cpus_per_trial, "gpu": cfg.sweep.gpus_per_trial})
    space = {"cfg": cfg.model_dump(mode="json"), "case": tune.grid_search(cases), "fold": tune.grid_search(folds)}
    if exp_dir is not None and tune.Tuner.can_restore(str(exp_dir)):
        state = json.loads((exp_dir / STATE_FILE).read_text())
        runs = SweepRuns(cfg, exp_dir.name, state["parent_run_id"])
        _log(f"resuming {exp_dir.name}: finished trials are kept, unfinished ones continue from checkpoints")
        tuner = tune.Tuner.restore(str(exp_dir), trainable_r, resume_errored=True, param_space=space)
    else:
        name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{fp[:6]}"
        exp_dir = storage / name
        runs = SweepRuns(cfg, name, tags={"ray_storage_path": str(exp_dir), "fingerprint": fp})
        _write_state(exp_dir, fp, runs.parent, "running")
        runs.log_data_input(cfg.data.slices_dir, _slices_digest())
        _log(f"{name}: {len(cases)} cases x {len(folds)} folds = {len(cases) * len(folds)} trials, "
             f"{cfg.sweep.cpus_per_trial} CPU / {cfg.sweep.gpus_per_trial} GPU each; MLflow parent {runs.parent}")
        tracker = _make_tracker(cfg.model_dump(mode="json"), name, runs.parent, n_folds)
        tuner = tune.Tuner(
            trainable_r, param_space=space,
            tune_config=tune.TuneConfig(reuse_actors=cfg.sweep.reuse_actors),
            run_config=tune.RunConfig(
                name=name, storage_path=str(storage), verbose=0, callbacks=[tracker],
                failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    try:
        grid_result = tuner.fit()
    except BaseException:  # Ctrl-C, a lost cluster: the parent ends FAILED (the same command resumes it)
        runs.close({}, ok=False)
        raise
    table, rows, failed = collect(grid_result, runs, cases, n_folds)
    prune(grid_result)
    registered = export(cfg, grid_result, table, runs, exp_dir.name) if table and not failed else None
    runs.close(table, ok=not failed)
    write_results(cfg, table, rows)
    if registered:
        _log(f"best case {best_case(table)}: fold models in "
             f"{cfg.sweep.model_dir}" + (f", registered as {registered}" if registered != "-" else ""))
    _write_state(exp_dir, fp, runs.parent, "finished" if not failed else "failed")
    if failed:
        raise BonesegError(f"{len(failed)} trial(s) failed after {cfg.sweep.max_failures} retries: "
                           f"{', '.join(failed)}. Fix the cause and run the same command again to resume.")
    return table


def _write_state(exp_dir: Path, fp: str, parent: str, status: str) -> None:
    atomic_write_text(exp_dir / STATE_FILE, json.dumps({"fingerprint": fp, "parent_run_id": parent,
                                                        "status": status}) + "\n")


def _slices_digest() -> str:
    from boneseg.tracking import dvc_hashes

    return dvc_hashes().get("dvc.slices", "")


def _finished(r) -> bool:
    """A trial result that ran to its final report (not errored, not cut short)."""
    return not r.error and bool((r.metrics or {}).get("final"))


def collect(grid_result, runs, cases, n_folds) -> tuple[dict, list, list]:
    """Final results of every trial -> per-case scores and per-patient rows."""
    rows, failed = [], []
    for r in grid_result:
        m = r.metrics or {}
        if not _finished(r):
            failed.append(f"{r.config['case']}/fold{r.config['fold']}")
            continue
        s = json.loads(m["summary"])
        for c in s["metric_per_case"]:
            rows.append({"case": m["case"], "fold": m["fold"], "patient": c["case"], "bone_dice": c["bone_dice"]})
    table = {}
    for case in cases:
        scores = runs.close_case(case, n_folds[case])
        if scores:
            table[case] = scores
    return table, sorted(rows, key=lambda x: (x["case"], x["fold"], x["patient"])), failed


def prune(grid_result) -> None:
    """Drop finished trials' full-state checkpoints (~3x the model) from their work folders;
    the final model.pt stays in the Tune checkpoint and the MLflow run."""
    for r in grid_result:
        if not _finished(r) or not r.path or not os.path.isdir(r.path):
            continue
        work = Path(r.path) / "work"
        for p in [work / "checkpoint.pt", *work.glob("report_*"), *work.glob(".checkpoint.pt.*.tmp"),
                  *work.glob("final")]:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _final_dirs(grid_result):
    """(case, fold, summary, local folder with model.pt + history.json) of finished trials."""
    for r in grid_result:
        if not _finished(r) or r.checkpoint is None:
            continue
        with r.checkpoint.as_directory() as d:  # a local path, or a download from remote storage
            yield r.config["case"], int(r.config["fold"]), json.loads(r.metrics["summary"]), Path(d)


def export(cfg: Config, grid_result, table: dict, runs, sweep_name: str) -> str:
    """Per-trial summaries + histories (results/trials, read by `report`), the best case's
    fold models (results/model, `segment --model results/model`), registered in MLflow.
    Returns the registered model URI ("-" when registration is off)."""
    best = best_case(table)
    manifest = {"case": best, "folds": [], "label_ids": {str(k): v for k, v in LABEL_IDS.items()},
                "scores": table[best], "sweep": sweep_name, "sweep_run_id": runs.parent}
    with atomic_dir(cfg.sweep.trials_dir) as trials, atomic_dir(cfg.sweep.model_dir) as models:
        for case, fold, summary, d in _final_dirs(grid_result):
            t = trials / case / f"fold{fold}"
            t.mkdir(parents=True)
            (t / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
            if (d / "history.json").is_file():
                shutil.copy2(d / "history.json", t / "history.json")
            if case == best:
                shutil.copy2(d / "model.pt", models / f"fold{fold}.pt")
                manifest["folds"].append(fold)
                manifest.update(classes=summary["classes"], preprocessing=summary["preprocessing"])
        manifest["folds"].sort()
        uri = "-"
        if cfg.tracking.registered_model:
            (models / MODEL_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
            uri = runs.register_model(cfg.tracking.registered_model, best, models, manifest)
            manifest["registered_model"] = uri
        (models / MODEL_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        (trials / "index.json").write_text(json.dumps({"sweep": sweep_name, "sweep_run_id": runs.parent,
                                                       "best_case": best, "registered_model": uri}, indent=1) + "\n")
    return uri


def write_results(cfg: Config, table: dict, rows: list) -> None:
    metrics = {case: {k: round(v, 6) for k, v in s.items()} for case, s in table.items()}
    if table:
        metrics["best_case"] = best_case(table)
    atomic_write_text(cfg.sweep.metrics_file, json.dumps(metrics, indent=1) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["case", "fold", "patient", "bone_dice"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(cfg.sweep.folds_file, buf.getvalue())


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run the cases x folds grid on Ray Tune, tracked in MLflow")
    p.add_argument("--address", help="an existing Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="require resuming an unfinished sweep")
    g.add_argument("--restart", action="store_true", help="start a new sweep even if one can be resumed")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    t0 = time.perf_counter()
    table = run_sweep(cfg, args.address, "resume" if args.resume else "restart" if args.restart else "auto")
    print(f"\nsweep finished in {(time.perf_counter() - t0) / 60:.1f} min; final bone Dice per case "
          "(mean over folds, the study's score):")
    for case, s in table.items():
        print(f"  {case:<18} {s['bone_dice_mean']:.4f} +- {s['bone_dice_std']:.4f}  pooled {s['bone_dice_pooled']:.4f}"
              f"  test {s['test_bone_dice']:.4f}")
    print(f"  -> {cfg.sweep.metrics_file}, {cfg.sweep.folds_file}")
    return 0
