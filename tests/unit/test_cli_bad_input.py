"""Every command, given bad input, ends with exit status 2 and one readable line that
names the key or file, writes nothing, and never shows a traceback (`cli.main`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from boneseg.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
MISSING = "/nonexistent/boneseg-missing"

# (command line, the key or file the line must name); each kind of bad value appears:
# range, type, unknown key or choice, missing file, a --set that replaces a section
CASES = [
    (["config", "--set", "train.epochs=0"], "train.epochs"),
    (["config", "--set", "train=1", "--set", "train.epochs=2"], "train"),
    (["raw", "--set", "data.sourcs=[]"], "data.sourcs"),
    (["raw", "--set", f"data.sources=[{{path: {MISSING}}}]"], "data.sources"),
    (["synth", "--matrix", "8"], "matrix"),
    (["synth", "--seed", "x"], "--seed"),
    (["import", "--source", MISSING, "--out", "{tmp}/raw"], MISSING),
    (["import", "--source", "{tmp}", "--layout", "zip"], "--layout"),
    (["import", "--source", "{tmp}", "--cohort", "knee"], "--cohort"),
    (["propose", "--set", "propose.crop=[10,10,10]"], "propose.crop"),
    (["assist", "--model", MISSING, "--input", MISSING], MISSING),
    (["assist", "--input", "{tmp}"], "--model"),
    (["correct", "export", "abd000", "--set", f"data.raw_dir={MISSING}"], MISSING),
    (["correct", "import", "abd000", f"{MISSING}.nii.gz"], f"{MISSING}.nii.gz"),
    (["correct", "import", "abd000", "x.nii.gz", "--proposal", "vnet"], "--proposal"),
    (["correct", "next", "--model", MISSING], MISSING),
    (["labels", "--set", "labels.threshold_hu=high"], "labels.threshold_hu"),
    (["splits", "--set", "splits.folds=1"], "splits.folds"),
    (["slices", "--set", "data.image_size=100"], "data.image_size"),
    (["slices", "--set", "data.workers=0"], "data.workers"),
    (["labels", "--set", "data.workers=many"], "data.workers"),
    (["pretrain", "--set", "pretrain=none"], "pretrain"),
    (["train", "--variant", "multi-random", "--fold", "x"], "--fold"),
    (["train", "--variant", "triple-random"], "--variant"),
    (["sweep", "--set", "sweep.variants=[nope]"], "sweep.variants"),
    (["tune", "--set", "search={train.lrr: {uniform: [0.1, 0.2]}}"], "search.train.lrr"),
    (["tune", "--set", "search={train.lr: {loguniform: [0, 0.1]}}"], "search.train.lr"),
    (["tune", "--set", "tune.algorithm=grid"], "tune.algorithm"),
    (["report", "--set", "report.bootstrap=-1"], "report"),
    (["evaluate", "--pred", MISSING, "--truth", MISSING], MISSING),
    (["evaluate", "--pred", "{tmp}", "--truth", "{tmp}", "--classes", "kidney"], "--classes"),
    (["segment", "--input", MISSING, "--output", "{tmp}/seg.nii.gz", "--model", MISSING], MISSING),
    (["segment", "--input", "{tmp}", "--output", "{tmp}/o", "--model", "m", "--folds", "0,x"], "--folds"),
    (["preview", f"{MISSING}.nii.gz", "--out", "{tmp}/p.png"], f"{MISSING}.nii.gz"),
    (["promote", "latest"], "latest"),
    (["promote", "3", "--set", "tracking.uri=http://127.0.0.1:9"], "127.0.0.1:9"),
    (["--params", f"{MISSING}.yaml", "config"], f"{MISSING}.yaml"),
    (["--experiment", "nope", "config"], "nope"),
]


def test_every_command_has_a_bad_input_case():
    covered = {next(w for w in argv if not w.startswith("-") and w not in (f"{MISSING}.yaml", "nope"))
               for argv, _ in CASES}
    assert covered >= set(COMMANDS), f"no bad-input case for {sorted(set(COMMANDS) - covered)}"


@pytest.mark.parametrize("argv,names", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_naming_it_and_exit_2(argv, names, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative outputs would land here: nothing may
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "experiments").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv = [w.replace("{tmp}", str(tmp_path)) for w in argv]
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and "finished in" not in x]
    assert rc == 2, f"exit {rc}: {err}"
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err and names in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "bad input left output behind"
