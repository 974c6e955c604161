"""Where a CPU training step's time goes: forward, backward and optimizer step of the
ResNet-34 U-Net (multi-class, batch 4, 1 thread, as one sweep trial runs), for patch
sizes and memory formats side by side, and the fixed part that does not scale with
pixels (the 32 px row). Random weights and data: the time does not depend on them.
Then inference, as validation and `segment` run it: 32 whole 160 px slices, no grad, with
weights and input in either memory format (`train.channels_last: auto` trains contiguous
on a CPU and infers channels_last).
    python bench/step_parts.py [--sizes 96 64 32] [--steps 5]
"""
from __future__ import annotations

import argparse
import time

import torch

from boneseg.core.config import Config
from boneseg.core.networks.losses import segmentation_loss
from boneseg.core.networks.models import build_model
from boneseg.core.networks.optim import make_optim


def measure(channels_last: bool, fused: bool, px: int, steps: int, warm: int = 3) -> dict:
    tc = Config.model_validate({"train": {"device": "cpu", "fused_optimizer": fused}}).train
    model, _ = build_model(5, "none")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt, sched = make_optim(model, tc, warm + steps, 1)
    x = torch.randn(4, 3, px, px).to(memory_format=fmt)
    y = torch.randint(0, 5, (4, px, px))
    parts = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    for i in range(warm + steps):
        t0 = time.perf_counter()
        loss = segmentation_loss(model(x), y, "dice_ce")
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        sched.step()
        t3 = time.perf_counter()
        if i >= warm:
            for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[k] += dt * 1000 / steps
    return parts


def inference_seconds(weights, inputs, px: int = 160, batch: int = 32, reps: int = 2) -> float:
    model, _ = build_model(5, "none")
    model = model.to(memory_format=weights).eval()
    x = torch.randn(batch, 3, px, px).contiguous(memory_format=inputs)
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 64, 32])
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    settings = [("channels_last, AdamW (the earlier profile)", True, False),
                ("channels_last, fused AdamW", True, True),
                ("contiguous, fused AdamW (the quick profile on CPU)", False, True)]
    base = {}
    print("ResNet-34 U-Net train step, batch 4, 1 thread (ms; ratio = the first row's step / this one):")
    for name, cl, fused in settings:
        for px in a.sizes:
            p = measure(cl, fused, px, a.steps)
            total = sum(p.values())
            base.setdefault(px, total)
            print(f"  {name:<50} {px:>3} px: forward {p['forward']:4.0f}, backward {p['backward']:4.0f}, "
                  f"optimizer {p['optimizer']:3.0f}, step {total:4.0f}  ratio {base[px] / total:.2f}",
                  flush=True)
    cl, cf = torch.channels_last, torch.contiguous_format
    print("Inference, 32 slices of 160 px, no grad (s; ratio = channels_last / this one):")
    base = None
    for name, w, x in (("channels_last weights and input", cl, cl), ("contiguous weights and input", cf, cf),
                       ("contiguous weights, channels_last input (auto)", cf, cl)):
        secs = inference_seconds(w, x)
        base = base or secs
        print(f"  {name:<48} {secs:5.2f} s  ratio {base / secs:.2f}", flush=True)


if __name__ == "__main__":
    main()
