"""What `data.workers: 2` can give on this machine, apart from any stage's own code.

1. The pool's own cost: N cases of a pure-CPU function (a Python loop that runs for a
   fixed time, touching no memory) through `core.parallel.Pool` with 1 and 2 workers. The
   ratio is the pool's ceiling: start-up, the queue, the tail and the results cost
   whatever it falls short of the worker count.
2. The cores' own scaling on array work: one case of memory-bound array work (scipy.ndimage
   on a 512 x 512 x 64 volume, the labels stage's kind of work) alone, then the same in two
   processes at once. The ratio alone / side by side is how much each case slows when
   both cores work (shared caches and memory bandwidth), which no pool can win back.
3. A labels case (one synthetic 512 x 512 x 64 abdominal CT, `label_case`) with glibc's
   default thresholds and inside a map's kept memory (`core.parallel._keep_freed_memory`):
   its page faults, kernel time and seconds, alone and with a second copy beside it.

    python bench/pool_overhead.py [--cases 16] [--seconds 2] [--json out.json]
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

ROOT = Path(__file__).resolve().parents[1]

ARRAY_WORK = r"""
import time, numpy as np
from scipy import ndimage
a = np.random.default_rng(0).standard_normal((512, 512, 64)).astype(np.float32)
t = time.perf_counter()
for _ in range(3):
    m = ndimage.gaussian_filter(a, 1.0) > 0.3
    ndimage.binary_fill_holes(m[..., :8])
    ndimage.label(m)
print(time.perf_counter() - t)
"""

LABELS_CASE = r"""
import contextlib, json, resource, sys, time
from pathlib import Path
from boneseg.core.config import LabelsConfig
from boneseg.core.labelling.labels import label_case
from boneseg.core.layout import find_cases
from boneseg.core.parallel import _keep_freed_memory
root, kept = Path(sys.argv[1]), sys.argv[2] == "kept"
case = find_cases(root / "raw")[0]
args = (case, root / "none", LabelsConfig(), root / "none", root / ("out" + sys.argv[3]))
with _keep_freed_memory() if kept else contextlib.nullcontext():
    label_case(*args)  # warm: imports, first pages
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(3):
        label_case(*args)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"s": (time.perf_counter() - t) / 3, "faults": (r1.ru_minflt - r0.ru_minflt) / 3,
                  "sys_s": (r1.ru_stime - r0.ru_stime) / 3}))
"""


def spin(seconds: float) -> float:
    """A case that keeps one core busy for `seconds` without touching memory."""
    t, x = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        x += 1
    return seconds


def array_work(processes: int) -> list[float]:
    """Seconds of ARRAY_WORK in each of `processes` processes started together."""
    procs = [subprocess.Popen([sys.executable, "-c", ARRAY_WORK], stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    return [float(p.communicate()[0]) for p in procs]


def labels_cases(root: Path, mode: str, processes: int) -> list[dict]:
    """LABELS_CASE in `processes` processes started together: per case {s, faults, sys_s}."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    procs = [subprocess.Popen([sys.executable, "-c", LABELS_CASE, str(root), mode, str(i)],
                              stdout=subprocess.PIPE, text=True, env=env) for i in range(processes)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def labels_allocator() -> dict:
    """Part 3: one synthetic CT, then LABELS_CASE alone and in pairs, each allocator mode."""
    from boneseg.core.config import SynthConfig
    from boneseg.core.data.synth import synthesize

    with tempfile.TemporaryDirectory(prefix="pool_overhead_") as tmp:
        root = Path(tmp)
        cfg = SynthConfig(seed=0, abdomen=1, thigh=0, matrix=512, slices=64)
        synthesize(cfg, root / "raw", progress=False)
        return {mode: {"alone": labels_cases(root, mode, 1)[0], "pair": labels_cases(root, mode, 2)}
                for mode in ("defaults", "kept")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "platform"))
    from boneseg.core.parallel import Pool, cores

    wall = {}
    for workers in (1, 2):
        t = time.perf_counter()
        Pool(workers).map(spin, [(a.seconds,)] * a.cases, [str(i) for i in range(a.cases)], "spin", False)
        wall[workers] = time.perf_counter() - t
    pool_speedup = wall[1] / wall[2]
    alone = min(array_work(1)[0] for _ in range(2))
    pair = array_work(2)
    slowdown = alone / max(pair)
    print(f"pool: {a.cases} cases of {a.seconds} s pure CPU on {cores()} cores: 1 worker {wall[1]:.2f} s, "
          f"2 workers {wall[2]:.2f} s, speed-up {pool_speedup:.2f} (ceiling 2)")
    print(f"array work (scipy.ndimage, 512 x 512 x 64): alone {alone:.2f} s, two side by side "
          f"{pair[0]:.2f} / {pair[1]:.2f} s: each runs at {slowdown:.2f}x its speed alone, "
          f"so 2 workers can give at most {2 * slowdown:.2f}x on such a stage")
    lab = labels_allocator()
    for mode, r in lab.items():
        one, two = r["alone"], r["pair"]
        print(f"labels case, glibc {mode + ':':9} alone {one['s']:.2f} s ({one['faults']:,.0f} page faults, "
              f"{one['sys_s']:.3f} s kernel), two side by side {two[0]['s']:.2f} / {two[1]['s']:.2f} s: "
              f"each runs at {one['s'] / max(t['s'] for t in two):.2f}x its speed alone")
    if a.json:
        Path(a.json).write_text(json.dumps({"cases": a.cases, "seconds": a.seconds, "wall_s": wall,
                                            "pool_speedup": pool_speedup, "array_alone_s": alone,
                                            "array_pair_s": pair, "pair_speed": slowdown,
                                            "labels_case": lab}, indent=1) + "\n")


if __name__ == "__main__":
    main()
