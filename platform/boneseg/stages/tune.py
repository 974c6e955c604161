"""`boneseg tune`: search the experiment's `search` space on Ray Tune (ASHA, random or
Optuna), tracked in MLflow, and write the best setting as experiments/tuned-<id>.yaml,
which `boneseg sweep --experiment tuned-<id>` runs as the full grid."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from boneseg.core.config import Config
from boneseg.stages.common import add_ray_options


def add_parser(sub) -> None:
    p = sub.add_parser("tune")
    add_ray_options(p, "search")
    p.set_defaults(func=main)


def changed(tuned: dict, base: dict) -> dict:
    """The nested keys of `tuned` whose values differ from `base`'s."""
    out = {}
    for k, v in tuned.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            sub = changed(v, base[k])
            if sub:
                out[k] = sub
        elif base.get(k) != v:
            out[k] = v
    return out


def write_override(cfg: Config, params: Path, result: dict) -> str:
    """experiments/tuned-<id>.yaml: every setting this search ran with that differs from
    params.yaml (its experiment, --set, the best values), never over an existing file."""
    import yaml

    from boneseg.core.config import build_config
    from boneseg.core.engine.search import apply_setting
    from boneseg.core.io import atomic_write_text
    from boneseg.errors import DataError

    best = result["best"]
    drop = {"search", "tune", "experiment"}
    tuned = apply_setting(cfg, best["setting"]).model_dump(mode="json", exclude=drop)
    raw = yaml.safe_load(params.read_text()) if params.is_file() else {}
    raw = {k: v for k, v in (raw or {}).items() if k != "experiment"}  # params.yaml alone
    base = build_config(raw, str(params)).model_dump(mode="json", exclude=drop)
    folder = Path(cfg.tune.overrides_dir)
    folder = folder if folder.is_absolute() else params.resolve().parent / folder
    dst = folder / f"tuned-{result['name'].removeprefix('search-')}.yaml"
    if dst.exists():
        raise DataError(f"{dst}: exists; nothing was written. Move it away and run the same command again.")
    head = (f"# boneseg tune {result['name']} (MLflow run {result['parent_run_id']}): the best of "
            f"{len(result['trials'])} settings of {', '.join(best['setting'])}\n"
            f"# mean validation bone Dice {best['val_bone_dice']:.4f} over folds {result['folds']} "
            f"({result['variant']}); the full grid: boneseg sweep --experiment {dst.stem}\n")
    atomic_write_text(dst, head + yaml.safe_dump(changed(tuned, base), sort_keys=False))
    return str(dst)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.project import exclusive
    from boneseg.sweep.search import run_search

    t0 = time.perf_counter()
    mode = "resume" if args.resume else "restart" if args.restart else "auto"
    params = Path(args.params_cmd or args.params)
    lock = f"tune-{cfg.tracking.experiment}-{cfg.experiment or 'params'}"
    with exclusive(Path(cfg.sweep.metrics_file), lock, f"a search of {cfg.experiment or 'params.yaml'}"):
        out = run_search(cfg, args.address, mode, finish=lambda r: write_override(cfg, params, r))
    best = out["best"]
    full = out["max_t"] * len(out["trials"])
    print(f"\ntune finished in {(time.perf_counter() - t0) / 60:.1f} min: {len(out['trials'])} settings, "
          f"{out['trial_epochs']} trial-epochs; best mean validation bone Dice {best['val_bone_dice']:.4f} "
          f"over folds {out['folds']} ({out['variant']}, {full} validated epochs without early stopping)")
    for k, v in best["setting"].items():
        print(f"  {k} = {v}")
    print(f"  -> {out['override']}\n  the full grid: boneseg sweep --experiment {Path(out['override']).stem}")
    return 0
