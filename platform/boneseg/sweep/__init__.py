"""The Ray Tune grid: the driver (`driver`, `tracker`), the trial adapter (`trial`,
with `faults` for tests) and the results (`results`, no Ray). Only `driver`, `tracker`
and `trial` import Ray."""
