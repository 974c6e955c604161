"""The driver's Tune callback: the one MLflow writer of a sweep, and its live view.

In a terminal the sweep shows one updating table (rich): trials done / running /
pending, each running trial's epoch and last validation Dice, elapsed time and an ETA
(`sweep.progress`). Elsewhere (CI, `dvc repro > log`) it prints plain lines, at most one
per epoch per trial. The parent MLflow run carries the same status as its `progress` tag.
Picklable (Tune saves it with the experiment): MLflow and view state are rebuilt on
first use, so a restored driver continues the same parent run.
"""
from __future__ import annotations

import json
import sys
import time

from ray import tune

from boneseg.core.config import VARIANTS, Config
from boneseg.sweep.progress import SweepProgress


def log(msg: str) -> None:
    print(f"sweep: {msg}", flush=True)


def _key(trial) -> tuple[str, int]:
    return trial.config["variant"], int(trial.config["fold"])


class Tracker(tune.Callback):
    def __init__(self, cfg_dict: dict, sweep_name: str, parent_run_id: str, grid: list[tuple[str, int]],
                 slots: int, live: bool | None = None):
        self.args = (cfg_dict, sweep_name, parent_run_id)
        self.grid, self.slots = [tuple(k) for k in grid], slots
        self.live = sys.stdout.isatty() if live is None else live
        self._runs = self._progress = self._view = None
        self._started: set[str] = set()  # fold runs whose params are logged
        self._synced = 0.0

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_runs=None, _progress=None, _view=None, _started=set(), _synced=0.0)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.live = sys.stdout.isatty()  # a restored driver may write to another terminal, or none

    @property
    def runs(self):
        if self._runs is None:
            from boneseg.tracking.sweep_runs import SweepRuns

            self._runs = SweepRuns(Config.model_validate(self.args[0]), self.args[1], self.args[2])
        return self._runs

    @property
    def progress(self) -> SweepProgress:
        if self._progress is None:
            self._progress = SweepProgress(self.grid, int(self.args[0]["train"]["epochs"]), self.slots)
        return self._progress

    # ------------------------------------------------------------ the view
    def _show(self, text: str | None = None) -> None:
        """Live table in a terminal; else the plain line `text` (one per event)."""
        if self.live:
            if self._view is None:
                from rich.live import Live

                self._view = Live(self.progress.table(), refresh_per_second=1, transient=False)
                self._view.start()
            self._view.update(self.progress.table())
        elif text:
            log(text)
        self.runs.set_progress(self.progress.summary(), self.progress.counts()["done"])

    def close_view(self) -> None:
        if self._view is not None:
            self._view.update(self.progress.table())
            self._view.stop()
            self._view = None

    # ------------------------------------------------------------ Tune events
    def on_step_begin(self, iteration, trials, **info):
        if time.monotonic() - self._synced < 2:
            return
        self._synced = time.monotonic()
        for t in trials:  # a restored sweep: trials finished before the driver died
            if t.status == "TERMINATED" and self.progress.trials[_key(t)].status != "done":
                self.progress.finished_before(_key(t))
        if self._view is not None:
            self._view.update(self.progress.table())

    def on_trial_start(self, iteration, trials, trial, **info):
        variant, fold = key = _key(trial)
        self.runs.fold_run(variant, fold, reopen=True)  # a retry reopens its run
        self.progress.start(key)
        self._show(f"start   {variant}/fold{fold}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        variant, fold = key = _key(trial)
        rid = self.runs.fold_run(variant, fold)
        if result.get("final"):
            self.runs.finish_fold(rid, json.loads(result["summary"]), result.get("node_id"),
                                  int(result.get("resumed_from_epoch", 0)))
            self.progress.done(key, result["bone_dice"])
            self._show(f"done    {variant}/fold{fold}: bone Dice {result['bone_dice']:.4f} "
                       f"(test {result['test_bone_dice']:.4f}) | {self.progress.summary()}")
            return
        if rid not in self._started:  # idempotent: a resumed run keeps its logged params
            self._started.add(rid)
            gpus = self.args[0]["sweep"]["gpus_per_trial"]
            if gpus and not str(result.get("device", "")).startswith("cuda"):  # said once per trial
                log(f"note    {variant}/fold{fold}: Ray gave it {gpus:g} GPU but it sees no CUDA device; "
                    "it runs on CPU")
            classes, init = VARIANTS[variant].classes, VARIANTS[variant].init
            self.runs.start_fold(rid, {"variant": variant, "fold": fold, "classes": classes, "init": init,
                                       "device": result.get("device", "?"), "amp": result.get("amp", "?"),
                                       "weights": {"source": result.get("weights_source", "?")}})
        epoch = int(result["epoch"])
        self.runs.log_epoch(rid, epoch, result)
        self.progress.epoch(key, epoch, result.get("val_bone_dice", float("nan")))
        val = f"val_bone_dice {result['val_bone_dice']:.4f}  " if "val_bone_dice" in result else ""
        self._show(f"epoch   {variant}/fold{fold} {epoch}: {val}train_loss {result['train_loss']:.4f}  "
                   f"({result['images_per_s']:.1f} img/s) | {self.progress.summary()}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        ckpt = getattr(trial, "checkpoint", None)  # the final checkpoint (model.pt) is registered by now
        if ckpt is None or not self.args[0]["sweep"]["log_model"]:
            return
        # local storage: read in place; object storage (s3://): fetched to a temp folder that
        # as_directory removes again
        with ckpt.as_directory() as d:
            self.runs.log_model(*_key(trial), d)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._show(
            f"retry   {'/fold'.join(map(str, _key(trial)))}: restarting from its last checkpoint"
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        self.runs.fail_fold(*_key(trial))
        self.progress.failed(_key(trial))
        self._show(f"FAILED  {'/fold'.join(map(str, _key(trial)))}")

    def on_experiment_end(self, trials, **info):
        self.close_view()
