"""Pseudonymous case ids for imported CT, keyed by content.

A source is identified by its CT as imported (`content_key`: canonical int16 voxels,
shape and grid), never by a file name or UID: two sites' `patient1.nii.gz` cannot share
an id, and the same CT imported twice keeps its id. The project's map (content key ->
case id) is private (`core.project`: 0600 in a 0700 folder) and never logged.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from boneseg.core.imaging.nifti import Volume
from boneseg.core.io import atomic_write_text
from boneseg.errors import DataError

ID_MAP_FORMAT = "boneseg-idmap-1"


def content_key(image: Volume) -> str:
    """What identifies a source: its CT as imported (canonical int16 voxels, shape, affine to
    1 um), never its file name. Two files of one CT share the key; two patients cannot."""
    h = hashlib.sha256()
    h.update(repr((image.data.dtype.str, image.shape)).encode())
    h.update(np.round(image.affine, 3).astype(np.float64).tobytes())
    h.update(np.ascontiguousarray(image.data).data)
    return f"ct-sha256:{h.hexdigest()}"


def load_id_map(path: Path) -> dict[str, str]:
    """The project's pseudonym map: {content key: case id}. A missing file is an empty map."""
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != ID_MAP_FORMAT or not isinstance(doc.get("cases"), dict):
            raise ValueError
    except (ValueError, AttributeError):
        raise DataError(f"{path}: not a boneseg id map ({ID_MAP_FORMAT}). Restore it from your backup; it is "
                        "the only link between case ids and their sources.") from None
    return {str(k): str(v) for k, v in doc["cases"].items()}


def save_id_map(path: Path, ids: dict[str, str]) -> None:
    """Atomically, 0600, in the 0700 state folder: the map re-identifies patients."""
    doc = {"format": ID_MAP_FORMAT, "cases": dict(sorted(ids.items(), key=lambda kv: kv[1]))}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n", mode=0o600)


def assign_ids(keys: list[str], id_map: dict[str, str], taken: set[str] = frozenset(),
               prefix: str = "ct") -> dict[str, str]:
    """Stable pseudonyms: a known source keeps its id; a new one gets the next number that
    no source in the map and no folder in `taken` has, so no id ever passes to another source."""
    out = dict(id_map)
    used = {v for v in out.values()} | set(taken)
    nums = {int(v[len(prefix):]) for v in used if v.startswith(prefix) and v[len(prefix):].isdigit()}
    nxt = max(nums, default=-1) + 1
    for k in keys:
        if k not in out:
            out[k] = f"{prefix}{nxt:04d}"
            nxt += 1
    return out
