"""Peak memory of `boneseg slices` as the cohort grows (streams case by case).

Each measurement runs in a fresh process (ru_maxrss is a high-water mark) over cohorts of
N and 3N cases at the given matrix; the printed ratio should stay ~1.0 (flat memory).
    python bench/slices_memory.py --matrix 512 --slices 72 --cases 2
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from boneseg.core.config import Config
from boneseg.core.data.slices import build_slices
cfg = Config.model_validate(json.loads(sys.argv[1]))
t = time.perf_counter()
build_slices(cfg, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(root: Path, n: int, matrix: int, slices: int, size: int) -> dict:
    from boneseg.core.config import Config, SynthConfig
    from boneseg.core.data.synth import synthesize
    from boneseg.core.labelling.labels import derive_labels

    raw = root / f"raw{n}"
    synthesize(SynthConfig(seed=0, abdomen=n, thigh=0, matrix=matrix, slices=slices), raw, progress=False)
    data = {"raw_dir": str(raw), "labels_dir": str(root / f"lab{n}"), "slices_dir": str(root / f"sl{n}"),
            "corrections_dir": str(root / "none"), "proposals_dir": str(root / "none"), "image_size": size}
    derive_labels(Config.model_validate({"data": data}), progress=False)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"data": data})], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--slices", type=int, default=72)
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--size", type=int, default=320)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = measure(Path(tmp), a.cases, a.matrix, a.slices, a.size)
        large = measure(Path(tmp), 3 * a.cases, a.matrix, a.slices, a.size)
    print(f"slices stage, {a.matrix}x{a.matrix}x~{a.slices} CT -> {a.size}x{a.size}:")
    print(f"  {a.cases} cases: peak {small['peak_mib']:.0f} MiB, {small['seconds']:.1f} s")
    print(f"  {3 * a.cases} cases: peak {large['peak_mib']:.0f} MiB, {large['seconds']:.1f} s")
    print(
        f"  peak-memory ratio (3x cohort / 1x cohort): {large['peak_mib'] / small['peak_mib']:.2f} "
        "(goal ~1.0)"
    )
    print(f"  time ratio: {large['seconds'] / small['seconds']:.2f} (linear: 3.0)")


if __name__ == "__main__":
    main()
