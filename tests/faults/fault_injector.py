"""Fault injection for the sweep's tests: one trial fails once, after a given epoch.

Set BONESEG_INJECT_FAULT="raise|sigkill:<variant>:<fold>:<epoch>:<marker file>" and put
this folder first on PYTHONPATH: its sitecustomize.py then adds the injector to `fit()`'s
callbacks in every new Python process (Ray's trial workers included). The marker file
makes it happen once only (a retry runs clean). boneseg itself carries no trace of it.
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

    def on_epoch(self, epoch: int, metrics=None, ckpt_path=None) -> None:
        """fit()'s callback, after the trial's own (its resume point is saved first)."""
        if epoch != self.epoch or self.marker.exists():
            return
        self.marker.write_text(self.kind)  # fail once only
        if self.kind == "raise":
            raise RuntimeError(f"injected fault after epoch {epoch}")
        # SIGKILL mid-way through the next epoch, as an OOM killer or a lost node would
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()


def install() -> None:
    """Wrap `fit()` so that a trial named by BONESEG_INJECT_FAULT gets the injector as its
    last callback (sitecustomize.py calls this when the variable is set)."""
    import boneseg.core.engine.training as training

    fit = training.fit

    def fit_with_fault(cfg, variant, fold, out_dir=None, callbacks=(), resume=True):
        injector = Injector.from_env(variant, fold)
        return fit(cfg, variant, fold, out_dir, [*callbacks, injector] if injector else callbacks, resume)

    training.fit = fit_with_fault
