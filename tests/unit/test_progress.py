"""The sweep's status (done / running / pending, epochs, ETA) on a hand-driven clock."""
import math

from boneseg.sweep.progress import SweepProgress, fmt_duration


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def grid(n_variants=2, n_folds=2):
    return [(f"v{i}", f) for i in range(n_variants) for f in range(n_folds)]


def test_counts_epochs_and_eta_from_measured_trial_durations():
    clock = Clock()
    p = SweepProgress(grid(), epochs=4, slots=2, clock=clock)
    assert p.counts() == {"pending": 4, "running": 0, "done": 0, "failed": 0}
    assert p.eta_seconds() is None and "ETA ?" in p.summary()
    p.start(("v0", 0))
    p.start(("v0", 1))
    clock.t = 30.0
    p.epoch(("v0", 0), 0, 0.5)  # 30 s per epoch so far: a trial should take ~120 s
    assert p.trial_seconds() == 120.0
    # 2 pending x 120 s + the running ones' rest (90 s each, the second has no epoch yet)
    assert p.eta_seconds() == (2 * 120 + 90 + 90) / 2
    clock.t = 100.0
    p.done(("v0", 0), 0.91)
    p.done(("v0", 1), 0.93)
    assert p.trial_seconds() == 100.0  # measured now, no longer extrapolated
    assert p.eta_seconds() == 2 * 100 / 2
    assert p.summary() == "2/4 done, 0 running, 2 pending; elapsed 1m40s, ETA 1m40s"
    p.start(("v1", 0))
    clock.t = 160.0
    p.epoch(("v1", 0), 1, float("nan"))  # an epoch without validation keeps no Dice
    line = p.line(("v1", 0))
    assert line.startswith("v1/fold0 epoch 2/4: val_bone_dice nan | 2/4 done, 1 running, 1 pending")
    # one running (40 s of ~100 left) and one pending trial on 2 slots
    assert math.isclose(p.eta_seconds(), (100 + 40) / 2)


def test_retries_failures_and_trials_finished_before_a_restore():
    clock = Clock()
    p = SweepProgress(grid(1, 3), epochs=2, slots=1, clock=clock)
    p.finished_before(("v0", 0))
    p.start(("v0", 1))
    p.start(("v0", 1))  # Tune restarts it from its checkpoint
    p.failed(("v0", 2))
    assert p.trials[("v0", 1)].retries == 1
    assert p.counts() == {"pending": 0, "running": 1, "done": 1, "failed": 1}
    assert "1 failed" in p.summary()
    table = p.table()
    assert table.row_count == 3 and "retry 1" in str(table.columns[1]._cells)


def test_durations_read_as_minutes_and_hours():
    assert fmt_duration(59.4) == "0m59s" and fmt_duration(3725) == "1h02m" and fmt_duration(None) == "?"
