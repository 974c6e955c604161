"""Peak memory of `boneseg import` per volume size, and what a gzip bomb costs.

Each measurement runs in a fresh Python process: it imports boneseg (its start-up), reads
its peak RSS, runs one import of one CT, and reads the peak again. The ratio is the
import's own peak (peak - start-up) over the CT's float32 size (voxels x 4 bytes). Goal:
<= 2.5. Sources: NIfTI stored as int16 with a rescale (the usual CT export), NIfTI stored
as float32, and a DICOM series of the same size.

The bomb: a .nii.gz of ~70 KB whose header declares 2048 x 2048 x 1024 int16 (8 GiB);
refusal time and peak RSS above the same start-up. Goals: < 1 s and <= ~150 MB.

    python bench/import_memory.py [--sizes 256x256x100,512x512x100,512x512x300] [--baseline DIR]

--baseline DIR runs every measurement a second time on the checkout in DIR (e.g. a
`git worktree` of an earlier commit) and prints both side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CHILD = r"""
import json, sys, time
from pathlib import Path
from boneseg.core.data.importing import import_cohort
from boneseg.errors import DataError
def kib():  # this process's peak RSS (VmHWM: unlike ru_maxrss, not inherited across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
src, out, layout = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
start = kib(); t0 = time.perf_counter()
try:
    import_cohort(src, out, layout); result = "imported"
except DataError as exc:
    result = f"refused: {exc}"
print(json.dumps({"start_mib": start / 1024, "peak_mib": kib() / 1024, "seconds": time.perf_counter() - t0,
                  "result": result}))
"""


def measure(src: Path, out: Path, layout: str, code: Path | None = None) -> dict:
    """One import in a fresh process; `code`: another checkout's platform/ folder (the baseline)."""
    env = dict(os.environ, PYTHONPATH=str(code)) if code else None
    cwd = out.parent / f"cwd_{out.name}"  # each its own: earlier versions kept the id map in the cwd
    cwd.mkdir(parents=True)
    r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), layout], capture_output=True,
                       text=True, env=env, cwd=cwd)
    if r.returncode:
        raise SystemExit(f"the import process failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ct_body(shape) -> np.ndarray:
    """CT-like content (air, a noisy body, a bone ring), int16 HU."""
    nx, ny, nz = shape
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), indexing="ij")
    r2 = (x / 0.8) ** 2 + (y / 0.6) ** 2
    plane = np.where(r2 < 1, 40, -1000) + np.where((r2 > 0.05) & (r2 < 0.08), 900, 0)
    return np.clip(plane[..., None] + rng.normal(0, 15, size=shape), -1024, 3000).astype(np.int16)


def write_sources(tmp: Path, shape) -> dict[str, tuple[Path, str]]:
    from boneseg.core.imaging.nifti import Volume
    from conftest import write_dicom_series

    hu = ct_body(shape)
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    scaled = nib.Nifti1Image((hu + 1024).astype(np.int16), aff)
    scaled.header.set_slope_inter(1.0, -1024.0)
    out = {}
    plain = nib.Nifti1Image(hu.astype(np.float32), aff)
    for name, img in (("nifti int16 + rescale", scaled), ("nifti float32", plain)):
        d = tmp / name.replace(" ", "_").replace("+", "")
        (d / "images").mkdir(parents=True)
        nib.save(img, d / "images" / "ct.nii.gz")
        out[name] = (d, "nifti")
    write_dicom_series(Volume(hu, aff), tmp / "dicom" / "series")
    out["dicom"] = (tmp / "dicom", "dicom")
    return out


def bomb(tmp: Path) -> Path:
    import gzip

    d = tmp / "bomb" / "images"
    d.mkdir(parents=True)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2048, 2048, 1024))
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.diag([0.5, 0.5, 1.0, 1.0]), 1)
    with gzip.open(d / "ct.nii.gz", "wb", compresslevel=9) as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
        for _ in range(64):
            fh.write(b"\0" * (1 << 20))
    return d.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256x256x100,512x512x100,512x512x300")
    ap.add_argument("--baseline", type=Path, help="another checkout to measure side by side")
    args = ap.parse_args()
    base = args.baseline.resolve() / "platform" if args.baseline else None
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        b = bomb(tmp)
        kb = (b / "images/ct.nii.gz").stat().st_size / 1024
        for label, code in (("boneseg", None), ("baseline", base)) if base else (("boneseg", None),):
            m = measure(b, tmp / f"out_bomb_{label}", "nifti", code)
            print(f"bomb ({label}): {kb:.0f} KB file declaring 2048x2048x1024 int16; {m['result'][:50]}...")
            grow = m["peak_mib"] - m["start_mib"]
            print(f"bomb ({label}): refused in {m['seconds']:.3f} s, peak RSS {grow:.1f} "
                  f"MiB above start-up ({m['start_mib']:.0f} MiB)   goals: < 1 s, <= ~150 MiB")
        print(f"\n{'source':<24} {'volume':>13} {'float32 MiB':>11} {'import peak MiB':>15} {'ratio':>6} "
              f"{'s':>6}")
        for size in args.sizes.split(","):
            shape = tuple(int(v) for v in size.split("x"))
            f32 = np.prod(shape) * 4 / 2**20
            case = tmp / size
            for name, (src, layout) in write_sources(case, shape).items():
                m = measure(src, case / f"out_{layout}_{len(rows)}", layout)
                grow = m["peak_mib"] - m["start_mib"]
                rows.append({"source": name, "shape": size, "float32_mib": round(f32, 1),
                             "import_peak_mib": round(grow, 1), "ratio": round(grow / f32, 2),
                             "seconds": round(m["seconds"], 2), "start_mib": round(m["start_mib"], 1)})
                line = f"{name:<24} {size:>13} {f32:11.1f} {grow:15.1f} {grow / f32:6.2f} {m['seconds']:6.2f}"
                if base:
                    o = measure(src, case / f"out_base_{len(rows)}", layout, base)
                    og = o["peak_mib"] - o["start_mib"]
                    rows[-1]["baseline_ratio"] = round(og / f32, 2)
                    line += f"   baseline {og:7.1f} MiB {og / f32:5.2f}x {o['seconds']:6.2f} s"
                print(line)
    worst = max(r["ratio"] for r in rows)
    print(f"\nratio = (peak RSS - start-up RSS) / float32 volume; goal <= 2.5; worst {worst}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
