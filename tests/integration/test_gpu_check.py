"""bench/gpu_check.py's CPU smoke mode: every part of the GPU check runs (tiny sizes), so
the script is ready, not rotten, for a GPU machine."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_runs_every_part_and_writes_json_and_a_table(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench/gpu_check.py"), "--smoke", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    assert out["smoke"] is True and out["facts"]["torch"] == __import__("torch").__version__
    assert {(s["amp"], s["channels_last"]) for s in out["steps"]} == {
        (a, c) for a in ("fp32", "fp16", "bf16") for c in (True, False)}
    assert all(s["img_per_s"] > 0 for s in out["steps"])
    assert out["data_path"]["gather"] > 0 and out["data_path"]["with_augment"] > 0
    t = out["trials"]
    assert t["one"]["img_per_s"] > 0 and len(t["packed"]) == 2 and t["packed_s"] > 0 and t["sequential_s"] > 0
    assert out["projection"]["hours"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| amp | channels_last | compile | img/s |" in table and "Projected paper grid" in table
