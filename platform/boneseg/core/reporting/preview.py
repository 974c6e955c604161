"""Previews: a PNG montage of a CT (axial + coronal, HU window, label overlay)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from boneseg.core.config import Config
from boneseg.core.data.preprocess import apply_window
from boneseg.core.imaging.nifti import Volume
from boneseg.core.io import atomic_path
from boneseg.core.labelmap import LABEL_COLOURS, LABEL_IDS
from boneseg.core.layout import find_case, label_path
from boneseg.core.reporting.figures import pyplot
from boneseg.errors import DataError

COLOURS = {k: tuple(c / 255 for c in rgb) for k, rgb in LABEL_COLOURS.items()}  # matplotlib's 0-1 RGB
DISPLAY_WINDOW = (-300, 1200)  # HU shown in previews: wider than the model's window, for a person


def preview_inputs(ref: str, cfg: Config) -> tuple[Path, Path | None]:
    """CASE id or a CT file -> (ct path, label path or None): a case's derived labels,
    else its truth."""
    p = Path(ref)
    if p.is_file():
        truth = p.with_name("truth.nii.gz")
        return p, truth if truth.is_file() and truth != p else None
    if p.suffix in (".gz", ".nii") or "/" in ref:
        raise DataError(f"{ref}: file not found. Pass a CT .nii/.nii.gz or a case id (e.g. abd000).")
    case = find_case(cfg.data.raw_dir, ref)
    derived = label_path(cfg.data.labels_dir, ref)
    return case["ct"], derived if derived.is_file() else case["truth"]


def overlay(gray: np.ndarray, labels: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if labels is None:
        return rgb
    for lid, color in COLOURS.items():
        m = labels == lid
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.array(color)
    return rgb


def render(ct: Volume, labels: Volume | None, out: Path, title: str, hu_window=DISPLAY_WINDOW) -> Path:
    plt = pyplot()
    nz = ct.shape[2]
    zs = [int(nz * f) for f in (0.15, 0.5, 0.85)]
    sx, sy, sz = ct.spacing
    panels = []
    for z in zs:  # axial: show anterior up, patient right on the viewer's left (radiological)
        lab = labels.data[:, :, z] if labels is not None else None
        panels.append((f"axial z={z}", overlay(apply_window(ct.data[:, :, z], hu_window), lab), sy / sx))
    y = ct.shape[1] // 2
    if labels is not None and (labels.data == 1).any():  # coronal cut through the bones
        y = int(np.round(np.nonzero(labels.data == 1)[1].mean()))
    lab = labels.data[:, y, :] if labels is not None else None
    panels.append((f"coronal y={y}", overlay(apply_window(ct.data[:, y, :], hu_window), lab), sz / sx))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4))
    for ax, (name, img, aspect) in zip(axes, panels):
        ax.imshow(np.flip(np.transpose(img, (1, 0, 2)), axis=(0, 1)), aspect=aspect, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    fig.legend(handles, [LABEL_IDS[k] for k in COLOURS], loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(f"{title}  (window {hu_window[0]}..{hu_window[1]} HU)", fontsize=10)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return out


def histogram(ct: Volume, labels: Volume, out: Path, title: str) -> Path:
    """HU histogram of each label class (log counts), with the default bone thresholds marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = np.arange(-300, 1800, 20)
    names = {0: "background (body)", **{k: LABEL_IDS[k] for k in COLOURS}}
    body = ct.data > -500
    for lid, name in names.items():
        m = (labels.data == lid) & body
        if m.any():
            ax.hist(ct.data[m], bins=bins, histtype="step", lw=1.5, label=f"{name} (n={int(m.sum())})",
                    color=COLOURS.get(lid, (0.4, 0.4, 0.4)))
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
