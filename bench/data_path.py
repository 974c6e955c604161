"""The training data path alone, at the paper's 320 x 320 and batch 32, on one CPU thread:
the DataLoader over `SliceDataset` (per-sample Python over memory maps, num_workers 0)
against `DeviceSlices` (train.data_on_device: one gather per batch), side by side on
the same slices, both followed by the paper's augmentation (whole slices, no crop).
Prints samples/s and the ratio to 5,000 img/s, an H200's expected step rate:

  a ResNet-34 U-Net train step at 320 x 320 is 73.1 GFLOP per image (forward + backward,
  torch.utils.flop_counter); an H200 gives ~989 dense bf16 TFLOP/s; at ~37 % of that
  (typical for conv nets in bf16 with channels_last) that is ~5,000 img/s.

    python bench/data_path.py [--cases 4] [--slices 48] [--batches 12]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from boneseg.core.config import Config
from boneseg.core.data.dataset import SliceDataset, make_loader
from boneseg.core.data.device_data import DeviceSlices
from boneseg.core.data.slices import build_slices
from boneseg.core.data.synth import synthesize
from boneseg.core.engine.augment import prepare_batch
from boneseg.core.labelling.labels import derive_labels
from boneseg.core.layout import load_index
from boneseg.core.networks.runtime import Runtime, use_channels_last

H200_IMG_PER_S = 5000.0
CPU = torch.device("cpu")


def rate(batches, n_batches: int, tc, amp: bool) -> float:
    """Samples/s over n_batches (after one warm-up batch), each batch taken to what the
    train step gets (`prepare_batch`: the step's dtypes, augmentation, memory format)."""
    rt = Runtime(CPU, torch.bfloat16 if amp else None, use_channels_last(tc.channels_last, CPU))
    it = iter(batches)
    next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(n_batches):
        x, y = prepare_batch(*next(it), tc, rt)
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--batches", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config.model_validate({"data": {
            "raw_dir": f"{tmp}/raw", "labels_dir": f"{tmp}/labels", "corrections_dir": f"{tmp}/c",
            "proposals_dir": f"{tmp}/p",
            "splits_file": f"{tmp}/splits.json", "slices_dir": f"{tmp}/slices", "image_size": 320,
            "synth": {"seed": 1, "abdomen": args.cases, "thigh": 0, "matrix": 320, "slices": args.slices}}})
        synthesize(cfg.data.synth, cfg.data.raw_dir, progress=False)
        derive_labels(cfg, progress=False)
        build_slices(cfg, progress=False)
        cases = sorted(load_index(cfg.data.slices_dir)["cases"])
        ds = SliceDataset(cfg.data.slices_dir, cases, "multi", "hard")
        tc = cfg.train.model_copy(update={"batch_size": 32, "num_workers": 0})
        per_epoch = len(ds) // 32
        if per_epoch == 0:
            raise SystemExit(f"{len(ds)} slices: fewer than one batch of 32; raise --cases or --slices")
        epochs = -(-(args.batches + 1) // per_epoch)

        def loader_batches():
            for e in range(epochs):
                yield from make_loader(ds, tc, e, 0)

        dev = DeviceSlices.from_dataset(ds, CPU, channels_last=True)  # as the paper profile trains

        def device_batches():
            for e in range(epochs):
                yield from dev.batches(32, e, 0)

        out = {"slices": len(ds), "batch": 32, "size": 320, "threads": 1}
        # the paper profile on a GPU: bf16 autocast, whole slices, channels_last, augmentation on
        paper = tc.model_copy(update={"patch_size": None, "channels_last": True})
        augmented = paper.model_copy(update={"augment": True})
        for key, step_tc, amp in (("amp_step", paper, True), ("fp32_step", paper, False),
                                  ("amp_step_with_augment", augmented, True)):
            old = rate(loader_batches(), args.batches, step_tc, amp)
            new = rate(device_batches(), args.batches, step_tc, amp)
            out[key] = {"dataloader_samples_per_s": round(old, 1), "device_samples_per_s": round(new, 1),
                        "ratio_new_over_old": round(new / old, 2),
                        "ratio_new_over_h200_5000": round(new / H200_IMG_PER_S, 3)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
