"""`boneseg preview`: a PNG montage of a CT (axial + coronal, HU window, label overlay)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from boneseg.config import Config
from boneseg.errors import DataError
from boneseg.nifti import LABEL_IDS, Volume, atomic_path, load_ct, load_labels

LABEL_COLORS = {1: (1.0, 0.95, 0.2), 2: (0.2, 0.8, 0.2), 3: (0.9, 0.1, 0.1), 4: (0.6, 0.3, 0.9)}


def find_case(ref: str, cfg: Config) -> tuple[Path, Path | None]:
    """CASE id or a CT file -> (ct path, label path or None)."""
    p = Path(ref)
    if p.is_file():
        truth = p.with_name("truth.nii.gz")
        return p, truth if truth.is_file() and truth != p else None
    hits = sorted(Path(cfg.data.raw_dir).glob(f"*/{ref}/ct.nii.gz"))
    if not hits:
        raise DataError(f"{ref}: neither a file nor a case under {cfg.data.raw_dir}/<cohort>/. "
                        "Pass a .nii.gz path or run `boneseg synth` / `boneseg import` first.")
    derived = Path(cfg.data.labels_dir) / f"{ref}.nii.gz"
    truth = hits[0].with_name("truth.nii.gz")
    return hits[0], derived if derived.is_file() else (truth if truth.is_file() else None)


def window(hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1)


def overlay(gray: np.ndarray, labels: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if labels is None:
        return rgb
    for lid, color in LABEL_COLORS.items():
        m = labels == lid
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.array(color)
    return rgb


def render(ct: Volume, labels: Volume | None, out: Path, title: str, hu_window=(-300, 1200)) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nz = ct.shape[2]
    zs = [int(nz * f) for f in (0.15, 0.5, 0.85)]
    sx, sy, sz = ct.spacing
    panels = []
    for z in zs:  # axial: show anterior up, patient right on the viewer's left (radiological)
        lab = labels.data[:, :, z] if labels is not None else None
        panels.append((f"axial z={z}", overlay(window(ct.data[:, :, z], *hu_window), lab), sy / sx))
    y = ct.shape[1] // 2
    if labels is not None and (labels.data == 1).any():  # coronal cut through the bones
        y = int(np.round(np.nonzero(labels.data == 1)[1].mean()))
    lab = labels.data[:, y, :] if labels is not None else None
    panels.append((f"coronal y={y}", overlay(window(ct.data[:, y, :], *hu_window), lab), sz / sx))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4))
    for ax, (name, img, aspect) in zip(axes, panels):
        ax.imshow(np.flip(np.transpose(img, (1, 0, 2)), axis=(0, 1)), aspect=aspect, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in LABEL_COLORS.values()]
    fig.legend(handles, [LABEL_IDS[k] for k in LABEL_COLORS], loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(f"{title}  (window {hu_window[0]}..{hu_window[1]} HU)", fontsize=10)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return out


def histogram(ct: Volume, labels: Volume, out: Path, title: str) -> Path:
    """HU histogram of each label class (log counts), with the default bone thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = np.arange(-300, 1800, 20)
    names = {0: "background (body)", **{k: LABEL_IDS[k] for k in LABEL_COLORS}}
    body = ct.data > -500
    for lid, name in names.items():
        m = (labels.data == lid) & body
        if m.any():
            ax.hist(ct.data[m], bins=bins, histtype="step", lw=1.5, label=f"{name} (n={int(m.sum())})",
                    color=LABEL_COLORS.get(lid, (0.4, 0.4, 0.4)))
    ax.set_yscale("log")
    ax.set_xlabel("HU")
    ax.set_ylabel("voxels")
    ax.axvline(200, color="k", ls="--", lw=0.8)
    ax.text(205, ax.get_ylim()[1] * 0.5, "200 HU", fontsize=7)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("preview", help="write a PNG montage of a case or CT file (axial + coronal, labels)")
    p.add_argument("case", metavar="CASE_OR_FILE")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--labels", help="label map to overlay (default: derived labels, else truth)")
    p.add_argument("--histogram", metavar="PNG", help="also write the HU histogram of each label class")
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    ct_path, lab_path = find_case(args.case, cfg)
    if args.labels:
        lab_path = Path(args.labels)
    ct = load_ct(ct_path)
    labels = load_labels(lab_path, ct, ct_path) if lab_path else None
    title = args.case if not Path(args.case).is_file() else Path(args.case).name
    render(ct, labels, Path(args.out), title)
    if args.histogram:
        if labels is None:
            raise DataError(f"{args.case}: --histogram needs a label map (none found; pass --labels).")
        histogram(ct, labels, Path(args.histogram), f"{title}: HU per class")
    print(f"preview: wrote {args.out}")
    return 0
