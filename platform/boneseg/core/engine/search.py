"""One setting of a hyperparameter search, trained on the inner folds side by side.

`boneseg tune` scores a setting by the mean validation bone Dice over `tune.folds`. The
folds train one epoch each in turn (`InnerFolds.epoch`), so after every validated epoch
there is one objective to report: ASHA's rungs are validated epochs of the whole setting,
not of one fold. Only each fold's training and validation cases are read; the held-out
test cases never are. Ray stays outside (sweep.search).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from boneseg.core.config import VARIANTS, Config
from boneseg.core.engine.training import fold_cases, setup_fold, train_epoch, validates
from boneseg.core.evaluation.validate import validate
from boneseg.core.layout import load_index
from boneseg.core.networks.optim import Stepper
from boneseg.core.networks.runtime import Runtime


def apply_setting(cfg: Config, setting: dict) -> Config:
    """`cfg` with the searched values (`{"train.lr": 0.003, ...}`) set, validated again."""
    d = cfg.model_dump(mode="json")
    for key, value in setting.items():
        section, field = key.split(".", 1)
        d[section][field] = value
    return Config.model_validate(d)


@dataclass
class _Fold:
    fold: int
    model: object
    stepper: Stepper
    loader: object
    val_cases: list[str]


class InnerFolds:
    """The folds of one setting, each with its own model, optimiser and schedule."""

    def __init__(self, cfg: Config, variant: str, folds: list[int]):
        self.cfg, self.tc = cfg, cfg.train
        self.classes = VARIANTS[variant].classes
        self.rt = Runtime.of(self.tc)
        self.index = load_index(cfg.data.slices_dir)
        self.folds = []
        for fold in folds:
            train_cases, val_cases, _ = fold_cases(cfg, fold)  # the test cases are not kept
            model, _, loader, _, _, stepper = setup_fold(cfg, variant, fold, train_cases, self.rt)
            self.folds.append(_Fold(fold, model, stepper, loader, val_cases))

    def epoch(self, epoch: int) -> dict | None:
        """Train every fold one epoch; on a validated epoch, the objective
        {"val_bone_dice": mean over folds, "fold<k>_bone_dice": ...}; else None."""
        for f in self.folds:
            train_epoch(f.model, f.loader(epoch), f.stepper, self.tc, self.rt)
        if not validates(epoch, self.tc):
            return None
        out = {}
        for f in self.folds:
            val, _, _ = validate(f.model, f.val_cases, self.cfg, self.classes, self.rt, self.index)
            out[f"fold{f.fold}_bone_dice"] = val["bone_dice"]
        scores = [v for v in out.values() if not math.isnan(v)]
        out["val_bone_dice"] = sum(scores) / len(scores) if scores else float("nan")
        return out


def validated_epochs(cfg: Config) -> int:
    """How many epochs of `train.epochs` are validated: ASHA's full budget per trial."""
    return sum(validates(e, cfg.train) for e in range(cfg.train.epochs))
