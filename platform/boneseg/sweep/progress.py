"""Where a sweep stands: trials done / running / pending, each running trial's epoch and
last validation Dice, elapsed time and an ETA from the measured trial durations.

No Ray and no MLflow here: the driver's Tune callback feeds events in, and shows
`table()` live in a terminal (rich), or prints `line()`s once per epoch per trial when
the output is not a terminal (CI, `dvc repro > log`); `summary()` is the one-line status
the MLflow parent run carries as its `progress` tag.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


@dataclass
class TrialState:
    status: str = PENDING
    epoch: int = -1  # the last epoch reported
    val_bone_dice: float = float("nan")
    started: float | None = None  # clock() when it (re)started
    seconds: float | None = None  # wall time, once done
    retries: int = 0


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "?"
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class SweepProgress:
    """`trials`: (variant, fold) keys of the grid; `epochs` per trial; `slots`: trials that
    run at once (the cluster's CPUs or GPUs over one trial's share)."""

    def __init__(self, trials: list[tuple[str, int]], epochs: int, slots: int, clock=time.monotonic):
        self.trials = {k: TrialState() for k in trials}
        self.epochs, self.slots, self.clock = epochs, max(1, slots), clock
        self.t0 = clock()

    # ------------------------------------------------------------ events
    def start(self, key) -> None:
        s = self.trials[key]
        if s.status == RUNNING:  # a retry: the clock keeps running from the first start
            s.retries += 1
            return
        s.status, s.started = RUNNING, self.clock()

    def epoch(self, key, epoch: int, val_bone_dice: float) -> None:
        s = self.trials[key]
        if s.status != RUNNING:
            self.start(key)
        s.epoch, s.val_bone_dice = epoch, val_bone_dice

    def done(self, key, bone_dice: float) -> None:
        s = self.trials[key]
        if s.status == DONE:
            return
        s.seconds = self.clock() - s.started if s.started is not None else None
        s.status, s.val_bone_dice, s.epoch = DONE, bone_dice, self.epochs - 1

    def failed(self, key) -> None:
        self.trials[key].status = FAILED

    def finished_before(self, key) -> None:
        """A trial a restored sweep had already finished (no duration measured here)."""
        self.trials[key].status = DONE

    # ------------------------------------------------------------ state
    def counts(self) -> dict[str, int]:
        out = {PENDING: 0, RUNNING: 0, DONE: 0, FAILED: 0}
        for s in self.trials.values():
            out[s.status] += 1
        return out

    def trial_seconds(self) -> float | None:
        """The expected wall time of one trial: the mean of the finished ones measured here,
        else extrapolated from the running ones' epochs so far."""
        done = [s.seconds for s in self.trials.values() if s.status == DONE and s.seconds]
        if done:
            return sum(done) / len(done)
        now, rates = self.clock(), []
        for s in self.trials.values():
            if s.status == RUNNING and s.epoch >= 0 and s.started is not None:
                rates.append((now - s.started) / (s.epoch + 1) * self.epochs)
        return sum(rates) / len(rates) if rates else None

    def eta_seconds(self) -> float | None:
        """Remaining work (pending trials in full, running ones their rest) over the slots."""
        per = self.trial_seconds()
        if per is None:
            return None
        now = self.clock()
        left = sum(per for s in self.trials.values() if s.status == PENDING)
        left += sum(max(per - (now - s.started), 0.0) for s in self.trials.values()
                    if s.status == RUNNING and s.started is not None)
        running = self.counts()[RUNNING]
        return left / max(min(self.slots, running + self.counts()[PENDING]), 1)

    def summary(self) -> str:
        c = self.counts()
        text = (f"{c[DONE]}/{len(self.trials)} done, {c[RUNNING]} running, {c[PENDING]} pending"
                + (f", {c[FAILED]} failed" if c[FAILED] else ""))
        return (
            f"{text}; elapsed {fmt_duration(self.clock() - self.t0)}, ETA {fmt_duration(self.eta_seconds())}"
        )

    def line(self, key) -> str:
        """One plain line for a trial's latest event (for logs that are not a terminal)."""
        s, (variant, fold) = self.trials[key], key
        what = f"epoch {s.epoch + 1}/{self.epochs}" if s.status == RUNNING else s.status
        return f"{variant}/fold{fold} {what}: val_bone_dice {s.val_bone_dice:.4f} | {self.summary()}"

    def table(self):
        """A rich Table: one row per running trial, then the totals and the ETA."""
        from rich.table import Table

        t = Table(title="boneseg sweep", title_justify="left", caption=self.summary(), caption_justify="left")
        for col in ("trial", "status", "epoch", "val bone Dice", "time"):
            t.add_column(col, justify="left" if col in ("trial", "status") else "right")
        now = self.clock()
        for (variant, fold), s in self.trials.items():
            if s.status == PENDING:
                continue
            secs = s.seconds if s.status == DONE else (now - s.started if s.started is not None else None)
            dice = "" if math.isnan(s.val_bone_dice) else f"{s.val_bone_dice:.4f}"
            epoch = f"{s.epoch + 1}/{self.epochs}" if s.epoch >= 0 else "-"
            t.add_row(
                f"{variant}/fold{fold}",
                s.status + (f" (retry {s.retries})" if s.retries else ""),
                epoch,
                dice,
                fmt_duration(secs),
            )
        return t
