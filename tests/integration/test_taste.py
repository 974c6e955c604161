"""README's two-minute taste: scripts/taste.sh runs the whole pipeline on the smoke
experiment in a folder of its own and touches nothing of the repository's."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def repo_state() -> dict:
    """What a run could change in the checkout: tracked files and the DVC outputs' folders."""
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    stamps = {
        p: (ROOT / p).stat().st_mtime_ns for p in ("data", "results", "mlflow.db") if (ROOT / p).exists()
    }
    return {"status": status, "mtimes": stamps}


def test_taste_runs_the_whole_smoke_pipeline_elsewhere(tmp_path):
    before = repo_state()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    r = subprocess.run(["bash", "scripts/taste.sh", str(tmp_path / "taste")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "the scores mean nothing" in r.stdout
    out = tmp_path / "taste"
    for stage in ("raw", "propose", "labels", "splits", "slices", "pretrain", "sweep", "report"):
        assert f"taste: {stage}" in r.stdout
    assert (out / "proposals" / "propose.json").is_file()
    metrics = json.loads((out / "results" / "metrics.json").read_text())
    assert {"multi-random", "single-random", "multi-pretrained", "single-pretrained"} <= set(metrics)
    assert (out / "results" / "report" / "index.html").is_file() and (out / "mlflow.db").is_file()
    assert repo_state() == before  # nothing of the checkout was touched
