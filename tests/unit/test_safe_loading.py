"""Nothing read from disk or storage can run code, and a damaged checkpoint never blocks a
trial: checkpoints are plain data under a checksum (core/networks/checkpoint.py), fold
models are read with torch's safe loader, and no loader in the package can unpickle."""
import hashlib
import re
import struct
from pathlib import Path

import pytest
import torch

from boneseg.cli import main
from boneseg.core.engine.training import load_checkpoint
from boneseg.core.networks.checkpoint import (
    MAGIC,
    TRAILER,
    CorruptCheckpoint,
    read_checkpoint,
    save_checkpoint,
)
from boneseg.core.networks.runtime import rng_state, set_rng_state

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this runs `touch <marker>`: what a planted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path, trailer: bool) -> None:
    """A torch file whose pickle runs the payload; with a valid checksum trailer if asked
    (anyone who can write the file can compute one)."""
    torch.save({"model": {}, "fingerprint": "f", "evil": Payload(marker)}, path)
    if trailer:
        payload = path.read_bytes()
        path.write_bytes(payload + TRAILER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()))


def test_the_payload_runs_when_unpickled(tmp_path):
    """The planted file is real: an unsafe load would run it (this is what must never happen)."""
    marker = tmp_path / "pwned"
    plant(tmp_path / "evil.pt", marker, trailer=False)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("trailer", [True, False], ids=["with-valid-checksum", "bare"])
def test_a_planted_pickle_is_refused_as_a_checkpoint_and_runs_nothing(trailer, tmp_path):
    marker = tmp_path / "pwned"
    plant(tmp_path / "checkpoint.pt", marker, trailer)
    with pytest.raises(CorruptCheckpoint, match="refused unread" if trailer else "trailer"):
        read_checkpoint(tmp_path / "checkpoint.pt")
    assert not marker.exists()


def test_a_planted_resume_checkpoint_is_set_aside_and_training_starts_afresh(tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoint.pt"
    plant(ckpt, marker, trailer=True)
    assert load_checkpoint(ckpt, "f") is None  # nothing to resume from: the trial starts afresh
    assert not marker.exists() and not ckpt.exists() and (tmp_path / "checkpoint.pt.corrupt").is_file()
    err = capsys.readouterr().err
    assert str(ckpt) in err and "set aside" in err


def state() -> dict:
    return {"fingerprint": "f", "epoch": 3, "model": {"w": torch.randn(4, 4)}, "rng": rng_state(),
            "history": [{"epoch": 0, "train_loss": 0.5}], "info": {"variant": "multi-random"}}


def test_checkpoint_round_trip_restores_every_generator(tmp_path):
    import random

    import numpy as np

    s = state()
    save_checkpoint(tmp_path / "c.pt", s)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    back = read_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["model"]["w"], s["model"]["w"]) and back["history"] == s["history"]
    set_rng_state(back["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "grow"])
def test_a_damaged_checkpoint_is_named_and_never_half_read(damage, tmp_path, capsys):
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, state())
    data = bytearray(ckpt.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 3] ^= 0xFF
    elif damage == "empty":
        data = bytearray()
    else:  # bytes appended after the trailer
        data += b"\0" * 64
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint):
        read_checkpoint(ckpt)
    assert load_checkpoint(ckpt, "f") is None and (tmp_path / "checkpoint.pt.corrupt").is_file()
    assert str(ckpt) in capsys.readouterr().err


def test_a_checkpoint_declaring_more_data_than_it_holds_is_refused_before_reading(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"x" * 10 + struct.pack(f"<{len(MAGIC)}sQ32s", MAGIC, 1 << 62, b"\0" * 32))
    with pytest.raises(CorruptCheckpoint, match="declares"):
        read_checkpoint(ckpt)


def test_a_planted_fold_model_is_refused_in_one_line_and_runs_nothing(tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    marker = tmp_path / "pwned"
    plant(tmp_path / "fold0.pt", marker, trailer=False)
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 4), np.int16), np.eye(4)), tmp_path / "ct.nii.gz")
    rc = main(["segment", "--input", str(tmp_path / "ct.nii.gz"), "--output", str(tmp_path / "seg.nii.gz"),
               "--model", str(tmp_path / "fold0.pt")])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip() and "finished in" not in x]
    assert rc == 2 and len(err) == 1 and "fold0.pt" in err[0] and "Traceback" not in err[0], err
    assert not marker.exists() and not (tmp_path / "seg.nii.gz").exists()


UNSAFE = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|cPickle|dill\.|joblib\.load|"
                    r"allow_pickle\s*=\s*True")


def unsafe(line: str) -> bool:
    return bool(UNSAFE.search(line)) or ("torch.load(" in line and "weights_only=True" not in line)


def test_no_unsafe_loader_in_the_package():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for p in sorted((ROOT / "platform").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if unsafe(line)]
    assert not hits, "unsafe loading (torch.load takes weights_only=True):\n" + "\n".join(hits)
    assert unsafe("torch.load(p)") and unsafe("pickle.load(f)")
    assert not unsafe("torch.load(p, weights_only=True)")
