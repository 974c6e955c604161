"""The report's "which case next" section: the labelling curve and the worklist.

The labelling curve is what `bench/labelling_curve.py --json results/labelling_curve.json`
measured with a simulated annotator (docs/labelling.md): test Dice round after round for
each order of correction (random, the ensemble's disagreement, case id), against cases
corrected and voxels painted. The worklist is `boneseg correct next`'s ranking of the cases
still to label. The report shows each one that exists; neither is required.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from boneseg.core.reporting.figures import pyplot
from boneseg.errors import DataError

CURVE = "labelling_curve.json"
MAX_CURVE_BYTES = 1 << 22
YLABEL = {"bone_dice": "test bone Dice", "mean_dice": "test Dice, mean of 4 classes"}
ROUND_KEYS = ("cases", "voxels", "bone_dice", "mean_dice")


def load_curve(path: str | Path) -> dict | None:
    """The benchmark's result, checked; None where there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    fix = "Write it again with `python bench/labelling_curve.py --json " f"{path}`, or remove it."
    if path.stat().st_size > MAX_CURVE_BYTES:
        raise DataError(f"{path}: larger than {MAX_CURVE_BYTES >> 20} MiB, not a labelling curve. {fix}")
    try:
        data = json.loads(path.read_text())
        orders = data["orders"]
        ok = isinstance(orders, dict) and orders and all(
            isinstance(rounds, list) and rounds and all(
                isinstance(r, dict) and all(isinstance(r.get(k), (int, float)) for k in ROUND_KEYS)
                for r in rounds) for rounds in orders.values())
        float(data["all_labels"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise DataError(f"{path}: not a labelling curve (orders of rounds with cases, voxels, bone_dice, "
                        f"mean_dice). {fix}")
    return data


def plot_curve(orders: dict, out: Path) -> None:
    """Test bone Dice (top) and four-class mean Dice (bottom) against cases corrected (left)
    and voxels painted (right), one line per order."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey="row")
    for label, rounds in orders.items():
        for row, key in enumerate(("bone_dice", "mean_dice")):
            for col, x in enumerate(("cases", "voxels")):
                ax = axes[row][col]
                ax.plot([r[x] for r in rounds], [r[key] for r in rounds], marker="o", label=label)
                ax.set_xlabel("cases corrected" if x == "cases" else "voxels painted")
                ax.set_ylabel(YLABEL[key])
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def reached(rounds: list[dict], target: float) -> tuple[int, int] | None:
    """(cases, voxels) of the first round whose test bone Dice is at least `target`."""
    for r in rounds:
        if r["bone_dice"] >= target:
            return int(r["cases"]), int(r["voxels"])
    return None


def curve_html(data: dict, hits: dict, figure: str) -> str:
    full = float(data["all_labels"])
    rows = []
    for label, rounds in data["orders"].items():
        hit, last = hits[label], rounds[-1]
        rows.append(f"<tr><td>{html.escape(str(label))}</td><td>{hit[0] if hit else 'never'}</td>"
                    f"<td>{f'{hit[1]:,}' if hit else '-'}</td><td>{int(last['cases'])}</td>"
                    f"<td>{int(last['voxels']):,}</td></tr>")
    cmd = html.escape(str(data.get("command", "python bench/labelling_curve.py --json results/" + CURVE)))
    return (f"<h3>The labelling curve</h3><p>A simulated annotator (<code>{cmd}</code>) corrects the "
            "synthetic cohort's cases in three orders; after each round the multi-class U-Net is retrained "
            f"and scored on held-out cases. The all-labels model's test bone Dice is {full:.4f}; the table "
            "gives where each order first comes within 0.01 of it.</p>"
            "<table><tr><th>order</th><th>cases corrected</th><th>voxels painted</th><th>pool</th>"
            f"<th>voxels, whole pool</th></tr>{''.join(rows)}</table>"
            f'<figure><img src="{figure}" alt="{figure}"><figcaption>{figure}</figcaption></figure>')


def worklist_html(rows: list[dict] | None, n: int = 10) -> str:
    if not rows:
        return ("<p>No worklist: rank the cases still to label with <code>boneseg correct next</code> "
                "once fold models exist.</p>")
    body = "".join(f"<tr><td>{html.escape(str(r['case']))}</td><td>{float(r['disagreement']):.4f}</td>"
                   f"<td>{r.get('bone_ml', '-')}</td></tr>" for r in rows[:n])
    return ("<h3>Which case next</h3><p>The cases still to label, most uncertain first "
            "(1 - the mean pairwise Dice of the fold models' maps; <code>boneseg correct export</code> "
            f"takes the top one).</p><table><tr><th>case</th><th>disagreement</th><th>bone (ml)</th></tr>"
            f"{body}</table>")


def next_section(curve: dict | None, worklist: list[dict] | None, out: Path) -> tuple[str, dict]:
    """The report's HTML section and its report.json entry; writes fig_labelling_curve.png."""
    parts, entry = ["<h2>What to correct next</h2>", worklist_html(worklist)], {"worklist": worklist}
    if curve is not None:
        figure = "fig_labelling_curve.png"
        plot_curve(curve["orders"], out / figure)
        target = float(curve["all_labels"]) - 0.01
        hits = {label: reached(rounds, target) for label, rounds in curve["orders"].items()}
        parts.append(curve_html(curve, hits, figure))
        entry["labelling_curve"] = {"all_labels": curve["all_labels"], "reached": hits}
    return "".join(parts), entry
