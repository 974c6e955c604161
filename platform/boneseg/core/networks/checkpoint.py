"""Training-state files that cannot run code and cannot be half-read.

A checkpoint is `torch.save` of plain data only (tensors, numbers, strings, lists, dicts:
what `torch.load(weights_only=True)` accepts, so nothing in it is ever unpickled as an
object) followed by a trailer: a magic line, the payload's length and its SHA-256. A
truncated, bit-flipped or foreign file fails the check before torch reads a byte of it; a
file that passes the check but holds anything other than plain data is refused by
torch's safe loader. The checksum guards against damage, not against an attacker (who
could recompute it): the safe loader is what keeps a planted file from running.
"""
from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path

import torch

from boneseg.core.io import atomic_path

MAGIC = b"boneseg-ckpt-v1\n"
TRAILER = struct.Struct(f"<{len(MAGIC)}sQ32s")  # magic, payload length, sha256(payload)
MAX_BYTES = 8 << 30  # a ResNet-34 U-Net's full training state is ~0.3 GB


class CorruptCheckpoint(Exception):
    """The file is not a whole, plain-data boneseg checkpoint; str() says why."""


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` (plain data only) to `path` atomically, with its checksum trailer."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(payload)
        f.write(TRAILER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()))


def read_checkpoint(path: Path) -> dict:
    """The state saved at `path`; CorruptCheckpoint if it is truncated, damaged, too large,
    not a boneseg checkpoint, or holds anything but plain data."""
    size = Path(path).stat().st_size
    if size < TRAILER.size:
        raise CorruptCheckpoint(f"{size} bytes, shorter than the checksum trailer (truncated)")
    if size > MAX_BYTES + TRAILER.size:
        raise CorruptCheckpoint(f"{size} bytes, over the {MAX_BYTES >> 30} GiB limit")
    with open(path, "rb") as f:
        f.seek(size - TRAILER.size)
        magic, length, digest = TRAILER.unpack(f.read(TRAILER.size))
        if magic != MAGIC:
            raise CorruptCheckpoint("no boneseg checksum trailer (truncated, or not written by boneseg)")
        if length != size - TRAILER.size:
            raise CorruptCheckpoint(f"declares {length} bytes of data, holds {size - TRAILER.size}")
        f.seek(0)
        payload = f.read(length)
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptCheckpoint("checksum mismatch (damaged)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for objects the safe loader refuses
        why = type(exc).__name__
        raise CorruptCheckpoint(f"holds more than plain data, refused unread ({why})") from None
    if not isinstance(state, dict):
        raise CorruptCheckpoint(f"holds a {type(state).__name__}, not a dict of training state")
    return state
