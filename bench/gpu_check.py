"""The one prepared GPU check (run by bench/gpu_check.sh on a GPU machine; its --smoke
mode runs on CPU in the test suite, so it cannot rot). Writes OUT/gpu_check.json and
OUT/gpu_check.md (a readable table):

1. facts: torch, CUDA, cuDNN, the GPU, its memory, bf16 support;
2. the train step in img/s at 320 x 320, batch 32: fp32, fp16 + GradScaler and bf16,
   channels_last on/off, torch.compile off/on (boneseg's own step: runtime + losses);
3. the data path (`train.data_on_device`) in samples/s on the device, with augmentation;
4. one paper-profile trial (`--experiment paper`: whole 320 x 320 slices, batch 32,
   Dice loss, augmentation) for one epoch on a small synthetic cohort, timed per image,
   with its peak GPU memory;
5. four such trials at once in four processes (as 0.25-GPU Ray trials would share the
   GPU) against the four run one after another;
6. the projected wall time of the paper grid (16 trials x 25 epochs x ~3,088 slices)
   on one GPU, from the measured rates.

    python bench/gpu_check.py --out DIR [--smoke] [--budget-s 420]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PAPER_SLICES, PAPER_TRIALS, PAPER_EPOCHS = 3088, 16, 25  # the study: 54 train CTs x ~57 slices


def facts() -> dict:
    out = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(
            gpu=p.name,
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            capability=f"{p.major}.{p.minor}",
            bf16=torch.cuda.is_bf16_supported(),
            gpus=torch.cuda.device_count(),
        )
    return out


def one_step_rate(dev, x0, y, amp: str, cl: bool, comp: bool, steps: int) -> dict:
    from boneseg.core.config import TrainConfig
    from boneseg.core.networks.losses import segmentation_loss
    from boneseg.core.networks.models import build_model
    from boneseg.core.networks.optim import Stepper
    from boneseg.core.networks.runtime import Runtime

    torch.manual_seed(0)
    tc = TrainConfig(amp=amp, channels_last=cl)
    rt = Runtime.on(dev, tc)
    net, _ = build_model(5, "none")
    net.to(dev)
    if cl:
        net.to(memory_format=torch.channels_last)
    stepper = Stepper.build(net, tc, steps + 3, 1, rt)
    model = torch.compile(net) if comp else net
    x = x0.contiguous(memory_format=torch.channels_last) if cl else x0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with rt.autocast():
            logits = model(x)
        stepper.step(segmentation_loss(logits, y, "dice", 1.0))

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    step()
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    secs = (time.perf_counter() - t0) / steps
    return {
        "amp": "fp32" if amp == "off" else amp,
        "channels_last": cl,
        "compile": comp,
        "img_per_s": round(x0.shape[0] / secs, 1),
        "first_step_s": round(first, 2),
        "peak_gib": peak_gib(dev),
    }


def step_rates(dev, size: int, batch: int, steps: int, compile_too: bool) -> list[dict]:
    x0 = torch.rand(batch, 3, size, size, device=dev)
    y = torch.randint(0, 5, (batch, size, size), device=dev)
    return [
        one_step_rate(dev, x0, y, amp, cl, comp, steps)
        for amp in ("off", "fp16", "bf16")
        for cl in (True, False)
        for comp in ((False, True) if compile_too else (False,))
    ]


def sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(dev) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None


def cohort(tmp: Path, smoke: bool) -> Path:
    """A small synthetic paper-profile cohort (params + data), built once: returns params.yaml."""
    from boneseg.core.config import load_config, to_yaml
    from boneseg.core.data.slices import build_slices
    from boneseg.core.data.splits import write_splits
    from boneseg.core.data.synth import synthesize
    from boneseg.core.labelling.labels import derive_labels

    sets = [
        f"data.raw_dir={tmp}/raw",
        f"data.labels_dir={tmp}/labels",
        f"data.corrections_dir={tmp}/c",
        f"data.proposals_dir={tmp}/p",
        f"data.splits_file={tmp}/splits.json",
        f"data.slices_dir={tmp}/slices",
        "splits.folds=4",
        "splits.test_cases=1",
        "model.encoder_weights=none",
        "train.epochs=1",
        "train.num_workers=0",
        f"train.out_dir={tmp}/train",
        "data.synth.thigh=0",
    ]
    if smoke:
        sets += [
            "data.image_size=64",
            "data.synth.abdomen=5",
            "data.synth.matrix=64",
            "data.synth.slices=8",
            "train.batch_size=4",
        ]
    else:
        sets += ["data.synth.abdomen=9", "data.synth.matrix=512", "data.synth.slices=60"]
    cfg = load_config(ROOT / "params.yaml", "paper", sets)
    synthesize(cfg.data.synth, cfg.data.raw_dir, progress=False)
    derive_labels(cfg, progress=False)
    write_splits(cfg)
    build_slices(cfg, progress=False)
    params = tmp / "params.yaml"  # the merged settings: no experiment file to apply again
    params.write_text(to_yaml(cfg).replace("experiment: paper\n", "experiment: null\n"))
    return params


TRIAL = """
import json, sys, time, torch
from boneseg.core.config import load_config
from boneseg.core.engine.training import fit
cfg = load_config(sys.argv[1])
cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"out_dir": sys.argv[3],
                                                                   "threads": int(sys.argv[4])})})
t0 = time.perf_counter()
r = fit(cfg, "multi-random", int(sys.argv[2]), resume=False)
h = r.history[0]
peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
print(json.dumps({"trial_s": time.perf_counter() - t0, "train_s": h["train_seconds"],
                  "img_per_s": h["images_per_s"], "val_s": h.get("val_seconds", 0.0), "peak_gib": peak}))
"""


def run_trials(params: Path, tmp: Path, folds: list[int], parallel: bool) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    procs = []
    for f in folds:
        threads = max(1, (os.cpu_count() or 1) // (len(folds) if parallel else 1))  # each its CPU share
        cmd = [
            sys.executable,
            "-c",
            TRIAL,
            str(params),
            str(f),
            str(tmp / f"out{f}-{parallel}"),
            str(threads),
        ]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        if not parallel:
            p.wait()
    outs = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"trial failed: {err[-1500:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return time.perf_counter() - t0, outs


def data_rate(dev, size: int, batch: int, batches: int) -> dict:
    """train.data_on_device on synthetic slices, on the device: the gather, then what the
    bf16 step gets (`prepare_batch`: int64 ids, channels_last), without and with the
    paper's augmentation."""
    from boneseg.core.config import TrainConfig
    from boneseg.core.data.device_data import DeviceSlices
    from boneseg.core.engine.augment import prepare_batch
    from boneseg.core.networks.runtime import Runtime

    tc = TrainConfig(amp="bf16")
    n = 512  # the tensors directly: no files needed for a rate
    nbr = torch.clamp(torch.arange(n)[:, None] + torch.tensor([-1, 0, 1]), 0, n - 1)
    targets = torch.randint(0, 5, (n, size, size), dtype=torch.uint8)
    d = DeviceSlices(torch.rand(n, size, size).half(), targets, nbr, "multi", dev, channels_last=True)
    out = {}
    for aug in (False, True):
        step_tc = tc.model_copy(update={"augment": aug, "patch_size": None, "channels_last": True})
        rt = Runtime.on(dev, step_tc)  # bf16, channels_last
        it = iter(d.batches(batch, 0, 0))
        next(it)
        sync(dev)
        t0, k = time.perf_counter(), 0
        while k < batches:
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(d.batches(batch, k, 0))
                continue
            prepare_batch(x, y, step_tc, rt)
            k += 1
        sync(dev)
        out["with_augment" if aug else "gather"] = round(batches * batch / (time.perf_counter() - t0), 1)
    return out


def table(r: dict) -> str:
    lines = ["# bench/gpu_check", "", "| fact | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in r["facts"].items()]
    lines += [
        "",
        f"## Train step, {r['size']} x {r['size']}, batch {r['batch']}",
        "",
        "| amp | channels_last | compile | img/s | first step s | peak GiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {s['amp']} | {s['channels_last']} | {s['compile']} | {s['img_per_s']} | {s['first_step_s']} | "
        f"{s['peak_gib']} |"
        for s in r["steps"]
    ]
    lines += ["", f"Data path on the device: {r['data_path']} samples/s", ""]
    t = r.get("trials", {})
    if t:
        lines += [
            f"One paper-profile trial, one epoch: {t['one']['trial_s']:.1f} s "
            f"({t['one']['img_per_s']:.1f} img/s, peak {t['one']['peak_gib']} GiB)",
            f"{len(t['packed'])} trials: at once {t['packed_s']:.1f} s, one after another "
            f"{t['sequential_s']:.1f} s "
            f"(packing gain {t['sequential_s'] / t['packed_s']:.2f}x)",
            "",
            f"Projected paper grid on one GPU: {r['projection']['hours']:.2f} h ({r['projection']['how']})",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: seconds (the test suite)")
    ap.add_argument("--budget-s", type=float, default=420, help="skip the trial parts if less is left")
    args = ap.parse_args()
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    size, batch, steps = (64, 2, 2) if args.smoke else (320, 32, 20)
    r = {"smoke": args.smoke, "device": str(dev), "size": size, "batch": batch, "facts": facts()}
    r["steps"] = step_rates(dev, size, batch, steps, compile_too=not args.smoke)
    r["data_path"] = data_rate(dev, size, batch, 4 if args.smoke else 50)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if time.perf_counter() - t_start < args.budget_s:
            params = cohort(tmp, args.smoke)
            one_s, (one,) = run_trials(params, tmp, [0], parallel=False)
            folds = [0, 1] if args.smoke else [0, 1, 2, 3]  # smoke: two trials share, to stay quick
            seq_s, _ = run_trials(params, tmp, folds, parallel=False)
            packed_s, packed = run_trials(params, tmp, folds, parallel=True)
            r["trials"] = {"one": one, "sequential_s": seq_s, "packed_s": packed_s, "packed": packed}
            per_trial_epoch = packed_s / len(folds) * PAPER_SLICES / max(1, one["img_per_s"] * one["train_s"])
            hours = PAPER_TRIALS * PAPER_EPOCHS * per_trial_epoch / 3600
            r["projection"] = {
                "hours": hours,
                "how": "16 trials x 25 epochs x (packed wall time per trial per "
                "epoch, scaled from this cohort's slices to 3,088)",
            }
    r["wall_s"] = round(time.perf_counter() - t_start, 1)
    (out / "gpu_check.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(table(r))
    print(table(r))


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
