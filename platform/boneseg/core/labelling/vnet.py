"""The study's "secondary mask": a 3-D V-Net (MONAI) learnt from the thigh cohort's
threshold femur masks, applied to every abdominal CT (`boneseg propose`).

- Inputs are resampled to `propose.spacing_mm` (trilinear CT, nearest mask) and windowed
  to [0, 1] with `propose.hu_window`, or `data.window` as the slices are where it is null.
- Training: random `propose.crop` crops (a share centred on a femur voxel), Dice + CE,
  the U-Net's runtime (autocast, GradScaler, AdamW + OneCycle: `core.networks.runtime`,
  `networks.optim`), `propose.val_cases` thigh CTs held out for the validation Dice.
- Inference: `monai.inferers.sliding_window_inference` with `propose.window` (MONAI pads
  a CT smaller than a window and crops back, so no side has to be a multiple of 16), the
  bone probability resampled back onto the CT's own grid, thresholded at 0.5.

The femur masks are the labels stage's own function (`labelling.bone_proposals`),
computed here from data/raw, so the DAG has no cycle: raw -> propose -> labels.
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from boneseg.core.config import Config
from boneseg.core.data.preprocess import apply_window
from boneseg.core.evaluation.metrics import dice
from boneseg.core.imaging.nifti import Volume, load_ct, to_nifti_bytes
from boneseg.core.io import atomic_dir
from boneseg.core.labelling.labels import bone_proposals
from boneseg.core.layout import PROPOSE_SUMMARY, find_cases
from boneseg.core.networks.losses import segmentation_loss
from boneseg.core.networks.optim import Stepper
from boneseg.core.networks.runtime import (
    Runtime,
    place_model,
    resolve_device,
    seed_everything,
)
from boneseg.core.parallel import Pool, file_sizes
from boneseg.errors import DataError

SUMMARY = PROPOSE_SUMMARY
NO_THIGH = "no thigh CT to learn from"
CORTEX_HU = 650.0  # below this a femur voxel is marrow (core_lift raises it toward this level)


def vnet_window(cfg: Config) -> tuple[float, float]:
    """The V-Net's input window (HU): propose.hu_window, else the slices' data.window."""
    return tuple(cfg.propose.hu_window or cfg.data.window)


def level(hu: float, window) -> float:
    """`hu` on the windowed 0..1 scale (`apply_window` of one value)."""
    return float(apply_window(np.asarray(hu), window))


def build_vnet(dropout: float = 0.0):
    from monai.networks.nets import VNet

    p = dropout or None  # MONAI: None = no dropout layer (the up path's second one takes a float)
    return VNet(spatial_dims=3, in_channels=1, out_channels=2, dropout_prob_down=p,
                dropout_prob_up=(p, float(dropout)))


def resample(vol: np.ndarray, spacing, target, mode: str) -> torch.Tensor:
    """(X, Y, Z) -> (1, 1, X', Y', Z') float32 on `target` spacing."""
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(vol.shape, spacing, target)]
    t = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))


def thigh_volumes(cfg: Config, cases: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    """Each thigh CT and its femur mask at the V-Net's spacing: (image, mask, case)."""
    out = []
    for c in cases:
        ct = load_ct(c["ct"])
        femur = bone_proposals(ct, "thigh", cfg.labels)["filled"]
        hu = resample(ct.data, ct.spacing, cfg.propose.spacing_mm, "trilinear")
        img = apply_window(hu, vnet_window(cfg))
        out.append((img, resample(femur, ct.spacing, cfg.propose.spacing_mm, "nearest"), c))
    return out


def random_crops(vols, crop, n: int, foreground: float, g: torch.Generator, zoom=(1.0, 1.0)):
    """n crops from random volumes: (n, 1, *crop) images, (n, *crop) int64 masks; a volume
    smaller than the crop is padded (image 0 = below the window, mask 0). With `zoom`
    (lo, hi), each crop covers crop / s in-plane for a random s in [lo, hi], resampled to
    `crop`: below 1 averaged down, so the femur appears smaller, its cortex thinner and
    partial-volumed, as the abdomen's ribs are; above 1 interpolated up, so its core is as
    wide as a vertebral body's (no random number is drawn where zoom is (1, 1))."""
    xs, ys = [], []
    for _ in range(n):
        img, mask, _ = vols[int(torch.randint(len(vols), (1,), generator=g))]
        size = list(crop)
        if zoom != (1.0, 1.0):
            s = zoom[0] + (zoom[1] - zoom[0]) * float(torch.rand((), generator=g))
            size[:2] = [int(np.ceil(c / s)) for c in crop[:2]]
        pad = [p for d in reversed(range(3)) for p in (0, max(0, size[d] - img.shape[2 + d]))]
        img, mask = F.pad(img, pad), F.pad(mask, pad)
        fg = torch.nonzero(mask[0, 0])
        if len(fg) and torch.rand((), generator=g) < foreground:  # centred on a femur voxel
            centre = fg[int(torch.randint(len(fg), (1,), generator=g))]
            lo = [int(min(max(0, centre[d] - size[d] // 2), img.shape[2 + d] - size[d])) for d in range(3)]
        else:
            lo = [int(torch.randint(img.shape[2 + d] - size[d] + 1, (1,), generator=g)) for d in range(3)]
        sl = tuple(slice(lo[d], lo[d] + size[d]) for d in range(3))
        x, y = img[(0, 0, *sl)], mask[(0, 0, *sl)]
        if size != list(crop):  # shrunk: area averaging (a coarser grid's partial volume); grown: trilinear
            how = {"mode": "area"} if size[0] >= crop[0] else {"mode": "trilinear", "align_corners": False}
            x = F.interpolate(x[None, None], size=list(crop), **how)[0, 0]
            y = (F.interpolate(y[None, None].float(), size=list(crop), **how)[0, 0] >= 0.5).to(y.dtype)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs)[:, None], torch.stack(ys).long()


def augment(x: torch.Tensor, y: torch.Tensor, core_lift: float, contrast: float, g: torch.Generator,
            cortex: float, thin_shell: float = 0.0):
    """Intensity augmentation of windowed crops (values in [0, 1]). `thin_shell`: in this share
    of the crops the femur's cortex is thinned to one voxel in-plane (its inner cortex takes the
    crop's mean marrow value), as a vertebra's or rib's shell is. `core_lift`: the femur's
    marrow (inside the mask, darker than cortex) is raised by up to this much, per crop, so a
    bright shell around a brighter core, as in cancellous vertebrae and ribs, is also bone.
    `contrast`: each crop is scaled by 1 + u, u in [-contrast, contrast]. Off (0) draws nothing.
    `cortex`: CORTEX_HU on the V-Net's window."""
    n = x.shape[0]
    if thin_shell:
        pick = (torch.rand(n, generator=g) < thin_shell).view(n, 1, 1, 1, 1)
        m = (y[:, None] == 1).float()
        inner = -F.max_pool3d(-m, (3, 3, 1), 1, (1, 1, 0)) > 0.5  # the mask less its one-voxel rim
        marrow = (m > 0) & (x < cortex)
        fill = (x * marrow).sum((2, 3, 4), keepdim=True) / marrow.sum((2, 3, 4), keepdim=True).clamp(min=1)
        x = torch.where(pick & inner & (x >= cortex), fill.expand_as(x), x)
    if core_lift:
        lift = torch.rand(n, generator=g).view(n, 1, 1, 1, 1) * core_lift
        core = (y[:, None] == 1) & (x < cortex)
        x = torch.where(core, torch.minimum(x + lift, torch.full_like(x, cortex)), x)
    if contrast:
        u = (torch.rand(n, generator=g) * 2 - 1).view(n, 1, 1, 1, 1) * contrast
        x = (x * (1 + u)).clamp(0, 1)
    return x


def predict(model, ct: Volume, cfg: Config, rt: Runtime) -> np.ndarray:
    """The bone mask of one CT on its own grid, (X, Y, Z) bool."""
    from monai.inferers import sliding_window_inference

    pc = cfg.propose
    hu = resample(ct.data, ct.spacing, pc.spacing_mm, "trilinear")
    img = apply_window(hu, vnet_window(cfg)).to(rt.device)
    model.eval()
    with torch.no_grad(), rt.autocast():
        logits = sliding_window_inference(img, list(pc.window), 2, model, overlap=pc.overlap)
    prob = logits.float().softmax(1)[:, 1:2]
    back = F.interpolate(prob, size=list(ct.shape), mode="trilinear", align_corners=False)
    return back[0, 0].cpu().numpy() > 0.5


def train_vnet(cfg: Config, train, rt: Runtime):
    pc = cfg.propose
    # the U-Net's optimiser and schedule; fused AdamW (one kernel over the V-Net's 45.6 M parameters)
    tc = cfg.train.model_copy(update={"lr": pc.lr, "batch_size": pc.batch_size, "channels_last": False,
                                      "fused_optimizer": True})
    model = place_model(build_vnet(pc.dropout), rt.device, False)  # 3-D: no channels_last
    stepper = Stepper.build(model, tc, pc.steps, 1, rt)
    g, losses = torch.Generator().manual_seed(pc.seed), []
    model.train()
    for _ in range(pc.steps):
        x, y = random_crops(train, pc.crop, pc.batch_size, pc.foreground, g, tuple(pc.zoom))
        x = augment(x, y, pc.core_lift, pc.contrast, g, level(CORTEX_HU, vnet_window(cfg)), pc.thin_shell)
        with rt.autocast():
            logits = model(x.to(rt.device))
        loss = segmentation_loss(logits, y.to(rt.device), "dice_ce")
        stepper.step(loss)
        losses.append(float(loss.detach()))
    return model, losses


def peak_rss_gib() -> float:
    """The peak resident memory of this process or of its largest worker, in GiB."""
    kib = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return round(kib / 2**20, 2)


_MODELS: dict[str, torch.nn.Module] = {}  # a worker's V-Net, read once per weights file
WEIGHTS = ".vnet.safetensors"


def propose_case(case: dict, weights: Path, cfg: Config, out: Path) -> float:
    """One abdominal CT's proposal, out/<case>.nii.gz, from the V-Net's weights file (a
    `core.parallel` case function); returns its seconds."""
    from safetensors.torch import load_file

    t0 = time.perf_counter()
    rt = Runtime.on(resolve_device(cfg.train), cfg.train)  # the worker's threads as its pool set them
    if str(weights) not in _MODELS:
        _MODELS.clear()
        model = place_model(build_vnet(cfg.propose.dropout), rt.device, False)
        model.load_state_dict(load_file(str(weights), device=str(rt.device)))
        _MODELS[str(weights)] = model
    ct = load_ct(case["ct"])
    mask = predict(_MODELS[str(weights)], ct, cfg, rt)
    (out / f"{case['case']}.nii.gz").write_bytes(to_nifti_bytes(mask.astype(np.uint8), ct.affine, gz=True))
    return round(time.perf_counter() - t0, 2)


def propose(cfg: Config, progress: bool = True, pool: Pool | None = None) -> dict:
    """Train the V-Net on the thigh cohort, write data/proposals/<case>.nii.gz for every
    abdominal CT (on `pool`) and data/proposals/propose.json; returns that summary."""
    from safetensors.torch import save_file

    pc = cfg.propose
    cases = find_cases(cfg.data.raw_dir)
    thighs = [c for c in cases if c["cohort"] == "thigh"]
    abdomen = [c for c in cases if c["cohort"] == "abdomen"]
    if not thighs:  # a lab's abdominal cohort alone: labels start from threshold + fill
        summary = {"skipped": NO_THIGH, "train_cases": 0, "abdominal_cases": len(abdomen)}
        with atomic_dir(cfg.data.proposals_dir) as tmp:
            (Path(tmp) / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
        return summary
    if len(thighs) <= pc.val_cases:
        raise DataError(f"{cfg.data.raw_dir}: {len(thighs)} thigh CTs, but propose.val_cases is "
                        f"{pc.val_cases}: none left to train the V-Net. Add thigh CTs (data.synth.thigh) "
                        "or lower propose.val_cases.")
    rt = Runtime.of(cfg.train)
    seed_everything(pc.seed)
    val = thighs[:pc.val_cases]  # scored on their own grid below; only the rest is resampled for training
    train = thigh_volumes(cfg, thighs[pc.val_cases:])
    t0 = time.perf_counter()
    model, losses = train_vnet(cfg, train, rt)
    train_s = time.perf_counter() - t0
    val_dice = {}
    for c in val:  # on the CT's own grid against its femur mask, as the labels stage makes it
        ct = load_ct(c["ct"])
        val_dice[c["case"]] = dice(predict(model, ct, cfg, rt),
                                   bone_proposals(ct, "thigh", cfg.labels)["filled"])
    with atomic_dir(cfg.data.proposals_dir) as tmp:
        # the abdominal CTs on `pool`: the weights reach the workers as a file in the output's
        # temporary folder (on the shared filesystem for Ray tasks), deleted before it is committed
        weights = Path(tmp) / WEIGHTS
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
        if rt.device.type == "cuda":  # one GPU: the cases in this process, one after another
            pool = Pool()
        try:
            secs = (pool or Pool()).map(propose_case, [(c, weights, cfg, Path(tmp)) for c in abdomen],
                                        [c["case"] for c in abdomen], "propose", progress,
                                        file_sizes(c["ct"] for c in abdomen))
        finally:
            weights.unlink(missing_ok=True)
            _MODELS.clear()
        infer_s = {c["case"]: s for c, s in zip(abdomen, secs)}
        summary = {
            "train_cases": len(train), "val_cases": len(val), "steps": pc.steps, "crop": list(pc.crop),
            "spacing_mm": list(pc.spacing_mm),
            "train_loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
            "val_dice": {k: round(v, 4) for k, v in val_dice.items()},
            "val_dice_mean": round(float(np.nanmean(list(val_dice.values()))), 4),
            "train_s": round(train_s, 1), "infer_s": infer_s,
            "infer_s_mean": round(float(np.mean(list(infer_s.values()))), 2) if infer_s else None,
            "peak_rss_gib": peak_rss_gib(),
        }
        (Path(tmp) / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    return summary
