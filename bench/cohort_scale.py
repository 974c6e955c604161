"""How each per-case stage scales with the cohort, on realistic CT sizes (512 x 512 x ~100).

A few synthetic abdominal CTs (`boneseg synth`) are drawn once; a cohort of N cases
repeats them, each copy with its own voxels (one slice shifted by the case's number, so
every file has its own content and hash). For each N the stages run in order, each in a
fresh process on `core.parallel.Pool` (what the commands run):
  import   a NIfTI folder (images/ + labels/) -> the raw cohort (import_cohort)
  labels   threshold + fill, QA, effort per source (derive_labels)
  slices   the 2.5-D slice store (build_slices)
  propose  the V-Net's proposal of every CT (propose_case; random weights: speed only)
  segment  one U-Net fold model over the folder (segment_pairs; random weights)
  report   the report's per-case scoring (score_case: truth against segment's map, else the labels')
  rank     `correct next`'s ranking (ranking.rank: 2 fold models; random weights; in one process)
Peak memory is sampled from the stage's whole process tree (psutil, every 0.1 s): the
summed RSS of the stage and its workers (shared library pages counted in each, so an
upper bound), and the largest single process.

Printed: per stage, seconds per case and peak RSS at each N with the largest/smallest
ratios (goal <= 1.15: cost linear in cases, memory flat); the speed-up of 2 workers over
1 at the largest N (goal >= 1.7 on the CPU-bound stages: with --repeat R, R more pairs of
fresh 1-worker and 2-worker cohorts run back to back and each side keeps its fastest
time, since a shared machine's noise is larger than the effect); disk per case; and DVC's own
overhead (`dvc add` hashing + caching, `dvc checkout` of the removed folder) per GB.

    python bench/cohort_scale.py [--sizes 2,4,16] [--slices 64] [--stages import,labels,...]
                                 [--speedup-at N] [--repeat R] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("import", "labels", "slices", "propose", "segment", "report", "rank")

CHILD = r"""
import json, sys, time
from pathlib import Path
from boneseg.core.config import Config
from boneseg.core.parallel import Pool, file_sizes
stage, cfg_json, root, workers = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
cfg = Config.model_validate(json.loads(cfg_json))
pool = Pool(workers)


def main():
    t = time.perf_counter()
    if stage == "import":
        from boneseg.core.data.importing import import_cohort
        import_cohort(root / "src", Path(cfg.data.raw_dir), "nifti", "abdomen",
                      id_map_path=root / "id_map.json", pool=pool)
    elif stage == "labels":
        from boneseg.core.labelling.labels import derive_labels
        derive_labels(cfg, progress=False, pool=pool)
    elif stage == "slices":
        from boneseg.core.data.slices import build_slices
        build_slices(cfg, progress=False, pool=pool)
    elif stage == "propose":
        from boneseg.core.layout import find_cases
        from boneseg.core.labelling.vnet import propose_case
        cases = [c for c in find_cases(cfg.data.raw_dir) if c["cohort"] == "abdomen"]
        out = root / "proposals"
        out.mkdir(exist_ok=True)
        pool.map(propose_case, [(c, root / "vnet.safetensors", cfg, out) for c in cases],
                 [c["case"] for c in cases], "propose", False, file_sizes(c["ct"] for c in cases))
    elif stage == "segment":
        from boneseg.core.layout import find_cases
        from boneseg.core.inference.folder import segment_pairs
        from boneseg.core.inference.predict import ModelRequest
        cases = find_cases(cfg.data.raw_dir)
        (root / "seg").mkdir(exist_ok=True)
        segment_pairs(cfg, [(Path(c["ct"]), root / "seg" / f"{c['case']}.nii.gz") for c in cases],
                      ModelRequest([root / "fold0.pt"], None, "cpu", backend="torch"), False, pool)
    elif stage == "report":
        from boneseg.core.layout import find_cases
        from boneseg.core.labelling.assist import score_case
        cases = find_cases(cfg.data.raw_dir)
        seg = root / "seg" if (root / "seg").is_dir() else Path(cfg.data.labels_dir)  # else: the labels
        pool.map(score_case, [(c["truth"], {"map": seg / f"{c['case']}.nii.gz"}) for c in cases],
                 [c["case"] for c in cases], "report", False, file_sizes(c["truth"] for c in cases))
    elif stage == "rank":
        from boneseg.core.layout import find_cases
        from boneseg.core.labelling.ranking import rank
        from boneseg.core.inference.predict import ModelRequest
        rank(cfg, ModelRequest([root / "fold0.pt", root / "fold1.pt"], None, "cpu", backend="torch"),
             find_cases(cfg.data.raw_dir))
        pool.used = 1
    print(json.dumps({"seconds": time.perf_counter() - t, "workers": pool.used}))


if __name__ == "__main__":
    main()
"""


def draw_templates(root: Path, k: int, slices: int) -> list[Path]:
    from boneseg.core.config import SynthConfig
    from boneseg.core.data.synth import synthesize

    synthesize(SynthConfig(seed=0, abdomen=k, thigh=0, matrix=512, slices=slices), root, progress=False)
    return sorted((root / "abdomen").iterdir())


def make_source(templates: list[Path], src: Path, n: int) -> None:
    """A NIfTI folder of n cases: the templates in turn, each copy's first slice rolled by
    its number (its own content), its truth as it is."""
    import numpy as np

    from boneseg.core.imaging.nifti import Volume, load_volume, save_volume

    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    for i in range(n):
        t = templates[i % len(templates)]
        ct = load_volume(t / "ct.nii.gz")
        data = np.asarray(ct.data).copy()
        data[..., 0] = np.roll(data[..., 0], i + 1, axis=0)
        save_volume(Volume(data, ct.affine), src / "images" / f"s{i:03d}.nii.gz")
        shutil.copyfile(t / "truth.nii.gz", src / "labels" / f"s{i:03d}.nii.gz")


def make_models(root: Path, cfg) -> None:
    import torch
    from safetensors.torch import save_file

    from boneseg.core.labelling.vnet import build_vnet
    from boneseg.core.networks.models import build_model

    torch.manual_seed(0)
    vnet = build_vnet(cfg.propose.dropout)
    save_file({k: v.contiguous() for k, v in vnet.state_dict().items()}, str(root / "vnet.safetensors"))
    for fold in (0, 1):  # two fold models, each its own weights: the ranking needs two
        net, _ = build_model(5, "none")
        torch.save({"model": net.state_dict(), "classes": "multi", "variant": "multi-random", "fold": fold,
                    "preprocessing": {"image_size": cfg.data.image_size, "window": list(cfg.data.window)},
                    "weights": {"source": "none"}}, root / f"fold{fold}.pt")


def run_stage(stage: str, cfg: dict, root: Path, workers: int) -> dict:
    """The stage in a fresh process; its tree's peak summed RSS and largest process, sampled."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, stage, json.dumps(cfg), str(root), str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root, env=env)
    peak = {"sum": 0, "max": 0}
    stop = threading.Event()

    def sample():
        top = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [top, *top.children(recursive=True)]
                rss = [p.memory_info().rss for p in procs]
            except psutil.Error:
                rss = []
            if rss:
                peak["sum"], peak["max"] = max(peak["sum"], sum(rss)), max(peak["max"], max(rss))
            stop.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode:
        raise SystemExit(f"cohort_scale: {stage} failed:\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    return {**res, "peak_gib": peak["sum"] / 2**30, "largest_gib": peak["max"] / 2**30}


def cohort(base: Path, templates: list[Path], n: int, workers: int, tag: str, stages=STAGES) -> dict:
    root = base / f"{tag}{n}"
    make_source(templates, root / "src", n)
    data = {"raw_dir": str(root / "raw"), "labels_dir": str(root / "labels"),
            "slices_dir": str(root / "slices"), "corrections_dir": str(root / "none"),
            "proposals_dir": str(root / "none")}
    cfg = {"data": data, "train": {"device": "cpu"}}
    from boneseg.core.config import Config

    make_models(root, Config.model_validate(cfg))
    out = {s: run_stage(s, cfg, root, workers) for s in STAGES if s in stages}
    out["disk_per_case_mib"] = {k: du(root / k) / n / 2**20
                                for k in ("raw", "labels", "slices", "proposals", "seg")}
    return out


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def dvc_overhead(folder: Path, work: Path) -> dict:
    """`dvc add` (hash + cache) and `dvc checkout` (restore from cache) of a copy of `folder`."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    work.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=work, check=True, env=env)
    shutil.copytree(folder, work / "raw")
    gb = du(work / "raw") / 1e9
    t = time.perf_counter()
    subprocess.run([dvc, "add", "-q", "raw"], cwd=work, check=True, env=env)
    add = time.perf_counter() - t
    shutil.rmtree(work / "raw")
    t = time.perf_counter()
    subprocess.run([dvc, "checkout", "-q"], cwd=work, check=True, env=env)
    checkout = time.perf_counter() - t
    return {"gb": gb, "add_s_per_gb": add / gb, "checkout_s_per_gb": checkout / gb}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2,4,16")
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--templates", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stages", default=",".join(STAGES), help="import first; report needs labels")
    ap.add_argument("--speedup-at", type=int, default=None, help="the N (one of --sizes) of the 1-worker run "
                                                                 "(default: the largest)")
    ap.add_argument("--repeat", type=int, default=0, help="more back-to-back 1- and 2-worker pairs at "
                                                          "--speedup-at; each side keeps its fastest")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    stages = [s for s in STAGES if s in a.stages.split(",")]
    mid = a.speedup_at or sizes[-1]
    if mid not in sizes:
        raise SystemExit(f"cohort_scale: --speedup-at {mid} is not one of --sizes {a.sizes}")
    base = Path(tempfile.mkdtemp(prefix="cohort_scale_"))
    try:
        templates = draw_templates(base / "templates", a.templates, a.slices)
        runs = {n: cohort(base, templates, n, a.workers, "n", stages) for n in sizes}
        serial = cohort(base, templates, mid, 1, "serial", stages)
        for k in range(a.repeat):
            one, two = (cohort(base, templates, mid, w, f"r{k}w{w}_", stages) for w in (1, a.workers))
            for s in stages:
                serial[s]["seconds"] = min(serial[s]["seconds"], one[s]["seconds"])
                runs[mid][s]["seconds"] = min(runs[mid][s]["seconds"], two[s]["seconds"])
        dvc = dvc_overhead(base / f"n{sizes[-1]}" / "raw", base / "dvc")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    lo, hi = sizes[0], sizes[-1]
    print(f"cohort scale: synthetic abdominal CTs 512x512x{a.slices}, {a.workers} workers, "
          f"{os.cpu_count()} cores; N = {', '.join(map(str, sizes))}")
    print(f"{'stage':8} " + " ".join(f"{'s/case N=' + str(n):>12}" for n in sizes)
          + f" {'ratio':>6} " + " ".join(f"{'GiB N=' + str(n):>9}" for n in sizes)
          + f" {'ratio':>6} {'1 worker':>9} {'speed-up':>8}")
    table = {}
    for s in stages:
        per = [runs[n][s]["seconds"] / n for n in sizes]  # at --speedup-at: the fastest of its repeats
        mem = [runs[n][s]["peak_gib"] for n in sizes]
        one = serial[s]["seconds"] / mid
        row = {"s_per_case": dict(zip(sizes, per)), "peak_gib": dict(zip(sizes, mem)),
               "largest_gib": {n: runs[n][s]["largest_gib"] for n in sizes},
               "time_ratio": per[-1] / per[0], "rss_ratio": mem[-1] / mem[0],
               "serial_s_per_case": one, "speedup": one / (runs[mid][s]["seconds"] / mid),
               "workers": {n: runs[n][s]["workers"] for n in sizes}}
        table[s] = row
        print(f"{s:8} " + " ".join(f"{v:12.2f}" for v in per) + f" {row['time_ratio']:6.2f} "
              + " ".join(f"{v:9.2f}" for v in mem)
              + f" {row['rss_ratio']:6.2f} {one:9.2f} {row['speedup']:8.2f}")
    print(f"ratios are N={hi} / N={lo} (goal <= 1.15); speed-up: {a.workers} workers over 1 at N={mid} "
          "(goal >= 1.7 on the CPU-bound stages)")
    disk = runs[hi]["disk_per_case_mib"]
    print("disk per case (MiB): " + ", ".join(f"{k} {v:.2f}" for k, v in disk.items()))
    print(f"DVC on the raw cohort (N={hi}, {dvc['gb']:.2f} GB): dvc add {dvc['add_s_per_gb']:.1f} s/GB, "
          f"dvc checkout {dvc['checkout_s_per_gb']:.1f} s/GB")
    if a.json:
        Path(a.json).write_text(json.dumps({"sizes": sizes, "stages": table, "disk_per_case_mib": disk,
                                            "dvc": dvc, "slices": a.slices, "workers": a.workers}, indent=1))


if __name__ == "__main__":
    main()
