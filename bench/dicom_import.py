"""How fast `boneseg import --layout dicom` turns a 512x512xN CT series into data/raw,
against dcm2niix (the field's standard converter, a compiled binary) on the same series.

boneseg's path: scan the folder (headers only), check the series, read and rescale
every slice, check it again on write, reorient, write ct.nii.gz (gzip). The baseline:
`dcm2niix -b n -z y` (gzip, no sidecar) followed by loading its output with nibabel,
which is what a user who converts by hand and then imports the NIfTI pays before the
NIfTI import itself. Both runs are timed on the same files, best of --repeats.

    python bench/dicom_import.py [--slices 200] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from boneseg.core.data.importing import import_cohort  # noqa: E402
from boneseg.core.imaging.nifti import Volume  # noqa: E402
from conftest import write_dicom_series  # noqa: E402  (the tests' DICOM writer)


def body(n: int) -> np.ndarray:
    """CT-like content (air, a noisy soft-tissue body, a bone ring): compresses as CT does."""
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.arange(512) - 256, np.arange(512) - 256, indexing="ij")
    r2 = (x / 200.0) ** 2 + (y / 150.0) ** 2
    plane = np.where(r2 < 1, 40, -1000) + np.where((r2 > 0.05) & (r2 < 0.08), 900, 0)
    noise = rng.normal(0, 15, size=(512, 512, n))
    return np.clip(plane[..., None] + noise, -1024, 3000).astype(np.int16)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = body(args.slices)
        aff = np.diag([-0.78, -0.78, 1.5, 1.0])
        write_dicom_series(Volume(data, aff), tmp / "src/series")
        dcm2niix = Path(sys.executable).parent / "dcm2niix"

        def ours():
            import_cohort(tmp / "src", tmp / "raw", "dicom", id_map_path=tmp / "map.json")

        def baseline():
            out = tmp / "d2n"
            out.mkdir(exist_ok=True)
            cmd = [str(dcm2niix), "-b", "n", "-z", "y", "-f", "ct", "-o", str(out), str(tmp / "src")]
            subprocess.run(cmd, check=True, capture_output=True)
            np.asarray(nib.load(str(out / "ct.nii.gz")).dataobj)

        t_ours, t_base = best_of(ours, args.repeats), best_of(baseline, args.repeats)
    mvox = 512 * 512 * args.slices / 1e6
    print(json.dumps({"slices": args.slices, "boneseg_import_s": round(t_ours, 2),
                      "dcm2niix_s": round(t_base, 2),
                      "ratio_boneseg_over_dcm2niix": round(t_ours / t_base, 2),
                      "boneseg_mvox_per_s": round(mvox / t_ours, 1)}))


if __name__ == "__main__":
    main()
