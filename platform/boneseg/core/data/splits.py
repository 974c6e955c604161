"""`boneseg splits`: patient-level k folds over the abdominal cases + held-out test cases.

data/splits.json follows nnU-Net's splits_final.json (a list of {train, val} per fold)
inside a small envelope: {"folds": [...], "test": [...], "seed", "stratified_by"}.
Only labelled cases (ground truth or a correction) are split unless
splits.include_unreviewed; the others are listed as "to_label".
Stratified by contrast phase where known: each phase's cases are shuffled and dealt
round-robin, so every fold sees every phase. Deterministic from the seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from boneseg.core.config import Config, SplitsConfig
from boneseg.core.io import write_json
from boneseg.core.layout import correction_path, find_cases
from boneseg.errors import DataError


def make_splits(cases: list[str], phases: dict[str, str], cfg: SplitsConfig) -> dict:
    """Pure: case ids (+ phase per case) -> {"folds": [{"train","val"}...], "test": [...]}."""
    cases = sorted(cases)
    need = cfg.folds + cfg.test_cases
    if len(cases) < need:
        raise DataError(f"splits: {len(cases)} labelled abdominal cases (ground truth or a correction), "
                        f"but splits.folds={cfg.folds} and splits.test_cases={cfg.test_cases} need at least "
                        f"{need}. Correct more cases (`boneseg correct export CASE`), add cases, or lower "
                        "the counts.")
    rng = np.random.default_rng(cfg.seed)
    strata: dict[str, list[str]] = {}
    for c in cases:
        strata.setdefault(phases.get(c, "unknown") if cfg.stratify else "all", []).append(c)
    # a deterministic interleaving of the shuffled strata: dealing from it balances phases
    order: list[str] = []
    for key in sorted(strata):
        members = list(strata[key])
        rng.shuffle(members)
        order.extend(members)
    test = order[:: max(1, len(order) // cfg.test_cases)][: cfg.test_cases] if cfg.test_cases else []
    rest = [c for c in order if c not in test]
    val = [sorted(rest[i:: cfg.folds]) for i in range(cfg.folds)]
    folds = [{"train": sorted(c for c in rest if c not in v), "val": v} for v in val]
    return {"seed": cfg.seed, "stratified_by": "phase" if cfg.stratify else None,
            "folds": folds, "test": sorted(test)}


def check_splits(splits: dict, cases: list[str]) -> None:
    """Every non-test case validates in exactly one fold; no case in two roles."""
    test = set(splits["test"])
    pool = set(cases) - test
    seen: list[str] = []
    for i, f in enumerate(splits["folds"]):
        tr, va = set(f["train"]), set(f["val"])
        if tr & va or (tr | va) & test:
            raise AssertionError(f"fold {i}: a case is in two roles")
        if tr | va != pool:
            raise AssertionError(f"fold {i}: train+val is not every non-test case")
        seen += f["val"]
    if sorted(seen) != sorted(pool):
        raise AssertionError("not every training case validates in exactly one fold")


def to_label(cases: list[dict], corrections_dir: str | Path) -> list[str]:
    """The abdominal cases with neither ground truth nor a correction: labelled from a
    proposal alone, so they are listed for correction and kept out of training and scoring."""
    return sorted(c["case"] for c in cases if c["cohort"] == "abdomen" and c["truth"] is None
                  and not correction_path(corrections_dir, c["case"]).is_file())


def write_splits(cfg: Config) -> dict:
    found = [c for c in find_cases(cfg.data.raw_dir) if c["cohort"] == "abdomen"]
    unlabelled = to_label(found, cfg.data.corrections_dir)
    if not cfg.splits.include_unreviewed:
        found = [c for c in found if c["case"] not in unlabelled]
    ids = [c["case"] for c in found]
    splits = make_splits(ids, {c["case"]: c["phase"] for c in found}, cfg.splits)
    check_splits(splits, ids)
    if unlabelled and not cfg.splits.include_unreviewed:
        splits["to_label"] = unlabelled
    write_json(cfg.data.splits_file, splits)
    return splits

