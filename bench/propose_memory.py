"""Peak memory and time of the V-Net's sliding-window proposal of one abdominal CT, the
study's profile (experiments/paper.yaml: 0.5 x 0.5 x 5 mm, 512 x 512 x 32 windows)
beside the quick profile (params.yaml), on the same 512 x 512 x ~N CT.

Each measurement runs `core.labelling.vnet.predict` (what the stage runs per CT) in a fresh
process, so ru_maxrss is that profile's own high-water mark. The weights are random: the
memory and the time do not depend on their values. Printed: each profile's peak RSS and
seconds, the paper/quick ratios, the paper peak against the 16 GiB goal, and (with
--double) the ratio of the peak for a CT with twice the slices (sliding windows: ~1).
    python bench/propose_memory.py --slices 60 [--double]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, resource, sys, time
import torch
from boneseg.core.config import Config
from boneseg.core.imaging.nifti import load_ct
from boneseg.core.labelling.vnet import build_vnet, predict
from boneseg.core.networks.runtime import Runtime
cfg = Config.model_validate(json.loads(sys.argv[1]))
torch.manual_seed(0)
rt = Runtime.of(cfg.train)
model = build_vnet(cfg.propose.dropout).to(rt.device)
ct = load_ct(sys.argv[2])
gib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
before = gib()
t = time.perf_counter()
mask = predict(model, ct, cfg, rt)
print(json.dumps({"seconds": time.perf_counter() - t, "shape": list(ct.shape), "spacing": list(ct.spacing),
                  "before_gib": before, "peak_gib": gib(), "mask_ok": list(mask.shape) == list(ct.shape)}))
"""


def make_ct(root: Path, slices: int, seed: int) -> Path:
    from boneseg.core.config import SynthConfig
    from boneseg.core.data.synth import synthesize

    raw = root / f"raw{slices}"
    synthesize(SynthConfig(seed=seed, abdomen=1, thigh=0, matrix=512, slices=slices), raw, progress=False)
    return next(raw.glob("abdomen/*/ct.nii.gz"))


def run(profile: dict, ct: Path, threads: int) -> dict:
    cfg = {"propose": profile, "train": {"device": "cpu", "threads": threads}}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg), str(ct)], capture_output=True,
                         text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"propose_memory: the child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=60, help="the CT's slices (synth varies it by +-20 %%)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--double", action="store_true", help="also a CT with twice the slices (paper profile)")
    a = ap.parse_args()
    paper = yaml.safe_load((ROOT / "experiments" / "paper.yaml").read_text())["propose"]
    quick = {}  # params.yaml's propose: the defaults
    with tempfile.TemporaryDirectory() as tmp:  # each row is printed as soon as it is measured
        ct = make_ct(Path(tmp), a.slices, a.seed)
        q = run(quick, ct, a.threads)
        shape = "x".join(map(str, q["shape"]))
        print(f"V-Net proposal of one {shape} CT ({q['spacing'][0]:.2f} x {q['spacing'][1]:.2f} x "
              f"{q['spacing'][2]:.2f} mm), {a.threads} threads, CPU:")
        row("quick", q, "2.8 x 2.8 x 5 mm, 96 x 96 x 16 windows")
        p = run(paper, ct, a.threads)
        row("paper", p, f"{' x '.join(map(str, paper['spacing_mm']))} mm, "
                        f"{' x '.join(map(str, paper['window']))} windows")
        print(f"  paper / quick: peak {p['peak_gib'] / q['peak_gib']:.2f}x, "
              f"time {p['seconds'] / q['seconds']:.1f}x")
        fits = "fits" if p["peak_gib"] <= 16 else "OVER"
        print(f"  paper peak / 16 GiB goal: {p['peak_gib'] / 16:.2f} ({fits})", flush=True)
        if a.double:
            d = run(paper, make_ct(Path(tmp), 2 * a.slices, a.seed), a.threads)
            print(f"  paper, {'x'.join(map(str, d['shape']))} CT (2x slices): peak {d['peak_gib']:.2f} GiB, "
                  f"{d['seconds']:.1f} s; peak ratio 2x / 1x slices: {d['peak_gib'] / p['peak_gib']:.2f} "
                  "(sliding windows: ~1)")


def row(name: str, r: dict, profile: str) -> None:
    print(f"  {name:<5} ({profile}): peak RSS {r['peak_gib']:.2f} GiB (process before: "
          f"{r['before_gib']:.2f}), {r['seconds']:.1f} s, mask on the CT's grid: {r['mask_ok']}", flush=True)

if __name__ == "__main__":
    main()
