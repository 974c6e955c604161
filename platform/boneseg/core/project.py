"""The project's private state: one folder per project, found from the data's location
(never from the working directory), holding what must not reach git, DVC or logs.

    <project>/.boneseg/            mode 0700
        import_idmap.json          the pseudonym map (source content key -> case id), 0600
        locks/<name>.lock          flock files: one import / correction / sweep at a time

<project> is the nearest folder at or above the data that holds dvc.yaml, .dvc or .git;
data outside any project keeps its state beside itself (its parent folder). A queued DVC
experiment runs in a temporary copy of the project that DVC deletes afterwards: its
private state, tracking store and sweep storage stay the project's (`anchored_*`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Iterator

from boneseg.errors import DataError

STATE_DIR = ".boneseg"
ID_MAP = "import_idmap.json"
MARKERS = ("dvc.yaml", ".dvc", ".git")


def queued_workspace_root() -> Path | None:
    """The project a DVC experiment runs for when it runs in a temporary copy of it
    (`dvc exp run --queue` / `--temp`: DVC sets DVC_ROOT to the project and runs the
    stages in .dvc/tmp/exps/..., which it deletes afterwards); None otherwise."""
    root = os.environ.get("DVC_ROOT")
    if not root:
        return None
    root_p, cwd = Path(root).resolve(), Path.cwd().resolve()
    if cwd == root_p or (root_p in cwd.parents and root_p / ".dvc" not in cwd.parents):
        return None  # the project itself, or a stage's wdir inside it
    return root_p  # .dvc/tmp/exps/<copy> (queued), or a copy elsewhere


def anchored_path(path: str) -> str:
    """A relative local path (not a URI) outside the temporary copy's life: under the project
    when running queued, else unchanged."""
    root = queued_workspace_root()
    if root is None or "://" in path or Path(path).is_absolute():
        return path
    return str(root / path)


def anchored_uri(uri: str) -> str:
    """sqlite:///relative.db -> sqlite:////<project>/relative.db when running queued."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/") and queued_workspace_root():
        return prefix + anchored_path(uri[len(prefix):])
    return uri


def project_root(path: str | os.PathLike) -> Path:
    """The project that `path` (a file or folder, existing or not) belongs to (for a queued
    DVC experiment's temporary copy: the project it was copied from, so the private state,
    the id map and locks included, is the project's own)."""
    p = Path(path).resolve()
    for d in (p, *p.parents):
        if any((d / m).exists() for m in MARKERS):
            queued = queued_workspace_root()
            return queued if queued is not None and d == Path.cwd().resolve() else d
    return p.parent


def state_dir(path: str | os.PathLike) -> Path:
    """<project>/.boneseg, created 0700 (and made 0700 if it was looser)."""
    d = project_root(path) / STATE_DIR
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    if d.stat().st_mode & 0o077:
        os.chmod(d, 0o700)
    return d


def id_map_path(data_dir: str | os.PathLike) -> Path:
    return state_dir(data_dir) / ID_MAP


@contextlib.contextmanager
def exclusive(anchor: str | os.PathLike, name: str, what: str) -> Iterator[None]:
    """Hold <project>/.boneseg/locks/<name>.lock (flock) for the block; a second holder is
    refused at once with a DataError that names the first (pid, host, command, since)."""
    locks = state_dir(anchor) / "locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    path = locks / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('_.')}.lock"  # e.g. an experiment's path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"{what}: refused, {_holder(path)}. Wait for it to finish (or stop it), then "
                            "run this again.") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": what,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"{h['command']} is already running (pid {h['pid']} on {h['host']}, since {h['since']})"
    except (OSError, ValueError, KeyError):
        return f"another process holds {path}"


def lock_name(kind: str, path: str | os.PathLike) -> str:
    """A lock per kind and folder: 'import-raw-1a2b3c4d'."""
    p = Path(path).resolve()
    return f"{kind}-{p.name}-{hashlib.sha256(str(p).encode()).hexdigest()[:8]}"


def owning_stage(path: str | os.PathLike) -> tuple[str, str] | None:
    """(stage, output) when `path` is, or lies inside, an output of a stage in its project's
    dvc.yaml: `dvc repro` deletes and rebuilds such a folder, so nothing may be put there by hand."""
    import yaml

    root = project_root(path)
    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.is_file():
        return None
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}) or {}
    except (OSError, yaml.YAMLError):
        return None
    p = Path(path).resolve()
    for name, stage in stages.items():
        for out in (stage or {}).get("outs", []) or []:
            rel = next(iter(out)) if isinstance(out, dict) else str(out)
            o = (root / rel).resolve()
            if p == o or o in p.parents:
                return str(name), rel
    return None


def _dvc_files(root: Path):
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if not x.startswith(".") and x not in ("node_modules", "__pycache__")
                   and not (Path(d) / x / "pyvenv.cfg").is_file()]
        yield from (Path(d) / f for f in files if f.endswith(".dvc"))


def protected(path: str | os.PathLike) -> str | None:
    """Why `path` must not be written by a tool (None if it may): it lies in the project's
    data/ folder, in a stage's output, or in a folder tracked with `dvc add`."""
    import yaml

    root, p = project_root(path), Path(path).resolve()
    if (root / "data") == p or (root / "data") in p.parents:
        return f"it lies in the project's data folder {root / 'data'}, which holds the lab's data"
    owned = owning_stage(p)
    if owned:
        return f"it lies in {owned[1]}, the output of the DVC stage `{owned[0]}`"
    for f in _dvc_files(root):
        try:
            outs = (yaml.safe_load(f.read_text()) or {}).get("outs", []) or []
        except (OSError, yaml.YAMLError):
            continue
        for o in outs:
            target = (f.parent / str(o.get("path", ""))).resolve() if isinstance(o, dict) else None
            if target and (p == target or target in p.parents):
                return f"it lies in {target}, tracked by DVC ({f.name})"
    return None


def refuse_stage_output(out: Path, flag: str = "--out") -> None:
    owned = owning_stage(out)
    if owned:
        stage, rel = owned
        raise DataError(f"{flag} {out}: {rel} is the output of the DVC stage `{stage}`, which `dvc repro` "
                        "deletes and rebuilds. List the source in params.yaml instead, e.g. data.sources: "
                        "[{path: data/sources/lab1, layout: dicom, cohort: abdomen}], then `dvc repro` "
                        "(docs/own-ct.md); or import into a folder of your own with --out.")
