"""One CT through the served model (`mlflow models serve`) against `boneseg segment`.

The same registered version (4 fold models at the quick profile's 160 px slices, random
weights: speed does not depend on them) labels the same 512x512xN CT two ways, side by
side: `boneseg segment --model models:/boneseg@champion` as a command (start-up, model
load, the CT, the write; its download cache warm, as from the second use on), and one
request to a warm `mlflow models serve` (the CT's bytes in, the label map's bytes out,
base64 both ways). The server's start-up (model load included) is reported apart.

    python bench/serve_latency.py [--slices 40] [--size 160] [--folds 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from boneseg.core.networks.models import build_model
from boneseg.tracking.registry import gate, register_model
from segment_speed import make_ct

BIN = Path(sys.executable).parent


def save_models(folder: Path, size: int, n: int) -> dict:
    folder.mkdir(parents=True)
    for k in range(n):
        torch.manual_seed(k)
        net, _ = build_model(5, "none")
        torch.save({"model": net.state_dict(), "classes": "multi", "variant": "multi-random", "fold": k,
                    "preprocessing": {"image_size": size, "window": [-200.0, 1500.0]},
                    "weights": {"source": "none"}}, folder / f"fold{k}.pt")
    manifest = {"variant": "multi-random", "folds": list(range(n)), "classes": "multi",
                "sweep_run_id": "bench",
                "scores": {"bone_dice_mean": 0.9, "bone_dice_std": 0.0}, "splits_md5": "bench",
                "preprocessing": {"image_size": size, "window": [-200.0, 1500.0]},
                "infer": {"backend": "auto", "precision": "auto", "batch_size": 8, "postprocess": True}}
    (folder / "boneseg.json").write_text(json.dumps(manifest))
    return manifest


def request(port: int, body: bytes) -> float:
    t0 = time.perf_counter()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        answer = json.loads(r.read())
    base64.b64decode(answer["predictions"][0]["labels"])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import mlflow

    with tempfile.TemporaryDirectory(prefix="boneseg-bench-serve-") as tmp:
        tmp = Path(tmp)
        os.chdir(tmp)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        token = "bench-" + "x" * 26
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "BONESEG_CACHE": str(tmp / "cache"),
               "BONESEG_SERVE_TOKEN": token, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
               "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "3600"}
        make_ct(tmp / "ct.nii.gz", args.slices)
        manifest = save_models(tmp / "model", args.size, args.folds)
        client = mlflow.MlflowClient(uri)
        run = client.create_run(client.create_experiment("bench"))
        uri_v = register_model(client, "boneseg", run.info.run_id, tmp / "model", manifest)
        gate(client, "boneseg", uri_v.rsplit("/", 1)[1])
        (tmp / "params.yaml").write_text(json.dumps({"tracking": {"uri": uri}}))
        seg = []
        for i in range(args.repeats + 1):  # the first fills the download cache
            t0 = time.perf_counter()
            subprocess.run([str(BIN / "boneseg"), "--params", "params.yaml", "segment",
                            "--input", "ct.nii.gz", "--output", f"seg{i}.nii.gz",
                            "--model", "models:/boneseg@champion"],
                           env=env, check=True, capture_output=True)
            seg.append(time.perf_counter() - t0)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        t0 = time.perf_counter()
        server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/boneseg@champion",
                                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                        break
                except OSError:
                    if server.poll() is not None or time.perf_counter() - t0 > 600:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.5)
            startup = time.perf_counter() - t0
            ct = base64.b64encode((tmp / "ct.nii.gz").read_bytes()).decode()
            body = json.dumps({"dataframe_split": {"columns": ["nifti"], "data": [[ct]]},
                               "params": {"token": token}}).encode()
            served = [request(port, body) for _ in range(args.repeats)]
        finally:
            server.terminate()
            server.wait(30)
    row = {"ct": f"512x512x{args.slices}", "image_size": args.size, "folds": args.folds,
           "threads": torch.get_num_threads(), "segment_first_s": round(seg[0], 2),
           "segment_s": round(statistics.median(seg[1:]), 2), "serve_startup_s": round(startup, 2),
           "serve_request_s": round(statistics.median(served), 2)}
    row["segment_over_serve"] = round(row["segment_s"] / row["serve_request_s"], 2)
    print(f"512x512x{args.slices} CT, {args.folds} fold models at {args.size} px: boneseg segment "
          f"{row['segment_s']:.1f} s (first use {row['segment_first_s']:.1f} s), served request "
          f"{row['serve_request_s']:.1f} s (x{row['segment_over_serve']:.2f}); server start-up "
          f"{row['serve_startup_s']:.1f} s")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
