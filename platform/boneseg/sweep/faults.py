"""Fault injection for the sweep's tests: one trial fails once, after a given epoch.

Set BONESEG_INJECT_FAULT="raise|sigkill:<variant>:<fold>:<epoch>:<marker file>"; the
marker file makes it happen once only (a retry runs clean). Unset, it does nothing.
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

    @classmethod
    def from_env(cls, variant: str, fold: int) -> Injector | None:
        spec = os.environ.get(FAULT_ENV, "")
        if not spec:
            return None
        kind, fvariant, ffold, epoch, marker = spec.split(":", 4)
        if fvariant != variant or int(ffold) != fold:
            return None
        return cls(kind, int(epoch), Path(marker))

    def after_epoch(self, epoch: int) -> None:
        if epoch != self.epoch or self.marker.exists():
            return
        self.marker.write_text(self.kind)  # fail once only
        if self.kind == "raise":
            raise RuntimeError(f"injected fault after epoch {epoch}")
        # SIGKILL mid-way through the next epoch, as an OOM killer or a lost node would
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
