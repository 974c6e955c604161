"""`boneseg report`: the study's figures with bootstrap CIs (results/report), also logged to
the sweep's MLflow parent run."""
from __future__ import annotations

import argparse
from pathlib import Path

from boneseg.core.config import Config
from boneseg.stages.pool import add_pool_options, case_pool


def add_parser(sub) -> None:
    p = sub.add_parser("report")
    add_pool_options(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace, cfg: Config) -> int:
    from boneseg.core.reporting.report import build_report, fmt
    from boneseg.stages.tables import source_table
    from boneseg.tracking.sweep_runs import log_report

    rep = build_report(cfg, case_pool(cfg, args.address))
    run_id = rep["sweep"].get("sweep_run_id")
    logged = log_report(cfg, run_id, Path(cfg.report.out_dir))
    print(f"report: {cfg.report.out_dir}/index.html ({len(rep['figures'])} figures)"
          + (f"; logged to MLflow run {logged}" if logged else
             f"; the sweep run {run_id} is not in this tracking store, so it is not logged to MLflow"))
    for d in rep["statistics"]["differences"]:
        print(f"  {d['a']} - {d['b']}: {fmt(d['mean_diff'])} [{fmt(d['ci95'][0])}, {fmt(d['ci95'][1])}]  "
              f"({d['n_cases']} cases)")
    effort = rep["labelling_effort"]
    if effort["totals"]:  # unet: the best multi-class variant, unet-bone: single-class (out of fold)
        who = ", ".join(f"{s} = {v}" for s, v in effort["unet_variants"].items()) or "no predictions"
        print(f"labelling effort per proposal source (out of fold: {who}):")
        print(source_table({"sources": effort["totals"]}))
    return 0
