"""A disk that fills up: files opened for writing under `root` raise ENOSPC once `budget`
bytes have been written to them in all (a fake, to inject the fault; everything else is real).

    with FullDisk(root, budget=10_000):
        ...  # writes under root fail part-way, as on a full disk
"""
from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path


class _Filling(io.RawIOBase):
    """A write-only stream that passes bytes to the real file until the disk is 'full'."""

    def __init__(self, real, disk: FullDisk, name: str):
        self.real, self.disk, self.name = real, disk, name

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = len(memoryview(b))
        if self.disk.used + n > self.disk.budget:
            self.disk.hits += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)
        self.disk.used += n
        return self.real.write(b)

    def seekable(self) -> bool:
        return self.real.seekable()

    def seek(self, *a):
        return self.real.seek(*a)

    def tell(self):
        return self.real.tell()

    def flush(self):
        self.real.flush()

    def close(self):
        if not self.closed:
            super().close()  # flushes first
            self.real.close()


class FullDisk:
    def __init__(self, root: Path, budget: int):
        self.root, self.budget, self.used, self.hits = str(Path(root).resolve()), budget, 0, 0
        self._open = builtins.open

    def _fake_open(self, file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, *a, **kw):
        writes = not isinstance(file, int) and any(c in mode for c in "wax+")
        path = os.path.abspath(os.fspath(file)) if writes else ""
        if not path.startswith(self.root + os.sep):
            return self._open(file, mode, buffering, encoding, errors, newline, *a, **kw)
        raw = _Filling(self._open(file, mode.replace("t", "").replace("b", "") + "b", 0), self, path)
        if "b" in mode:
            return raw
        return io.TextIOWrapper(io.BufferedWriter(raw), encoding=encoding or "utf-8", errors=errors,
                                newline=newline)

    def __enter__(self):
        builtins.open = self._fake_open
        io.open = self._fake_open
        return self

    def __exit__(self, *exc):
        builtins.open = self._open
        io.open = self._open
