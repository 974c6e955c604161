"""How many corrections a good model needs, and in what order to make them: a simulated
annotator on the quick profile's synthetic cohort.

The abdominal CTs are split once into held-out test cases and a pool. Every order starts
from the same `--start` corrected cases (the lowest ids of the pool). Round after round,
the multi-class U-Net (random init, `--epochs` epochs on the corrected cases' slices) is
trained, scored on the test cases (3-D bone Dice and the mean Dice of the four classes),
and the next `--k` cases of the pool are "corrected": their truth joins the training set,
and the voxels the annotator paints are counted from the proposal each would start from
(the round's model's label map on the CT's own grid, `core.labelling.effort`; the first
cases from threshold + fill, as the labels stage's QA counts them). Orders:
  random        a seeded permutation of the pool (`--seeds` of them)
  disagreement  the round's two models (seeds 0 and 1, same cases) ranked by
                1 - their pairwise Dice (`core.labelling.worklist.disagreement`), most first
  case id       the order a person would take
The last round of every order trains on the whole pool: the all-labels model. Printed:
each round's table, and per order the cases corrected and voxels painted at which the
test bone Dice first comes within 0.01 of the all-labels model's. With
`--json results/labelling_curve.json` the report (`boneseg report`) shows the curve too.

    python bench/labelling_curve.py [--abdomen 12] [--test 3] [--start 2] [--k 2]
                                    [--epochs 4] [--seeds 3] [--json results/labelling_curve.json]
                                    [--plot curve.png] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANT = "multi-random"
CLASSES = ("bone", "kidney", "vessel", "liver")


def build(root: Path, a):
    from boneseg.core.config import Config
    from boneseg.core.data.slices import build_slices
    from boneseg.core.data.splits import write_splits
    from boneseg.core.data.synth import synthesize
    from boneseg.core.labelling.labels import derive_labels

    cfg = Config.model_validate({
        "data": {k: str(root / k) for k in ("raw_dir", "labels_dir", "corrections_dir", "proposals_dir",
                                             "slices_dir", "annotate_dir")}
        | {"splits_file": str(root / "splits.json"), "workers": 1,
           "synth": {"seed": a.seed, "abdomen": a.abdomen, "thigh": 0}
           | ({"matrix": 64, "slices": 6} if a.smoke else {})}
        | ({"image_size": 32} if a.smoke else {}),
        "train": {"epochs": a.epochs, "device": "cpu", "out_dir": str(root / "train")},
    })
    synthesize(cfg.data.synth, cfg.data.raw_dir, progress=False)
    derive_labels(cfg, progress=False)
    write_splits(cfg)
    build_slices(cfg, progress=False)
    return cfg


class Models:
    """Models trained on a set of cases, one per seed, each trained once and shared by every
    order that reaches the same set; their scores on the test cases and label maps of pool cases."""

    def __init__(self, cfg, test: list[str]):
        from boneseg.core.layout import load_index
        from boneseg.core.networks.runtime import Runtime

        self.cfg, self.test, self.rt = cfg, test, Runtime.of(cfg.train)
        self.index = load_index(cfg.data.slices_dir)
        self.cache: dict = {}
        self.train_s = 0.0

    def get(self, cases: frozenset, seed: int) -> dict:
        from boneseg.core.engine.training import setup_fold, train_epoch
        from boneseg.core.evaluation.validate import validate
        from boneseg.core.vocabulary import VARIANTS

        key = (cases, seed)
        if key not in self.cache:
            t = time.perf_counter()
            cfg = self.cfg.model_copy(update={"train": self.cfg.train.model_copy(update={"seed": seed})})
            model, _, loader, _, _, stepper = setup_fold(cfg, VARIANT, 0, sorted(cases), self.rt)
            for epoch in range(cfg.train.epochs):
                train_epoch(model, loader(epoch), stepper, cfg.train, self.rt)
            self.train_s += time.perf_counter() - t
            summary, _, _ = validate(model, self.test, cfg, VARIANTS[VARIANT].classes, self.rt, self.index)
            self.cache[key] = {"model": model, "summary": summary, "maps": {}}
        return self.cache[key]

    def maps(self, cases: frozenset, seed: int, which: list[str]) -> dict:
        from boneseg.core.evaluation.validate import evaluate_case
        from boneseg.core.vocabulary import VARIANTS

        m = self.get(cases, seed)
        for c in which:
            if c not in m["maps"]:
                classes = VARIANTS[VARIANT].classes
                _, vol = evaluate_case(m["model"], c, self.cfg, classes, self.rt, self.index)
                m["maps"][c] = vol.data
        return {c: m["maps"][c] for c in which}


def painted(pred: np.ndarray, case: str, cfg) -> int:
    from boneseg.core.imaging.nifti import load_labels
    from boneseg.core.labelling.effort import effort
    from boneseg.core.layout import label_path

    return effort(pred, load_labels(label_path(cfg.data.labels_dir, case)).data)["voxels"]


def run_order(name: str, pool: list[str], a, models: Models, first_effort: dict,
              seed: int | None) -> list[dict]:
    from boneseg.core.labelling.worklist import disagreement

    corrected = pool[:a.start]
    voxels = sum(first_effort[c] for c in corrected)
    rest = pool[a.start:]
    if name == "random":
        rest = [rest[i] for i in np.random.default_rng(seed).permutation(len(rest))]
    rounds = []
    while True:
        done = frozenset(corrected)
        s = models.get(done, 0)["summary"]
        rounds.append({"order": name, "seed": seed, "cases": len(corrected), "voxels": voxels,
                       "bone_dice": round(s["bone_dice"], 4),
                       "mean_dice": round(float(np.nanmean([s["dice"].get(c, np.nan) for c in CLASSES])), 4)})
        if not rest:
            return rounds
        if name == "disagreement":
            a0, a1 = models.maps(done, 0, rest), models.maps(done, 1, rest)
            score = {c: disagreement([a0[c], a1[c]]) for c in rest}
            rest = sorted(rest, key=lambda c: (-score[c], c))
            rounds[-1]["ranked"] = {c: round(score[c], 4) for c in rest}
        nxt, rest = rest[:a.k], rest[a.k:]
        starts = models.maps(done, 0, nxt)
        voxels += sum(painted(starts[c], c, models.cfg) for c in nxt)
        corrected = corrected + nxt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--abdomen", type=int, default=12)
    ap.add_argument("--test", type=int, default=3)
    ap.add_argument("--start", type=int, default=2)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="the synthetic cohort's seed")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny CTs and slices, 2 epochs: every part runs")
    a = ap.parse_args()
    if a.smoke:
        a.abdomen, a.test, a.start, a.k, a.epochs, a.seeds = 6, 2, 2, 1, 2, 1
    from boneseg.core.layout import load_qa
    from boneseg.core.reporting.curve import plot_curve, reached

    t0 = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="labelling_curve_"))
    try:
        cfg = build(base, a)
        qa = {r["case"]: r for r in load_qa(cfg.data.labels_dir)["cases"]}
        cases = sorted(c for c, r in qa.items() if "sources" in r)
        order = np.random.default_rng(a.seed).permutation(len(cases))
        test = sorted(cases[i] for i in order[:a.test])
        pool = sorted(c for c in cases if c not in test)
        first = {c: qa[c]["sources"]["filled"]["voxels"] for c in pool}
        models = Models(cfg, test)
        orders = {f"random (seed {s})": run_order("random", pool, a, models, first, s)
                  for s in range(a.seeds)}
        orders["disagreement"] = run_order("disagreement", pool, a, models, first, None)
        orders["case id"] = run_order("case id", pool, a, models, first, None)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    full = orders["case id"][-1]["bone_dice"]
    print(f"labelling curve: {a.abdomen} synthetic abdominal CTs (quick profile), {a.test} test, {len(pool)} "
          f"in the pool; start {a.start}, +{a.k} a round; {VARIANT}, {a.epochs} epochs; "
          f"{len(models.cache)} models trained in {models.train_s:.0f} s, "
          f"{time.perf_counter() - t0:.0f} s in all")
    print(f"{'order':20} {'cases':>5} {'voxels':>10} {'bone Dice':>9} {'4-class':>8}")
    for label, rounds in orders.items():
        for r in rounds:
            print(f"{label:20} {r['cases']:5d} {r['voxels']:10d} {r['bone_dice']:9.4f} {r['mean_dice']:8.4f}")
    print(f"all-labels model: bone Dice {full:.4f}; within 0.01 of it (>= {full - 0.01:.4f}) at:")
    hits = {}
    for label, rounds in orders.items():
        hits[label] = reached(rounds, full - 0.01)
        print(f"  {label:20} " + (f"{hits[label][0]} cases, {hits[label][1]:,} voxels painted"
                                  if hits[label] else "never"))
    if a.plot:
        plot_curve(orders, Path(a.plot))
    if a.json:
        command = "python bench/labelling_curve.py " + " ".join(sys.argv[1:])
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"command": command, "args": vars(a), "test": test, "pool": pool,
                                            "all_labels": full, "reached": hits, "orders": orders}, indent=1))


if __name__ == "__main__":
    main()
