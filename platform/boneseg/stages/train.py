"""`boneseg train`: one (variant, fold) trial without Ray, tracked in MLflow."""
from __future__ import annotations

import time

from boneseg.core.config import VARIANTS, Config
from boneseg.core.layout import load_qa


def baselines(cfg: Config, cases: list[str]) -> dict:
    """Threshold-only and threshold+fill bone Dice of the same patients (from label QA)."""
    from boneseg.core.evaluation.metrics import nanmean

    qa = load_qa(cfg.data.labels_dir)
    if not qa:
        return {}
    rows = {r["case"]: r for r in qa["cases"]}
    return {
        k: nanmean([rows[c].get(k) for c in cases if c in rows]) for k in ("dice_threshold", "dice_filled")
    }


class _Printer:
    def on_start(self, info):
        print(
            f"train: {info.variant} fold {info.fold} on {info.device} ({info.amp}), "
            f"encoder {info.weights.get('source')}, {len(info.train_cases)} train / "
            f"{len(info.val_cases)} val patients, {info.steps_per_epoch} steps/epoch"
            + (
                f", resumed after epoch {info.resumed_from_epoch - 1}"
                if info.resumed_from_epoch
                else ""
            ),
            flush=True,
        )

    def on_epoch(self, epoch, m, _ckpt):
        val = (
            f"val_loss {m['val_loss']:.4f}  val_bone_dice {m['val_bone_dice']:.4f}  "
            if "val_loss" in m
            else ""
        )
        print(
            f"  epoch {epoch}: train_loss {m['train_loss']:.4f}  {val}({m['images_per_s']:.1f} img/s)",
            flush=True,
        )


def add_parser(sub) -> None:
    p = sub.add_parser("train")
    p.add_argument(
        "--variant", required=True, choices=list(VARIANTS), help="one of the study's four settings"
    )
    p.add_argument("--fold", type=int, default=0, help="the fold to train, 0 .. splits.folds - 1")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-mlflow", action="store_true", help="do not record the run in MLflow")
    p.set_defaults(func=main)


def main(args, cfg: Config) -> int:
    from boneseg.core.engine.training import fit, fold_cases

    callbacks: list = [_Printer()]
    tracker = None
    if not args.no_mlflow:
        from boneseg.tracking.runs import MlflowTrial

        tracker = MlflowTrial(cfg, f"{args.variant}/fold{args.fold}", {"kind": "train"})
        callbacks.append(tracker)
    ok = False
    try:
        t0 = time.perf_counter()
        r = fit(cfg, args.variant, args.fold, callbacks=callbacks, resume=not args.restart)
        ok = True
    finally:
        if tracker:
            tracker.close(ok)
    _, val_cases, _ = fold_cases(cfg, args.fold)
    base = baselines(cfg, val_cases)
    print(f"train: {args.variant} fold {args.fold}: validation bone Dice {r.bone_dice:.4f}, "
          f"test {r.test_bone_dice:.4f} ({time.perf_counter() - t0:.0f} s)")
    if base:
        print(f"  baselines on the same validation patients: threshold-only {base['dice_threshold']:.4f}, "
              f"threshold+fill {base['dice_filled']:.4f}")
    print(f"  summary: {r.out_dir}/summary.json" + (f"; MLflow run {tracker.run_id}" if tracker else ""))
    return 0
