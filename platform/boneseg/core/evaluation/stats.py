"""Paired bootstrap statistics over patients (pure numpy): confidence intervals of a
variant's mean bone Dice and of the differences between variants. Every case is a
validation case once per variant (k-fold), so variants are paired by case."""
from __future__ import annotations

import itertools
import math

import numpy as np


def _resampled_means(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n` resamples (with replacement) of `values`."""
    return values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)


def bootstrap_mean_ci(values: np.ndarray, n: int, rng: np.random.Generator) -> tuple[float, float]:
    lo, hi = np.percentile(_resampled_means(values, n, rng), [2.5, 97.5])
    return float(lo), float(hi)


def per_case(rows: list[dict], variant: str) -> dict[str, float]:
    """{case: bone Dice} of one variant's validation cases (NaN left out)."""
    return {
        r["case"]: r["bone_dice"] for r in rows if r["variant"] == variant and not math.isnan(r["bone_dice"])
    }


def paired_bootstrap(a: dict[str, float], b: dict[str, float], n: int = 10000, seed: int = 0) -> dict:
    """Mean over cases of Dice(a) - Dice(b), with a 95 % percentile interval from `n`
    resamples of the cases both variants scored, and a two-sided bootstrap p-value."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return {
            "n_cases": len(common),
            "mean_diff": float("nan"),
            "ci95": [float("nan")] * 2,
            "p": float("nan"),
        }
    d = np.array([a[c] - b[c] for c in common])
    means = _resampled_means(d, n, np.random.default_rng(seed))
    lo, hi = np.percentile(means, [2.5, 97.5])
    p = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return {"n_cases": len(common), "mean_diff": float(d.mean()), "ci95": [float(lo), float(hi)], "p": p}


def statistics(rows: list[dict], variants: list[str], n: int, seed: int) -> dict:
    """Per variant: mean over cases with a bootstrap 95 % CI; per pair: paired bootstrap."""
    rng = np.random.default_rng(seed)
    scores = {v: per_case(rows, v) for v in variants}
    out = {}
    for v, by_case in scores.items():
        x = np.array(list(by_case.values()))
        out[v] = {"case_mean": float(x.mean()) if len(x) else float("nan"), "n_cases": len(x),
                  "ci95": list(bootstrap_mean_ci(x, n, rng)) if len(x) > 1 else [float("nan")] * 2}
    pairs = [{"a": a, "b": b, **paired_bootstrap(scores[a], scores[b], n, seed)}
             for a, b in itertools.combinations(variants, 2)]
    return {"variants": out, "differences": pairs, "bootstrap": n, "seed": seed}


