import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from boneseg.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_command_with_one_line(capsys):
    from boneseg.cli import STAGES

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    commands = [
        "config",
        "raw",
        "synth",
        "import",
        "propose",
        "assist",
        "correct",
        "labels",
        "splits",
        "slices",
        "pretrain",
        "train",
        "tune",
        "sweep",
        "report",
        "evaluate",
        "segment",
        "promote",
        "preview",
    ]
    assert len(commands) == len(STAGES)  # a new stage module must be added here too
    for cmd in commands:
        line = next((x for x in out.splitlines() if x.startswith(f"    {cmd} ")), None)
        assert line and len(line.split(None, 1)) == 2, f"{cmd}: no one-line help in `boneseg --help`"
        with pytest.raises(SystemExit) as done:
            main([cmd, "--help"])
        assert done.value.code == 0


def test_config_error_exits_2_and_names_key(capsys):
    rc = main(["--params", str(ROOT / "params.yaml"), "--set", "data.image_size=100", "config"])
    assert rc == 2
    assert "data.image_size: expected a multiple of 32 (>= 32), got 100" in capsys.readouterr().err


def test_settings_options_work_after_the_command_too(capsys):
    # the documented form
    # `boneseg train --case ... --set key=value` as well as `boneseg --set key=value train`
    rc = main(["config", "--params", str(ROOT / "params.yaml"), "--set", "data.image_size=100"])
    assert (
        rc == 2 and "data.image_size: expected a multiple of 32 (>= 32), got 100" in capsys.readouterr().err
    )
    rc = main(["--params", str(ROOT / "params.yaml"), "--set", "train.epochs=3", "--set", "train.lr=0.5",
               "config", "--set", "train.lr=0.01"])
    out = capsys.readouterr().out
    assert (
        rc == 0 and "epochs: 3" in out and "lr: 0.01" in out and "lr: 0.5" not in out
    )  # after the command wins


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
    """In a clean environment (scripts/test.sh exports the same variables itself), importing
    boneseg turns every known telemetry off, and a user's own opt-in is kept."""
    from boneseg import TELEMETRY_OFF

    clean = {k: v for k, v in os.environ.items() if k not in TELEMETRY_OFF}
    code = (
        "import os, json, boneseg; print(json.dumps({k: os.environ.get(k) for k in boneseg.TELEMETRY_OFF}))"
    )
    r = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, check=True)
    seen = json.loads(r.stdout)
    assert (
        seen == TELEMETRY_OFF
        and seen["MLFLOW_DISABLE_TELEMETRY"] == "true"
        and seen["DVC_NO_ANALYTICS"] == "1"
    )
    assert set(TELEMETRY_OFF) >= {"DVC_NO_ANALYTICS", "MLFLOW_DISABLE_TELEMETRY", "HF_HUB_DISABLE_TELEMETRY",
                                  "RAY_USAGE_STATS_ENABLED", "DO_NOT_TRACK"}
    r = subprocess.run([sys.executable, "-c", code], env={**clean, "DO_NOT_TRACK": "0"}, capture_output=True,
                       text=True, check=True)
    assert json.loads(r.stdout)["DO_NOT_TRACK"] == "0"  # setdefault: an explicit choice wins


def test_parser_builds():
    assert build_parser().prog == "boneseg"


def test_every_option_has_help_that_shows_its_default():
    """Each option and argument of every command says what it is; an option with a
    default value shows it in `--help` (HelpFormatter), or its help names where the
    default comes from (e.g. "default: data.raw_dir")."""
    import argparse

    from boneseg.cli import HelpFormatter

    def parsers(p, name="boneseg"):
        yield name, p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub_name, sub in a.choices.items():
                    yield from parsers(sub, f"{name} {sub_name}")

    missing = []
    for name, p in parsers(build_parser()):
        fmt = HelpFormatter(name)
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            what = "/".join(a.option_strings) or a.dest
            shown = fmt._get_help_string(a) or ""
            if not (a.help or "").strip():
                missing.append(f"{name} {what}: no help text")
            elif a.default not in (None, False, [], argparse.SUPPRESS) and "default" not in shown:
                missing.append(f"{name} {what}: the default {a.default!r} is not shown")
    assert not missing, "\n".join(missing)
