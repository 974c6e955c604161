"""Does torch.compile speed up the training step? The ResNet-34 U-Net, eager vs
`torch.compile(model)` (inductor, gcc here), side by side, same weights and batch:
time of the first step (compilation included) and the mean of the next steps.

    python bench/compile_step.py [--size 96] [--batch 8] [--steps 10] [--threads 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from boneseg.core.networks.losses import segmentation_loss
from boneseg.core.networks.models import build_model


def timed(compiled: bool, args) -> tuple[float, float]:
    torch.manual_seed(0)
    dev = torch.device(args.device)
    net, _ = build_model(5, "none")
    net.to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    model = torch.compile(net) if compiled else net
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (args.batch, args.size, args.size), device=dev)

    def step():
        loss = segmentation_loss(model(x), y, "dice_ce", 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    return first, (time.perf_counter() - t0) / args.steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    eager, comp = timed(False, args), timed(True, args)
    print(json.dumps({"size": args.size, "batch": args.batch, "device": args.device,
                      "eager_first_s": round(eager[0], 2), "eager_step_s": round(eager[1], 4),
                      "compiled_first_s": round(comp[0], 2), "compiled_step_s": round(comp[1], 4),
                      "speedup_compiled_over_eager": round(eager[1] / comp[1], 3)}))


if __name__ == "__main__":
    main()
