"""Atomic file writing: every output appears whole or not at all (temp path, then rename)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from boneseg.errors import DiskFull

FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full(path: Path, what: str, exc: OSError | None = None) -> DiskFull:
    why = f" ({exc.strerror or exc})" if exc else ""
    return DiskFull(f"{path}: no space left on the device{why}; the previous {what} is unchanged. Free some "
                    "space and run the same command again.")


def _create_beside(path: Path, mode: int | None) -> Path:
    """A new, empty temporary file beside `path`, created exclusively. Without `mode` the
    kernel applies the umask to 0o666, as for any new file (the umask is never read, since
    reading it means setting it, which races with other threads)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else 0o600)
        except FileExistsError:
            continue
        if mode is not None:
            os.fchmod(fd, mode)
        os.close(fd)
        return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename onto `path` only if the block succeeds.
    The file gets `mode` (default: 0o666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_beside(path, mode)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in FULL:
            raise _disk_full(path, "file", exc) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; it replaces the folder `path` only if
    the block succeeds (no half-written folder is ever visible under `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o755)
    old = path.with_name(f".{path.name}.old")
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except DiskFull:  # a file inside the folder: name the folder, not its hidden temp copy
        raise _disk_full(path, "folder") from None
    except OSError as exc:
        if exc.errno in FULL:
            raise _disk_full(path, "folder", exc) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes, mode: int | None = None) -> None:
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(payload)


def atomic_write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode(), mode)


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> None:
    """`obj` as JSON (NaN kept as JSON's NaN, numpy scalars as floats), atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=float) + "\n")


def save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
