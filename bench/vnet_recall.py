"""Where the study's V-Net misses abdominal bone: recall by structure and by shell thickness.

The quick profile's synthetic cohort is made in a temporary folder and `boneseg propose`'s
own function trains the V-Net on the thigh femur masks and proposes every abdominal CT.
The synthetic anatomy is drawn again with each bone painter tagged, so every true bone
voxel is known to belong to a vertebral body, the posterior elements (arch and
processes, solid dense bone), a rib, the iliac wings and sacrum, or a femoral head, and
to lie on its cortical shell or in its cancellous core. Printed per structure: its shell
thickness, voxels, and the V-Net's recall on the shell and on the core; then the bone
Dice, precision and voxels to paint (`core.labelling.effort`) of the V-Net, of the V-Net
with its holes filled slice by slice, of a perfect V-Net on its grid (the truth resampled
to `propose.spacing_mm` and back, as `predict` resamples: the grid's ceiling) and of
threshold + fill; the V-Net's false positives by the tissue they lie in; and the
held-out thigh Dice.

    python bench/vnet_recall.py [--set propose.steps=300 ...] [--json out.json] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from scipy import ndimage

LABELS = {"vnet": "V-Net", "vnet_fill": "V-Net, holes filled slice by slice",
          "grid": "a perfect V-Net on its grid (the ceiling)", "filled": "threshold + fill"}
# id -> (structure, cortical shell in mm; 0 = solid dense bone)
STRUCTURES = {1: ("vertebral body", 1.8), 2: ("posterior elements", 0.0), 3: ("ribs", 1.3),
              4: ("iliac wings, sacrum", 1.6), 5: ("femoral heads", 2.0)}


def structure_map(index: int, synth_cfg) -> tuple[np.ndarray, np.ndarray]:
    """(structure ids, tissue ids) of abdominal case `index`, drawn as `synth.make_case` draws it."""
    from boneseg.core.data import synth as S

    orig = {n: getattr(S, n) for n in ("_abdomen_slice", "_paint_spine", "_paint_ribs", "_paint_pelvis")}
    slices, tissue, state = [], [], {}

    def tagged(name, tag):
        def paint(sl, P, t, *args):
            before = sl.copy()
            orig[name](sl, P, t, *args)
            changed = sl != before
            bone = S.TISSUE_LABEL[sl] == 1
            ids = tag(sl, t)
            state["s"][changed & bone] = ids[changed & bone] if isinstance(ids, np.ndarray) else ids
            state["s"][changed & ~bone] = 0
        return paint

    def slice_(P, t, a, patient):
        state["s"] = np.zeros(P[0].shape, np.uint8)
        sl = orig["_abdomen_slice"](P, t, a, patient)
        slices.append(state["s"])
        tissue.append(sl)
        return sl

    S._abdomen_slice = slice_
    S._paint_spine = tagged("_paint_spine", lambda sl, t: np.where(sl == S.DENSE, 2, 1).astype(np.uint8))
    S._paint_ribs = tagged("_paint_ribs", lambda sl, t: 3)
    S._paint_pelvis = tagged("_paint_pelvis", lambda sl, t: 4 if t > 0.1 else 5)
    try:
        case = S.make_case("abdomen", index, synth_cfg)
    finally:
        for n, f in orig.items():
            setattr(S, n, f)
    struct = np.stack(slices, axis=-1)
    assert np.array_equal(struct > 0, case.truth.data == 1), "structure map does not cover the bone"
    return struct, np.stack(tissue, axis=-1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[], help="a setting, e.g. propose.steps=300")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", default=None, help="a new folder to keep the cohort and proposals in")
    a = ap.parse_args()
    from boneseg.core.config import build_config, deep_merge, parse_set
    from boneseg.core.data import synth as S
    from boneseg.core.data.synth import synthesize
    from boneseg.core.evaluation.metrics import dice
    from boneseg.core.imaging.nifti import load_ct, load_labels
    from boneseg.core.labelling.effort import effort
    from boneseg.core.labelling.labels import bone_proposals
    from boneseg.core.labelling.vnet import propose, resample

    TISSUES = {v: k.lower() for k, v in vars(S).items() if k.isupper() and isinstance(v, int)}

    base = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="vnet_recall_"))
    if a.keep:
        base.mkdir(parents=True)  # a new folder: never one with a user's files
    try:
        raw = {"data": {"raw_dir": str(base / "raw"), "proposals_dir": str(base / "proposals"), "workers": 1},
               "train": {"device": "cpu"}}
        cfg = build_config(deep_merge(raw, parse_set(a.set)), "--set")
        synthesize(cfg.data.synth, cfg.data.raw_dir, progress=False)
        t0 = time.perf_counter()
        summary = propose(cfg, progress=False)
        wall = time.perf_counter() - t0
        rows, tot = [], {k: np.zeros(4, np.int64) for k in STRUCTURES}  # shell found/all, core found/all
        # tp, pred, truth, voxels to paint: the V-Net, its holes filled slice by slice, a perfect
        # V-Net on its grid (the truth resampled there and back, as predict does), threshold + fill
        agg = {k: [0, 0, 0, 0] for k in ("vnet", "vnet_fill", "grid", "filled")}
        false_pos: dict[str, int] = {}  # the V-Net's false positives by the tissue they lie in
        for i in range(cfg.data.synth.abdomen):
            case = f"abd{i:03d}"
            ct = load_ct(base / "raw" / "abdomen" / case / "ct.nii.gz")
            truth = load_labels(base / "raw" / "abdomen" / case / "truth.nii.gz").data
            pred = load_labels(base / "proposals" / f"{case}.nii.gz").data.astype(bool)
            struct, tissue = structure_map(i, cfg.data.synth)
            for k in STRUCTURES:
                m = struct == k
                shell, core = m & (tissue == S.CORTEX), m & (tissue != S.CORTEX)
                tot[k] += [int((pred & shell).sum()), int(shell.sum()),
                           int((pred & core).sum()), int(core.sum())]
            filled = bone_proposals(ct, "abdomen", cfg.labels)["filled"]
            holes = np.stack([ndimage.binary_fill_holes(pred[..., z]) for z in range(pred.shape[2])], -1)
            low = resample((truth == 1).astype(np.float32), ct.spacing, cfg.propose.spacing_mm, "trilinear")
            grid = F.interpolate(low, size=list(truth.shape), mode="trilinear", align_corners=False)[0, 0]
            for t, n in zip(*np.unique(tissue[pred & (truth != 1)], return_counts=True)):
                false_pos[TISSUES[int(t)]] = false_pos.get(TISSUES[int(t)], 0) + int(n)
            for name, p in (("vnet", pred), ("vnet_fill", holes), ("grid", grid.numpy() > 0.5),
                            ("filled", filled)):
                agg[name][0] += int((p & (truth == 1)).sum())
                agg[name][1] += int(p.sum())
                agg[name][2] += int((truth == 1).sum())
                agg[name][3] += effort(p.astype(np.uint8), truth)["voxels"]
            rows.append({"case": case, "vnet_dice": round(dice(pred, truth == 1), 4),
                         "filled_dice": round(dice(filled, truth == 1), 4)})
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"V-Net {' '.join(a.set) or '(defaults)'}: propose {wall:.0f} s, "
          f"peak RSS {summary['peak_rss_gib']} GiB, held-out thigh Dice {summary['val_dice_mean']}")
    print(f"{'structure':22} {'shell mm':>8} {'voxels':>8} {'recall shell':>12} {'recall core':>11}")
    recall = {}
    for k, (name, mm) in STRUCTURES.items():
        fs, ns, fc, nc = tot[k]
        recall[name] = {"shell_mm": mm, "voxels": int(ns + nc),
                        "shell": round(fs / ns, 3) if ns else None, "core": round(fc / max(nc, 1), 3)}
        print(f"{name:22} {mm:8.1f} {ns + nc:8d} {recall[name]['shell'] if ns else '-':>12} "
              f"{recall[name]['core']:11.3f}")
    out = {}
    for name, (tp, p, t, vox) in agg.items():
        out[name] = {"bone_dice": round(2 * tp / max(p + t, 1), 4), "precision": round(tp / max(p, 1), 4),
                     "recall": round(tp / max(t, 1), 4), "voxels_to_paint": vox}
        label = LABELS[name]
        print(f"{label:41} bone Dice {out[name]['bone_dice']:.4f}  "
              f"precision {out[name]['precision']:.4f}  recall {out[name]['recall']:.4f}  "
              f"voxels to paint {vox:,}")
    tp, p, t, _ = agg["filled"]
    errors = p + t - 2 * tp  # threshold + fill's bone voxels to repaint (false positives + misses)
    print(f"to paint fewer voxels than threshold + fill (neither proposes organs), a proposal's bone errors "
          f"must stay below about {errors:,} of {t:,} bone voxels: a bone Dice of at least "
          f"{2 * (t - errors) / (2 * (t - errors) + errors):.3f} (every error a miss) to "
          f"{2 * t / (2 * t + errors):.3f} (every error a false positive)")
    print("V-Net false positives by tissue: " + ", ".join(f"{k} {v:,}" for k, v in
                                                         sorted(false_pos.items(), key=lambda kv: -kv[1])))
    if a.json:
        Path(a.json).write_text(json.dumps({"sets": a.set, "false_positives": false_pos,
                                            "propose_s": round(wall, 1), "summary": summary,
                                            "recall": recall, "pooled": out, "cases": rows}, indent=1))


if __name__ == "__main__":
    main()
