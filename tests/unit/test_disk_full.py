"""A full disk (ENOSPC injected into the writers by tests/faults/full_disk.py): the command
stops with one line naming the output, the previous output stays byte for byte, no temp
file is left, and the same command completes once there is space."""
import hashlib
import sys
from pathlib import Path

import pytest

from boneseg.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from full_disk import FullDisk  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def tree(d: Path) -> dict[str, str]:
    """Every file under `d` (hidden ones too) -> its sha256; not the writers' lock files, which
    name their last holder and the time it took the lock (core/project.exclusive)."""
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and p.parent.name != "locks"}


def raw(tmp_path, seed: int) -> list[str]:
    return ["raw", "--set", f"data.raw_dir={tmp_path / 'data/raw'}", "--set",
            f"data.synth={{seed: {seed}, abdomen: 2, thigh: 1, matrix: 64, slices: 8}}"]


@pytest.mark.parametrize("budget", [0, 20_000], ids=["first-write", "mid-way"])
def test_a_full_disk_keeps_the_previous_output_and_names_it(budget, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    assert main(raw(tmp_path, seed=1)) == 0
    before = tree(tmp_path / "data")
    capsys.readouterr()
    with FullDisk(tmp_path / "data", budget) as disk:
        rc = main(raw(tmp_path, seed=2))  # another cohort: every file would change
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip() and "%|" not in x]  # not progress
    assert disk.hits >= 1  # the fault did happen
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert f"{tmp_path / 'data/raw'}: no space left on the device" in err[0] and "unchanged" in err[0]
    assert tree(tmp_path / "data") == before  # the old cohort, whole; no temp file or folder left
    assert main(raw(tmp_path, seed=2)) == 0  # space again: the rerun completes
    after = tree(tmp_path / "data")
    assert after != before and set(after) == set(before)


def test_a_full_disk_while_writing_one_file_keeps_the_old_file(tmp_path):
    from boneseg.core.io import write_json
    from boneseg.errors import DiskFull

    out = tmp_path / "metrics.json"
    write_json(out, {"old": 1})
    old = out.read_bytes()
    with FullDisk(tmp_path, budget=4), pytest.raises(DiskFull, match=f"{out}: no space left"):
        write_json(out, {"new": list(range(100))})
    assert out.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
