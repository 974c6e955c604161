"""Fault injection for the sweep's tests: one trial fails once, after a given epoch.

Set BONESEG_INJECT_FAULT="<kind>:<variant>:<fold>:<epoch>:<marker file>" (several, comma-
separated, for several trials) and put
this folder first on PYTHONPATH: its sitecustomize.py then adds the injector to `fit()`'s
callbacks in every new Python process (Ray's trial workers included). The marker file
makes it happen once only (a retry runs clean). boneseg itself carries no trace of it.

Kinds: `raise`; `sigkill`; `truncate` (the trial's resume point in the local sweep storage
BONESEG_FAULT_STORAGE is cut in half, then the trial raises); `plant` (the resume point is
replaced by a pickle that would create `<marker>.pwned` if unpickled, with a valid checksum
trailer, then the trial raises).
"""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

FAULT_ENV = "BONESEG_INJECT_FAULT"


@dataclass
class Injector:
    kind: str  # "raise" | "sigkill"
    epoch: int
    marker: Path

    variant: str = ""
    fold: int = 0

    @classmethod
    def from_env(cls, variant: str, fold: int) -> Injector | None:
        for spec in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
            kind, fvariant, ffold, epoch, marker = spec.split(":", 4)
            if fvariant == variant and int(ffold) == fold:
                return cls(kind, int(epoch), Path(marker), variant, fold)
        return None

    def resume_point(self) -> Path:
        storage = Path(os.environ["BONESEG_FAULT_STORAGE"])
        (found,) = storage.glob(f"*/resume/{self.variant}-fold{self.fold}.pt")
        return found

    def on_epoch(self, epoch: int, metrics=None, ckpt_path=None) -> None:
        """fit()'s callback, after the trial's own (its resume point is saved first)."""
        if epoch != self.epoch or self.marker.exists():
            return
        self.marker.write_text(self.kind)  # fail once only
        if self.kind == "truncate":
            point = self.resume_point()
            point.write_bytes(point.read_bytes()[: point.stat().st_size // 2])
        elif self.kind == "plant":
            plant(self.resume_point(), self.marker.with_name(self.marker.name + ".pwned"))
        if self.kind != "sigkill":
            raise RuntimeError(f"injected fault ({self.kind}) after epoch {epoch}")
        # SIGKILL mid-way through the next epoch, as an OOM killer or a lost node would
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path) -> None:
    """A torch file that runs `touch marker` when unpickled, under a valid checksum trailer."""
    import hashlib
    import io

    import torch

    from boneseg.core.networks.checkpoint import MAGIC, TRAILER

    buf = io.BytesIO()
    torch.save({"fingerprint": "x", "evil": Payload(marker)}, buf)
    payload = buf.getvalue()
    path.write_bytes(payload + TRAILER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()))


def install() -> None:
    """Wrap `fit()` so that a trial named by BONESEG_INJECT_FAULT gets the injector as its
    last callback (sitecustomize.py calls this when the variable is set)."""
    import boneseg.core.engine.training as training

    fit = training.fit

    def fit_with_fault(cfg, variant, fold, out_dir=None, callbacks=(), resume=True):
        injector = Injector.from_env(variant, fold)
        return fit(cfg, variant, fold, out_dir, [*callbacks, injector] if injector else callbacks, resume)

    training.fit = fit_with_fault
