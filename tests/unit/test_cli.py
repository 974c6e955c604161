import os
import subprocess
import sys
from pathlib import Path

import pytest

from boneseg.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_stage_with_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("config", "synth", "import", "preview"):
        assert f"    {cmd} " in out


def test_config_error_exits_2_and_names_key(capsys):
    rc = main(["--params", str(ROOT / "params.yaml"), "--set", "data.image_size=100", "config"])
    assert rc == 2
    assert "data.image_size: expected a multiple of 32 (>= 32), got 100" in capsys.readouterr().err


def test_settings_options_work_after_the_command_too(capsys):
    # the form `boneseg train --case ... --set key=value` as well as `boneseg --set key=value train`
    rc = main(["config", "--params", str(ROOT / "params.yaml"), "--set", "data.image_size=100"])
    assert rc == 2 and "data.image_size: expected a multiple of 32 (>= 32), got 100" in capsys.readouterr().err
    rc = main(["--params", str(ROOT / "params.yaml"), "--set", "train.epochs=3", "--set", "train.lr=0.5",
               "config", "--set", "train.lr=0.01"])
    out = capsys.readouterr().out
    assert rc == 0 and "epochs: 3" in out and "lr: 0.01" in out and "lr: 0.5" not in out  # after the command wins


def test_synth_and_preview_from_the_console_script(tmp_path):
    env = {**os.environ}
    exe = Path(sys.executable).with_name("boneseg")
    args = [str(exe), "--params", str(ROOT / "params.yaml")]
    r = subprocess.run(args + ["synth", "--out", str(tmp_path / "raw"), "--abdomen", "1", "--thigh", "1",
                               "--matrix", "64", "--slices", "6"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "raw").glob("*/*")) == ["abd000", "thigh000"]
    png = tmp_path / "p.png"
    r = subprocess.run(args + ["preview", str(tmp_path / "raw/abdomen/abd000/ct.nii.gz"), "--out", str(png)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_telemetry_is_off_by_default():
    import boneseg  # noqa: F401

    assert os.environ["DVC_NO_ANALYTICS"] and os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"


def test_parser_builds():
    assert build_parser().prog == "boneseg"
