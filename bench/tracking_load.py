"""Load on the tracking store: N concurrent simulated sweep drivers, each creating its run
tree and logging T trials x E epochs of metrics, against the team stack's MLflow server
(PostgreSQL + S3, basic auth; infra/team/stack.py on loopback) and, in the same run,
against a sqlite file, the single-user default.

A driver is a process: a parent run, then per trial a run and E `log_batch` calls (the
six per-epoch metrics boneseg logs), then FINISHED. Each write is timed. Bounded: every
driver stops at --max-seconds (what it did not write is reported as not done).

    python bench/tracking_load.py [--drivers 8] [--trials 16] [--epochs 25] [--max-seconds 240]
    python bench/tracking_load.py --client-env infra/team/state/client.env   # an existing stack
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "infra/team"))
from stack import read_env  # noqa: E402

METRICS = ("train_loss", "train_seconds", "val_bone_dice", "val_loss", "lr", "images_per_s")


def driver(args) -> dict:
    uri, env, index, trials, epochs, deadline = args
    os.environ.update(env)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # count errors, do not hide them in retries
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(uri)
    lat, errors, writes, not_done = [], 0, 0, 0
    started = time.time()

    def timed(fn, *a, **kw):
        nonlocal errors, writes
        t0 = time.perf_counter()
        try:
            out = fn(*a, **kw)
            writes += 1
            return out
        except Exception:
            errors += 1
            return None
        finally:
            lat.append(time.perf_counter() - t0)

    exp = None
    for _ in range(20):  # the drivers race to create the experiment
        try:
            found = client.get_experiment_by_name("load")
            exp = found.experiment_id if found else client.create_experiment("load")
            break
        except Exception:
            time.sleep(0.2)
    parent = timed(client.create_run, exp, tags={"kind": "sweep", "driver": str(index)})
    for t in range(trials):
        if time.time() > deadline:
            not_done += (trials - t) * epochs
            break
        run = timed(
            client.create_run,
            exp,
            tags={"mlflow.parentRunId": parent.info.run_id if parent else "", "trial": str(t)},
        )
        if run is None:
            not_done += epochs
            continue
        for e in range(epochs):
            if time.time() > deadline:
                not_done += epochs - e
                break
            now = int(time.time() * 1000)
            timed(
                client.log_batch,
                run.info.run_id,
                metrics=[Metric(k, float(np.random.rand()), now, e) for k in METRICS],
            )
        timed(client.set_terminated, run.info.run_id, "FINISHED")
    return {
        "lat": lat,
        "errors": errors,
        "writes": writes,
        "not_done": not_done,
        "span": (started, time.time()),
    }


def load(uri: str, env: dict, drivers: int, trials: int, epochs: int, max_s: float) -> dict:
    deadline = time.time() + max_s
    with mp.get_context("spawn").Pool(drivers) as pool:
        out = pool.map(driver, [(uri, env, i, trials, epochs, deadline) for i in range(drivers)])
    wall = max(o["span"][1] for o in out) - min(o["span"][0] for o in out)  # writing, not process start-up
    lat = np.array([x for o in out for x in o["lat"]]) * 1000
    writes = sum(o["writes"] for o in out)
    return {
        "writes": writes,
        "errors": sum(o["errors"] for o in out),
        "not_done_epochs": sum(o["not_done"] for o in out),
        "wall_s": round(wall, 1),
        "writes_per_s": round(writes / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
    }




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drivers", type=int, default=8)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--max-seconds", type=float, default=240)
    ap.add_argument(
        "--client-env", help="an existing stack's client.env (default: start one in a temp folder)"
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bsload", dir="/tmp"))
    os.chmod(work, 0o755)
    stack = [sys.executable, str(ROOT / "infra/team/stack.py")]
    started = args.client_env is None
    try:
        if started:
            subprocess.run(
                [*stack, "up", "--free-ports", "--dir", str(work / "state")],
                check=True,
                capture_output=True,
                text=True,
            )
        env = read_env(Path(args.client_env) if args.client_env else work / "state/client.env")
        shape = (args.drivers, args.trials, args.epochs, args.max_seconds)
        server = load(env["MLFLOW_TRACKING_URI"], env, *shape)
        import mlflow

        mlflow.MlflowClient(f"sqlite:///{work / 'load.db'}").search_experiments()  # the schema, made once
        sqlite = load(f"sqlite:///{work / 'load.db'}", {}, *shape)
    finally:
        if started:
            subprocess.run([*stack, "down", "--dir", str(work / "state")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "drivers": args.drivers,
                "trials": args.trials,
                "epochs": args.epochs,
                "server": server,
                "sqlite": sqlite,
                "ratio_writes_per_s_server_over_sqlite": round(
                    server["writes_per_s"] / max(sqlite["writes_per_s"], 1e-9), 2
                ),
                "ratio_p99_server_over_sqlite": round(server["p99_ms"] / max(sqlite["p99_ms"], 1e-9), 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
