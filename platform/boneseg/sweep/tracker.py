"""The driver's Tune callback: the one MLflow writer of a sweep, and its progress lines.

Picklable (Tune saves it with the experiment): MLflow state is rebuilt on first use, so
a restored driver continues the same parent run.
"""
from __future__ import annotations

import json
import os

from ray import tune

from boneseg.core.config import VARIANTS, Config


def log(msg: str) -> None:
    print(f"sweep: {msg}", flush=True)


def _key(trial) -> tuple[str, int]:
    return trial.config["variant"], int(trial.config["fold"])


class Tracker(tune.Callback):
    def __init__(self, cfg_dict: dict, sweep_name: str, parent_run_id: str):
        self.args = (cfg_dict, sweep_name, parent_run_id)
        self._runs = None
        self._started: set[str] = set()  # fold runs whose params are logged

    def __getstate__(self):
        return {"args": self.args, "_runs": None, "_started": set()}

    @property
    def runs(self):
        if self._runs is None:
            from boneseg.tracking.sweep_runs import SweepRuns

            self._runs = SweepRuns(Config.model_validate(self.args[0]), self.args[1], self.args[2])
        return self._runs

    def on_trial_start(self, iteration, trials, trial, **info):
        variant, fold = _key(trial)
        self.runs.fold_run(variant, fold, reopen=True)  # a retry reopens its run
        log(f"start   {variant}/fold{fold}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        variant, fold = _key(trial)
        rid = self.runs.fold_run(variant, fold)
        if result.get("final"):
            self.runs.finish_fold(rid, json.loads(result["summary"]), result.get("node_id"),
                                  int(result.get("resumed_from_epoch", 0)))
            log(f"done    {variant}/fold{fold}: bone Dice {result['bone_dice']:.4f} "
                f"(test {result['test_bone_dice']:.4f})")
            return
        if rid not in self._started:  # idempotent: a resumed run keeps its logged params
            self._started.add(rid)
            classes, init = VARIANTS[variant]
            self.runs.start_fold(rid, {"variant": variant, "fold": fold, "classes": classes, "init": init,
                                       "device": result.get("device", "?"), "amp": result.get("amp", "?"),
                                       "weights": {"source": result.get("weights_source", "?")}})
        self.runs.log_epoch(rid, int(result["epoch"]), result)
        log(
            f"epoch   {variant}/fold{fold} {int(result['epoch'])}: "
            f"val_bone_dice {result['val_bone_dice']:.4f}"
            f"  train_loss {result['train_loss']:.4f}  ({result['images_per_s']:.1f} img/s)"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        ckpt = getattr(trial, "checkpoint", None)  # the final checkpoint (model.pt) is registered by now
        if ckpt is not None and os.path.isdir(ckpt.path):  # local storage (remote: logged by nobody)
            self.runs.log_model(*_key(trial), ckpt.path)

    def on_trial_recover(self, iteration, trials, trial, **info):
        log(f"retry   {'/fold'.join(map(str, _key(trial)))}: restarting from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.runs.fail_fold(*_key(trial))
        log(f"FAILED  {'/fold'.join(map(str, _key(trial)))}")
