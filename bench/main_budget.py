"""Where the minutes of the main command go, from one run of `bash scripts/main.sh`.

Reads the run's stage lines (.boneseg/main.log: set-up, each stage's "finished in", the
sweep's results/MLflow step, the pipeline's wall time) and every trial's measured timing
(results/trials/<variant>/fold<k>/summary.json: set-up, training, per-epoch validation,
final validation, test, Tune reporting, the whole trial). Trial times are summed over the
16 trials and divided by the trials that ran at once (the slots), so each row is minutes
of the main command's wall time; "idle / packing" is what the sweep's wall time adds.

    bash scripts/main.sh && python bench/main_budget.py [--log .boneseg/main.log] [--slots 2]
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

STAGES = ("raw", "propose", "labels", "splits", "slices", "pretrain", "sweep", "report")
TRIAL_PARTS = [("setup_s", "trial set-up (model, data, Ray worker)"), ("train_s", "training (all epochs)"),
               ("epoch_val_s", "per-epoch validation"), ("final_val_s", "final validation"),
               ("test_s", "test"), ("report_s", "Tune reporting + checkpoint copies")]


def read_log(path: Path) -> dict[str, float]:
    out = {}
    for line in path.read_text().splitlines():
        if m := re.match(r"main: (set-up|pipeline) (\d+) s", line):
            out[m.group(1)] = float(m.group(2))
        elif m := re.match(r"boneseg (\w+): finished in ([\d.]+) s", line):
            out[m.group(1)] = float(m.group(2))
        elif m := re.match(r"boneseg sweep: trials finished; results and MLflow closed in ([\d.]+) s", line):
            out["export"] = float(m.group(1))
    return out


def trial_timings(trials_dir: Path) -> list[dict]:
    return [json.loads(p.read_text())["timing"] for p in sorted(trials_dir.glob("*/fold*/summary.json"))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", default=".boneseg/main.log")
    ap.add_argument("--trials", default="results/trials")
    ap.add_argument("--slots", type=int, default=2, help="trials at once (CPUs / sweep.cpus_per_trial)")
    a = ap.parse_args()
    t = read_log(Path(a.log))
    trials = trial_timings(Path(a.trials))
    rows = [("set-up (scripts/setup.sh)", t.get("set-up", 0.0))]
    rows += [(f"stage {s}", t[s]) for s in STAGES if s in t and s != "sweep"]
    if "sweep" in t and trials:
        per_slot = {k: sum(x.get(k, 0.0) for x in trials) / a.slots for k, _ in TRIAL_PARTS}
        wall = sum(x.get("trial_s", 0.0) for x in trials) / a.slots
        other = wall - sum(per_slot.values())
        rows += [(f"  sweep: {label}", per_slot[k]) for k, label in TRIAL_PARTS]
        rows.append(("  sweep: rest of each trial (Ray restore, model.pt, final report)", other))
        rows.append(("  sweep: results, registry, MLflow close", t.get("export", 0.0)))
        rows.append(("  sweep: idle / packing / Ray start-up", t["sweep"] - wall - t.get("export", 0.0)))
        rows.append(("stage sweep (all of the above)", t["sweep"]))
    total = t.get("pipeline", sum(t.get(s, 0.0) for s in STAGES))
    rows.append(("dvc repro, between stages", total - sum(t.get(s, 0.0) for s in STAGES)))
    print(f"{'where':<70} {'min':>6} {'share':>6}")
    for name, secs in rows:
        share = "" if name.startswith("set-up") else f"{secs / total:6.1%}"
        print(f"{name:<70} {secs / 60:6.2f} {share:>6}")
    print(f"{'main command after set-up (dvc repro)':<70} {total / 60:6.2f}")
    print(f"{'main command with set-up':<70} {(total + t.get('set-up', 0.0)) / 60:6.2f}")
    if trials:
        n = len(trials)
        print(f"\n{n} trials on {a.slots} slots; per trial (mean s): "
              + ", ".join(f"{k.removesuffix('_s')} {sum(x.get(k, 0.0) for x in trials) / n:.1f}"
                          for k, _ in [*TRIAL_PARTS, ("trial_s", "")]))


if __name__ == "__main__":
    main()
