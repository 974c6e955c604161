"""The trials' scratch folders: a killed trial's folder is removed by the next trial on the
same host, a live one's and another host's never."""
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boneseg.errors import DataError
from boneseg.sweep.trial import _host, make_scratch, reap_scratch


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_reap_removes_only_this_hosts_dead_trials(tmp_path):
    root = tmp_path / "boneseg-scratch"
    dead = root / f"multi-imagenet-fold3-{_host()}-{dead_pid()}-ab_c1"
    live = root / f"single-random-fold0-{_host()}-{os.getpid()}-xyz"
    other = root / f"multi-random-fold1-otherhost-{dead_pid()}-q9"
    stranger = root / "not-a-trial"
    for d in (dead, live, other, stranger):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "checkpoint.pt").write_bytes(b"x" * 10)
    assert reap_scratch(root) == [dead]
    assert not dead.exists() and live.is_dir() and other.is_dir() and stranger.is_dir()
    assert reap_scratch(tmp_path / "absent") == []


def test_a_zombie_counts_as_dead(tmp_path):
    """A SIGKILLed worker is a zombie until its parent reaps it: its folder goes."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.time() < deadline, "the child did not exit"
    zombie = tmp_path / f"multi-random-fold0-{_host()}-{p.pid}-zz"
    zombie.mkdir()
    assert reap_scratch(tmp_path) == [zombie]
    p.wait()


def test_make_scratch_names_its_owner_and_reaps_first(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    root = tmp_path / f"boneseg-scratch-{os.getuid()}"
    root.mkdir(mode=0o700)
    dead = root / f"multi-random-fold0-{_host()}-{dead_pid()}-zz"
    dead.mkdir(parents=True)
    d = make_scratch("multi-random", 2)
    assert d.parent == root and d.is_dir() and not dead.exists()
    assert d.name.startswith(f"multi-random-fold2-{_host()}-{os.getpid()}-")
    assert reap_scratch(d.parent) == []  # its own (live) folder stays


def test_scratch_root_is_private_to_its_user(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    d = make_scratch("multi-random", 0)
    assert d.parent == tmp_path / f"boneseg-scratch-{os.getuid()}"
    assert stat.S_IMODE(d.parent.stat().st_mode) == 0o700 and d.parent.stat().st_uid == os.getuid()


@pytest.mark.parametrize("plant", ["open", "link", "other_owner"])
def test_a_planted_or_open_scratch_root_is_refused(plant, tmp_path, monkeypatch):
    """Someone else made `<tmp>/boneseg-scratch-<uid>` first (open to all, a link to their
    folder, or owned by them): no trial writes into it."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    root = tmp_path / f"boneseg-scratch-{os.getuid()}"
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    if plant == "open":
        root.mkdir()
        root.chmod(0o777)
    elif plant == "link":
        root.symlink_to(theirs)
    else:
        root.mkdir(mode=0o700)
        monkeypatch.setattr(os, "getuid", lambda: os.stat(root).st_uid + 1)  # as seen by another user
        root = root.rename(tmp_path / f"boneseg-scratch-{os.getuid()}")
    with pytest.raises(DataError, match="not a private folder of this user"):
        make_scratch("multi-random", 0)
    assert not any(theirs.iterdir()) and not any(p.is_dir() for p in root.glob("multi-random-*"))
