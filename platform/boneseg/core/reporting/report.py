"""The report: the study's figures with honest uncertainty, from the sweep's outputs.

Reads results/metrics.json, results/folds.csv (per-case validation bone Dice),
results/trials (per-trial histories) and results/model (the best variant's fold models),
and writes results/report/: index.html, report.json and
- fig_folds.png: bone Dice per variant, per fold and per case (the study's figure 3);
- fig_overlays.png: the best and worst validation cases of the best variant, true
  positives / false positives / false negatives marked (the study's figure 4);
- fig_curves.png: validation bone Dice and training loss per epoch, every trial;
a "what to correct next" section: `boneseg correct next`'s worklist and, where
results/labelling_curve.json exists, bench/labelling_curve.py's curve (fig_labelling_curve.png,
`core.reporting.curve`); and sections on the postprocessing rule chosen by cross-validation
(Dice with and without it) and the fold models' ONNX export (`core.reporting.backends`).
The four final scores come with paired bootstrap 95 % confidence intervals of the
differences between variants (`core.evaluation.stats`). The `report` stage also logs the folder
to the sweep's MLflow parent run (artifact path `report/`).
"""
from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path

import numpy as np

from boneseg.core.config import VARIANTS, Config
from boneseg.core.data.preprocess import apply_window
from boneseg.core.evaluation.stats import statistics
from boneseg.core.imaging.nifti import load_ct, load_labels, to_canonical
from boneseg.core.io import atomic_dir
from boneseg.core.labelling.assist import effort_html, labelling_effort
from boneseg.core.labelling.worklist import open_worklist
from boneseg.core.labelmap import BONE
from boneseg.core.layout import PREDICTIONS, find_cases, label_path
from boneseg.core.parallel import Pool
from boneseg.core.reporting.backends import model_html, model_summary
from boneseg.core.reporting.curve import CURVE, load_curve, next_section
from boneseg.core.reporting.figures import pyplot
from boneseg.errors import DataError


# ---------------------------------------------------------------- inputs
def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DataError(
            f"{path}: {what} not found. Run the sweep first (`dvc repro sweep` or `boneseg sweep`)."
        )
    return json.loads(path.read_text())


def load_results(cfg: Config) -> dict:
    metrics = _read_json(Path(cfg.sweep.metrics_file), "sweep metrics")
    folds_path = Path(cfg.sweep.folds_file)
    if not folds_path.is_file():
        raise DataError(f"{folds_path}: per-case results not found. Run the sweep first.")
    with open(folds_path, newline="") as fh:
        reader = csv.DictReader(fh)
        if "variant" not in (reader.fieldnames or []):
            raise DataError(
                f"{folds_path}: not a boneseg folds.csv (no variant column). Run the sweep "
                "(`dvc repro sweep`)."
            )
        rows = [{"variant": r["variant"], "fold": int(r["fold"]), "case": r["case"],
                 "bone_dice": float(r["bone_dice"])} for r in reader]
    trials = Path(cfg.sweep.trials_dir)
    index = _read_json(trials / "index.json", "trial index")
    histories = {}
    for h in sorted(trials.glob("*/fold*/history.json")):
        histories[(h.parent.parent.name, int(h.parent.name.removeprefix("fold")))] = json.loads(h.read_text())
    variants = [v for v in VARIANTS if isinstance(metrics.get(v), dict)]
    return {"metrics": metrics, "rows": rows, "index": index, "histories": histories, "variants": variants}


# ---------------------------------------------------------------- figures
def fig_folds(res: dict, path: Path) -> None:
    """Per variant: every case's bone Dice (colour = fold), fold means (bars), the variant's score."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.9 * len(res["variants"]) + 2, 4.2), dpi=110)
    rng = np.random.default_rng(0)
    folds = sorted({r["fold"] for r in res["rows"]})
    colours = plt.get_cmap("tab10")
    for i, variant in enumerate(res["variants"]):
        for f in folds:
            v = [r["bone_dice"] for r in res["rows"] if r["variant"] == variant and r["fold"] == f]
            if not v:
                continue
            x = i + (f - (len(folds) - 1) / 2) * 0.16
            ax.scatter(x + rng.uniform(-0.03, 0.03, len(v)), v, s=14, color=colours(f % 10), alpha=0.8,
                       label=f"fold {f}" if i == 0 else None)
            ax.hlines(np.nanmean(v), x - 0.06, x + 0.06, color="black", lw=2)
        score = res["metrics"][variant]["bone_dice_mean"]
        ax.hlines(score, i - 0.4, i + 0.4, color="crimson", lw=1.2, ls="--")
        ax.text(i, score, f" {score:.4f}", color="crimson", va="bottom", ha="center", fontsize=8)
    ax.set_xticks(range(len(res["variants"])), res["variants"], fontsize=8)
    ax.set_ylabel("validation bone Dice (3-D, per case)")
    ax.set_title(
        "bone Dice per case (colour: fold); black bar: fold mean; dashed: the variant's score", fontsize=8
    )
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def fig_curves(res: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    colours = {c: plt.get_cmap("tab10")(i) for i, c in enumerate(res["variants"])}
    labelled = set()  # one legend entry per variant
    for (variant, _fold), hist in sorted(res["histories"].items()):
        if variant not in colours:
            continue
        for ax, key in zip(axes, ("val_bone_dice", "train_loss")):
            pts = [(h["epoch"], h[key]) for h in hist if key in h]  # validation: only validated epochs
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colours[variant], alpha=0.7, lw=1,
                    marker="o", ms=3, label=None if variant in labelled else variant)
        labelled.add(variant)
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
    """The best variant's best and worst validation cases: the label maps that their
    trials scored (results/trials/<variant>/fold<k>/predictions), on the CT's own grid, so
    the figure shows exactly what the Dice measured."""
    best_variant = res["metrics"].get("best_variant")
    rows = [r for r in res["rows"] if r["variant"] == best_variant and not math.isnan(r["bone_dice"])]
    if not rows:
        return []
    cts = {c["case"]: c["ct"] for c in find_cases(cfg.data.raw_dir)}
    best = max(rows, key=lambda r: r["bone_dice"])
    others = [r for r in rows if r is not best] or rows
    picks = [("best", best), ("worst", min(others, key=lambda r: r["bone_dice"]))]
    out = []
    for kind, r in picks:
        trial = Path(cfg.sweep.trials_dir) / best_variant / f"fold{r['fold']}"
        scored = trial / PREDICTIONS / f"{r['case']}.nii.gz"
        if r["case"] not in cts or not scored.is_file():
            continue
        ct = to_canonical(load_ct(cts[r["case"]]))
        truth = to_canonical(load_labels(label_path(cfg.data.labels_dir, r["case"]))).data == BONE
        pred = to_canonical(load_labels(scored)).data == BONE
        err = (pred & ~truth) | (~pred & truth)
        z = int(np.argmax(err.sum(axis=(0, 1))))  # the slice with the most bone errors
        out.append({"kind": kind, "case": r["case"], "fold": r["fold"], "dice": r["bone_dice"], "z": z,
                    "ct": ct.data[:, :, z], "pred": pred[:, :, z], "truth": truth[:, :, z],
                    "tp": int((pred & truth).sum()), "fp": int((pred & ~truth).sum()),
                    "fn": int((~pred & truth).sum())})
    return out


def fig_overlays(items: list[dict], window, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(items), 2, figsize=(8, 4 * len(items)), dpi=110, squeeze=False)
    for row, it in zip(axes, items):
        img = apply_window(it["ct"], window)
        rgb = np.stack([img] * 3, axis=-1)
        over = rgb.copy()
        marks = ((it["pred"] & it["truth"], (0.2, 0.85, 0.2)), (it["pred"] & ~it["truth"], (1, 0.1, 0.1)),
                 (~it["pred"] & it["truth"], (0.15, 0.45, 1)))
        for mask, colour in marks:
            over[mask] = 0.35 * over[mask] + 0.65 * np.array(colour)
        row[0].imshow(_display(rgb), origin="lower")
        row[1].imshow(_display(over), origin="lower")
        row[0].set_title(f"{it['kind']}: {it['case']} (fold {it['fold']}), slice {it['z']}", fontsize=9)
        row[1].set_title(f"bone Dice {it['dice']:.4f}: TP green, FP red ({it['fp']}), FN blue ({it['fn']})",
                         fontsize=9)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- page
def fmt(v: float, nd: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _p(p: float, n: int) -> str:
    """A bootstrap p-value: 0 of n resamples on the other side reads < 1/n, not 0."""
    return f"< {1 / n:.0e}" if p == 0 else fmt(p, 3)


def render_html(res: dict, stats: dict, figures: list[str], overlays: list[dict], effort: str,
                way_out: str = "", next_up: str = "") -> str:
    m = res["metrics"]
    rows = []
    for v in res["variants"]:
        s, st = m[v], stats["variants"][v]
        rows.append(f"<tr><td>{html.escape(v)}</td><td><b>{fmt(s['bone_dice_mean'])}</b></td>"
                    f"<td>{fmt(s['bone_dice_std'])}</td><td>{fmt(s['bone_dice_pooled'])}</td>"
                    f"<td>{fmt(s['test_bone_dice'])}</td><td>{fmt(st['case_mean'])} "
                    f"[{fmt(st['ci95'][0])}, {fmt(st['ci95'][1])}]</td><td>{st['n_cases']}</td></tr>")
    diffs = []
    for d in stats["differences"]:
        excl = not (d["ci95"][0] <= 0 <= d["ci95"][1]) if not math.isnan(d["mean_diff"]) else False
        p = html.escape(_p(d["p"], stats["bootstrap"]))
        diffs.append(
            f"<tr><td>{html.escape(d['a'])} &minus; {html.escape(d['b'])}</td><td>{fmt(d['mean_diff'])}</td>"
            f"<td>[{fmt(d['ci95'][0])}, {fmt(d['ci95'][1])}]</td><td>{p}</td>"
            f"<td>{d['n_cases']}</td><td>{'yes' if excl else 'no'}</td></tr>"
        )
    ov = "".join(f"<li>{o['kind']}: {html.escape(o['case'])}, fold {o['fold']}, bone Dice {fmt(o['dice'])}, "
                 f"slice {o['z']}; {o['fp']} false-positive and {o['fn']} false-negative bone voxels</li>"
                 for o in overlays)
    idx = res["index"]
    imgs = "".join(f'<figure><img src="{f}" alt="{f}"><figcaption>{f}</figcaption></figure>' for f in figures)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>boneseg report: {html.escape(idx.get("sweep", ""))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}figure{{margin:1.5em 0}}</style>
</head><body>
<h1>Bone segmentation: four variants x {len({r["fold"] for r in res["rows"]})} folds</h1>
<p>Sweep <code>{html.escape(idx.get("sweep", ""))}</code> (MLflow parent run
<code>{html.escape(idx.get("sweep_run_id", ""))}</code>).
Best variant: <b>{html.escape(str(m.get("best_variant")))}</b>;
its fold models: <code>{html.escape(idx.get("registered_model", "-"))}</code>.</p>
<h2>Final scores</h2>
<p>Score = mean over folds of the fold's mean validation bone Dice (the study's figure); std over folds;
pooled = one Dice over all validation voxels; test = held-out cases, mean over fold models.
Last column: mean over cases (patients) with a 95 % bootstrap interval (cases resampled).</p>
<table><tr><th>variant</th><th>bone Dice (score)</th><th>std over folds</th><th>pooled</th><th>test</th>
<th>case mean [95 % CI]</th><th>cases</th></tr>{"".join(rows)}</table>
<h2>Differences between variants (paired bootstrap, cases as the unit)</h2>
<p>Each case is a validation case once per variant, so the variants are paired by case. Mean difference of
per-case bone Dice, 95 % percentile interval over {stats["bootstrap"]} resamples of the cases, and the
two-sided bootstrap p-value. "Excludes 0": the interval does not contain 0.</p>
<table><tr><th>difference</th><th>mean</th><th>95 % CI</th><th>p</th><th>cases</th><th>excludes 0</th></tr>
{"".join(diffs)}</table>
<h2>Labelling effort per proposal source</h2>
<p>What correcting each automatic proposal into the final label map costs an annotator (abdominal cases;
docs/labelling.md): voxels to paint, regions to relabel, axial slices touched; bone Dice against the
truth and the share of the proposed bone lying on other organs. The U-Net rows are out of fold: each case
is proposed by the fold model that did not train on it.</p>
{effort}
{next_up}
{way_out}
<h2>Figures</h2><ul>{ov}</ul>{imgs}
</body></html>
"""


# ---------------------------------------------------------------- the report
def build_report(cfg: Config, pool: Pool | None = None) -> dict:
    res = load_results(cfg)
    if not res["variants"]:
        raise DataError(f"{cfg.sweep.metrics_file}: no variant scores. The sweep finished no variant.")
    stats = statistics(res["rows"], res["variants"], cfg.report.bootstrap, cfg.report.seed)
    overlays = overlay_cases(cfg, res)
    effort = labelling_effort(cfg, res["metrics"], pool)  # the per-case scoring on `pool`
    way_out = model_summary(cfg.sweep.model_dir)  # postprocessing and backends, from boneseg.json
    curve = load_curve(Path(cfg.sweep.metrics_file).parent / CURVE)  # bench/labelling_curve.py's, if any
    with atomic_dir(cfg.report.out_dir) as out:
        figures = ["fig_folds.png", "fig_curves.png"]
        fig_folds(res, out / figures[0])
        fig_curves(res, out / figures[1])
        if overlays:
            figures.append("fig_overlays.png")
            fig_overlays(overlays, cfg.data.window, out / "fig_overlays.png")
        next_up, next_entry = next_section(curve, open_worklist(cfg), out)
        report = {
            "metrics": res["metrics"],
            "statistics": stats,
            "overlays": [{k: v for k, v in o.items() if k not in ("ct", "pred", "truth")} for o in overlays],
            "sweep": res["index"],
            "figures": figures,
            "labelling_effort": effort,
            **next_entry,
            **way_out,
        }
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "index.html").write_text(render_html(res, stats, figures, overlays,
                                                        effort_html(effort["totals"], effort["cases"],
                                                                    effort["unet_variants"]),
                                                        model_html(way_out), next_up))
    return report
