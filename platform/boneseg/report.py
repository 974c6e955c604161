"""`boneseg report`: the study's figures with honest uncertainty, from the sweep's outputs.

Reads results/metrics.json, results/folds.csv (per-patient validation bone Dice),
results/trials (per-trial histories) and results/model (the best case's fold models),
and writes results/report/: index.html, report.json and
- fig_folds.png: bone Dice per case, per fold and per patient (the study's figure 3);
- fig_overlays.png: the best and worst validation patients of the best case, true
  positives / false positives / false negatives marked (the study's figure 4);
- fig_curves.png: validation bone Dice and training loss per epoch, every trial.
The four final scores come with paired bootstrap 95 % confidence intervals of the
differences between cases: every patient is validated once per case (k-fold), so the
cases are paired by patient, and patients are resampled with replacement. The folder
is also logged to the sweep's MLflow parent run (artifact path `report/`).
"""
from __future__ import annotations

import argparse
import csv
import html
import itertools
import json
import math
from pathlib import Path

import numpy as np

from boneseg.config import Config
from boneseg.errors import DataError
from boneseg.nifti import atomic_dir
from boneseg.slices import apply_window

CASE_ORDER = ("multi-random", "single-random", "multi-pretrained", "single-pretrained")


# ---------------------------------------------------------------- inputs
def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found. Run the sweep first (`dvc repro sweep` or `boneseg sweep`).")
    return json.loads(path.read_text())


def load_results(cfg: Config) -> dict:
    metrics = _read_json(Path(cfg.sweep.metrics_file), "sweep metrics")
    folds_path = Path(cfg.sweep.folds_file)
    if not folds_path.is_file():
        raise DataError(f"{folds_path}: per-patient results not found. Run the sweep first.")
    with open(folds_path, newline="") as fh:
        rows = [{"case": r["case"], "fold": int(r["fold"]), "patient": r["patient"], "bone_dice": float(r["bone_dice"])}
                for r in csv.DictReader(fh)]
    trials = Path(cfg.sweep.trials_dir)
    index = _read_json(trials / "index.json", "trial index")
    histories = {}
    for h in sorted(trials.glob("*/fold*/history.json")):
        histories[(h.parent.parent.name, int(h.parent.name.removeprefix("fold")))] = json.loads(h.read_text())
    cases = [c for c in CASE_ORDER if c in metrics] + sorted(c for c in metrics if isinstance(metrics[c], dict)
                                                             and c not in CASE_ORDER)
    return {"metrics": metrics, "rows": rows, "index": index, "histories": histories, "cases": cases}


# ---------------------------------------------------------------- statistics
def _resampled_means(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n` resamples (with replacement) of `values`."""
    return values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)


def bootstrap_mean_ci(values: np.ndarray, n: int, rng: np.random.Generator) -> tuple[float, float]:
    lo, hi = np.percentile(_resampled_means(values, n, rng), [2.5, 97.5])
    return float(lo), float(hi)


def per_patient(rows: list[dict], case: str) -> dict[str, float]:
    return {r["patient"]: r["bone_dice"] for r in rows if r["case"] == case and not math.isnan(r["bone_dice"])}


def paired_bootstrap(a: dict[str, float], b: dict[str, float], n: int = 10000, seed: int = 0) -> dict:
    """Mean over patients of Dice(a) - Dice(b), with a 95 % percentile interval from `n`
    resamples of the patients both cases scored, and a two-sided bootstrap p-value."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return {"n_patients": len(common), "mean_diff": float("nan"), "ci95": [float("nan")] * 2, "p": float("nan")}
    d = np.array([a[p] - b[p] for p in common])
    means = _resampled_means(d, n, np.random.default_rng(seed))
    lo, hi = np.percentile(means, [2.5, 97.5])
    p = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return {"n_patients": len(common), "mean_diff": float(d.mean()), "ci95": [float(lo), float(hi)], "p": p}


def statistics(res: dict, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    scores = {c: per_patient(res["rows"], c) for c in res["cases"]}
    cases = {}
    for c, by_patient in scores.items():
        v = np.array(list(by_patient.values()))
        cases[c] = {"patient_mean": float(v.mean()) if len(v) else float("nan"), "n_patients": len(v),
                    "ci95": list(bootstrap_mean_ci(v, n, rng)) if len(v) > 1 else [float("nan")] * 2}
    pairs = [{"a": a, "b": b, **paired_bootstrap(scores[a], scores[b], n, seed)}
             for a, b in itertools.combinations(res["cases"], 2)]
    return {"cases": cases, "differences": pairs, "bootstrap": n, "seed": seed}


# ---------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_folds(res: dict, path: Path) -> None:
    """Per case: every patient's bone Dice (colour = fold), fold means (bars), the case score."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.9 * len(res["cases"]) + 2, 4.2), dpi=110)
    rng = np.random.default_rng(0)
    folds = sorted({r["fold"] for r in res["rows"]})
    colours = plt.get_cmap("tab10")
    for i, case in enumerate(res["cases"]):
        for f in folds:
            v = [r["bone_dice"] for r in res["rows"] if r["case"] == case and r["fold"] == f]
            if not v:
                continue
            x = i + (f - (len(folds) - 1) / 2) * 0.16
            ax.scatter(x + rng.uniform(-0.03, 0.03, len(v)), v, s=14, color=colours(f % 10), alpha=0.8,
                       label=f"fold {f}" if i == 0 else None)
            ax.hlines(np.nanmean(v), x - 0.06, x + 0.06, color="black", lw=2)
        score = res["metrics"][case]["bone_dice_mean"]
        ax.hlines(score, i - 0.4, i + 0.4, color="crimson", lw=1.2, ls="--")
        ax.text(i, score, f" {score:.4f}", color="crimson", va="bottom", ha="center", fontsize=8)
    ax.set_xticks(range(len(res["cases"])), res["cases"], fontsize=8)
    ax.set_ylabel("validation bone Dice (3-D, per patient)")
    ax.set_title("bone Dice per patient (colour: fold); black bar: fold mean; dashed: the case's score", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def fig_curves(res: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    colours = {c: plt.get_cmap("tab10")(i) for i, c in enumerate(res["cases"])}
    labelled = set()  # one legend entry per case
    for (case, _fold), hist in sorted(res["histories"].items()):
        if case not in colours:
            continue
        ep = [h["epoch"] for h in hist]
        for ax, key in zip(axes, ("val_bone_dice", "train_loss")):
            ax.plot(ep, [h.get(key, float("nan")) for h in hist], color=colours[case], alpha=0.7, lw=1,
                    label=None if case in labelled else case)
        labelled.add(case)
    for ax, title in zip(axes, ("validation bone Dice", "training loss")):
        ax.set_xlabel("epoch")
        ax.set_title(f"{title} (one line per fold)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _display(rgb_xy: np.ndarray) -> np.ndarray:
    """RAS+ (X, Y, 3) plane -> (rows, columns, 3) in radiological view (the patient's right
    on the left, anterior up; shown with origin='lower')."""
    return np.transpose(rgb_xy[::-1], (1, 0, 2))


def overlay_cases(cfg: Config, res: dict) -> list[dict]:
    """The best case's best and worst validation patients, predicted by the fold model
    that validated them, on the CT's own grid."""
    import torch

    from boneseg.labels import find_cases
    from boneseg.nifti import load_ct, load_labels, to_canonical
    from boneseg.segment import load_fold_models, segment_volume
    from boneseg.train import autocast_args

    best_case = res["metrics"].get("best_case")
    rows = [r for r in res["rows"] if r["case"] == best_case and not math.isnan(r["bone_dice"])]
    if not rows:
        return []
    cts = {c["case"]: c["ct"] for c in find_cases(Path(cfg.data.raw_dir))}
    best = max(rows, key=lambda r: r["bone_dice"])
    others = [r for r in rows if r is not best] or rows
    picks = [("best", best), ("worst", min(others, key=lambda r: r["bone_dice"]))]
    out, cpu = [], torch.device("cpu")
    for kind, r in picks:
        model = Path(cfg.sweep.model_dir) / f"fold{r['fold']}.pt"
        if r["patient"] not in cts or not model.is_file():
            continue
        ct = to_canonical(load_ct(cts[r["patient"]]))
        truth = to_canonical(load_labels(Path(cfg.data.labels_dir) / f"{r['patient']}.nii.gz")).data == 1
        models = load_fold_models([model], cpu)
        pred = segment_volume(models, ct, cpu, autocast_args(cfg.train, cpu)) == 1
        err = (pred & ~truth) | (~pred & truth)
        z = int(np.argmax(err.sum(axis=(0, 1))))  # the slice with the most bone errors
        out.append({"kind": kind, "patient": r["patient"], "fold": r["fold"], "dice": r["bone_dice"], "z": z,
                    "ct": ct.data[:, :, z], "pred": pred[:, :, z], "truth": truth[:, :, z],
                    "fp": int((pred & ~truth).sum()), "fn": int((~pred & truth).sum())})
    return out


def fig_overlays(items: list[dict], window, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(len(items), 2, figsize=(8, 4 * len(items)), dpi=110, squeeze=False)
    for row, it in zip(axes, items):
        img = apply_window(it["ct"], window)
        rgb = np.stack([img] * 3, axis=-1)
        over = rgb.copy()
        for mask, colour in (((it["pred"] & it["truth"]), (0.2, 0.85, 0.2)), ((it["pred"] & ~it["truth"]), (1, 0.1, 0.1)),
                             ((~it["pred"] & it["truth"]), (0.15, 0.45, 1))):
            over[mask] = 0.35 * over[mask] + 0.65 * np.array(colour)
        row[0].imshow(_display(rgb), origin="lower")
        row[1].imshow(_display(over), origin="lower")
        row[0].set_title(f"{it['kind']}: {it['patient']} (fold {it['fold']}), slice {it['z']}", fontsize=9)
        row[1].set_title(f"bone Dice {it['dice']:.4f}: TP green, FP red ({it['fp']}), FN blue ({it['fn']})",
                         fontsize=9)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- page
def _f(v: float, nd: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _p(p: float, n: int) -> str:
    """A bootstrap p-value: 0 of n resamples on the other side reads < 1/n, not 0."""
    return f"< {1 / n:.0e}" if p == 0 else _f(p, 3)


def render_html(res: dict, stats: dict, figures: list[str], overlays: list[dict]) -> str:
    m = res["metrics"]
    rows = []
    for c in res["cases"]:
        s, st = m[c], stats["cases"][c]
        rows.append(f"<tr><td>{html.escape(c)}</td><td><b>{_f(s['bone_dice_mean'])}</b></td>"
                    f"<td>{_f(s['bone_dice_std'])}</td><td>{_f(s['bone_dice_pooled'])}</td>"
                    f"<td>{_f(s['test_bone_dice'])}</td><td>{_f(st['patient_mean'])} "
                    f"[{_f(st['ci95'][0])}, {_f(st['ci95'][1])}]</td><td>{st['n_patients']}</td></tr>")
    diffs = []
    for d in stats["differences"]:
        excl = not (d["ci95"][0] <= 0 <= d["ci95"][1]) if not math.isnan(d["mean_diff"]) else False
        diffs.append(f"<tr><td>{html.escape(d['a'])} &minus; {html.escape(d['b'])}</td><td>{_f(d['mean_diff'])}</td>"
                     f"<td>[{_f(d['ci95'][0])}, {_f(d['ci95'][1])}]</td><td>{html.escape(_p(d['p'], stats['bootstrap']))}</td>"
                     f"<td>{d['n_patients']}</td><td>{'yes' if excl else 'no'}</td></tr>")
    ov = "".join(f"<li>{o['kind']}: {html.escape(o['patient'])}, fold {o['fold']}, bone Dice {_f(o['dice'])}, "
                 f"slice {o['z']}; {o['fp']} false-positive and {o['fn']} false-negative bone voxels</li>"
                 for o in overlays)
    idx = res["index"]
    imgs = "".join(f'<figure><img src="{f}" alt="{f}"><figcaption>{f}</figcaption></figure>' for f in figures)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>boneseg report: {html.escape(idx.get('sweep', ''))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}figure{{margin:1.5em 0}}</style></head><body>
<h1>Bone segmentation: four cases x {len({r['fold'] for r in res['rows']})} folds</h1>
<p>Sweep <code>{html.escape(idx.get('sweep', ''))}</code> (MLflow parent run
<code>{html.escape(idx.get('sweep_run_id', ''))}</code>). Best case: <b>{html.escape(str(m.get('best_case')))}</b>;
its fold models: <code>{html.escape(idx.get('registered_model', '-'))}</code>.</p>
<h2>Final scores</h2>
<p>Score = mean over folds of the fold's mean validation bone Dice (the study's figure); std over folds;
pooled = one Dice over all validation voxels; test = held-out patients, mean over fold models.
Last column: mean over patients with a 95 % bootstrap interval (patients resampled).</p>
<table><tr><th>case</th><th>bone Dice (score)</th><th>std over folds</th><th>pooled</th><th>test</th>
<th>patient mean [95 % CI]</th><th>patients</th></tr>{''.join(rows)}</table>
<h2>Differences between cases (paired bootstrap, patients as the unit)</h2>
<p>Each patient is a validation patient once per case, so the cases are paired by patient. Mean difference of
per-patient bone Dice, 95 % percentile interval over {stats['bootstrap']} resamples of the patients, and the
two-sided bootstrap p-value. "Excludes 0": the interval does not contain 0.</p>
<table><tr><th>difference</th><th>mean</th><th>95 % CI</th><th>p</th><th>patients</th><th>excludes 0</th></tr>
{''.join(diffs)}</table>
<h2>Figures</h2><ul>{ov}</ul>{imgs}
</body></html>
"""


# ---------------------------------------------------------------- stage
def build_report(cfg: Config) -> dict:
    res = load_results(cfg)
    if not res["cases"]:
        raise DataError(f"{cfg.sweep.metrics_file}: no case scores. The sweep finished no case.")
    stats = statistics(res, cfg.report.bootstrap, cfg.report.seed)
    overlays = overlay_cases(cfg, res)
    with atomic_dir(cfg.report.out_dir) as out:
        figures = ["fig_folds.png", "fig_curves.png"]
        fig_folds(res, out / figures[0])
        fig_curves(res, out / figures[1])
        if overlays:
            figures.append("fig_overlays.png")
            fig_overlays(overlays, cfg.data.window, out / "fig_overlays.png")
        report = {"metrics": res["metrics"], "statistics": stats,
                  "overlays": [{k: v for k, v in o.items() if k not in ("ct", "pred", "truth")} for o in overlays],
                  "sweep": res["index"], "figures": figures}
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "index.html").write_text(render_html(res, stats, figures, overlays))
    report["logged_to"] = log_to_mlflow(cfg, res["index"].get("sweep_run_id"), Path(cfg.report.out_dir))
    return report


def log_to_mlflow(cfg: Config, run_id: str | None, folder: Path) -> str | None:
    """The report folder as artifacts of the sweep's parent run, if this store has it."""
    if not run_id:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    from boneseg.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri(cfg))
    try:
        client.get_run(run_id)
    except MlflowException:
        print(f"report: the sweep run {run_id} is not in {tracking_uri(cfg)}; the report is not logged to MLflow")
        return None
    client.log_artifacts(run_id, str(folder), "report")
    return run_id


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="study-style figures, overlays and bootstrap CIs (results/report)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    rep = build_report(cfg)
    print(f"report: {cfg.report.out_dir}/index.html ({len(rep['figures'])} figures)"
          + (f"; logged to MLflow run {rep['logged_to']}" if rep["logged_to"] else ""))
    for d in rep["statistics"]["differences"]:
        print(f"  {d['a']} - {d['b']}: {_f(d['mean_diff'])} [{_f(d['ci95'][0])}, {_f(d['ci95'][1])}]  "
              f"({d['n_patients']} patients)")
    return 0
