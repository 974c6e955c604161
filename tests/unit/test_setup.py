"""scripts/setup.sh: a no-op once done; a failed or interrupted install is redone, never
stamped as done. The venv's python is a stand-in here (a fault injector), the script is real."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKE = """#!/usr/bin/env bash
# stands in for .venv/bin/python: pip fails while $FAIL_PIP exists; every call is logged
echo "$*" >> "$(dirname "$0")/../calls.log"
if [ "$1 $2" = "-m pip" ] && [ -e "$FAIL_PIP" ]; then echo "ERROR: no matching distribution" >&2; exit 1; fi
exit 0
"""


def fake_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for f in ("scripts/setup.sh", "requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / f, repo / f)
    bin_ = repo / ".venv" / "bin"
    bin_.mkdir(parents=True)
    for name, text in (("python", FAKE), ("boneseg", "#!/bin/sh\n"), ("ruff", "#!/bin/sh\n")):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod((bin_ / name).stat().st_mode | stat.S_IEXEC)
    return repo


def setup(repo: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, env=env, capture_output=True, text=True)


def test_failed_install_is_not_stamped_and_is_redone(tmp_path):
    repo = fake_repo(tmp_path)
    stamp = repo / ".venv" / ".boneseg-requirements.sha256"
    env = {**os.environ, "FAIL_PIP": str(tmp_path / "fail")}
    (tmp_path / "fail").touch()
    r = setup(repo, env)
    assert r.returncode == 1 and "could not install requirements.txt" in r.stderr
    assert not stamp.exists()
    (tmp_path / "fail").unlink()
    r = setup(repo, env)
    assert r.returncode == 0 and stamp.is_file()
    calls = (repo / ".venv" / "calls.log").read_text().splitlines()
    assert calls.count("-m pip install -q -r requirements.txt") == 2  # the failed install was redone
    n = len(calls)
    assert setup(repo, env).returncode == 0  # done: a no-op, pip is not even started
    assert len((repo / ".venv" / "calls.log").read_text().splitlines()) == n
    (repo / "requirements.txt").write_text((repo / "requirements.txt").read_text() + "\n# changed\n")
    assert setup(repo, env).returncode == 0  # changed requirements: installs again
    assert len((repo / ".venv" / "calls.log").read_text().splitlines()) > n


def test_pyproject_lists_every_package_the_code_imports():
    import ast
    import tomllib

    # import name -> distribution name, where they differ
    dist = {"yaml": "pyyaml", "ray": "ray[default,tune]", "pydantic": "pydantic>=2"}
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    imported = set()
    for f in (ROOT / "platform" / "boneseg").rglob("*.py"):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.Import):
                imported |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
                imported.add(n.module.split(".")[0])
    third = {m for m in imported if m not in sys.stdlib_module_names and m != "boneseg"}
    missing = sorted(m for m in third if dist.get(m, m) not in listed)
    assert not missing, f"pyproject.toml [project] dependencies lack {missing}"
