"""A trial's resources: its own peak RSS (reset at its start, so a reused Ray worker does
not report an earlier trial's peak), the device and its mean img/s."""
import numpy as np
import torch

from boneseg.core.engine import resources

CPU = torch.device("cpu")


def test_the_peak_rss_is_the_trials_own_not_the_worker_processs():
    scope = resources.start(CPU)
    base = resources.read(CPU, [], scope)["peak_rss_gib"]
    block = np.ones(512 * 2**20 // 8)  # 0.5 GiB, touched
    grown = resources.read(CPU, [], scope)["peak_rss_gib"]
    assert grown >= base + 0.45
    del block
    scope = resources.start(CPU)  # the next trial in the same process
    after = resources.read(CPU, [], scope)["peak_rss_gib"]
    if scope == "trial":  # the kernel let the peak be reset: the freed block is not counted
        assert after < grown - 0.4
    else:
        assert after >= grown


def test_speed_and_device_are_reported():
    res = resources.read(CPU, [{"images_per_s": 10.0}, {"images_per_s": 20.0}, {"epoch": 3}], "trial")
    assert res["images_per_s"] == 15.0 and res["device"].startswith("cpu: ")
    assert "cuda_max_allocated_gib" not in res
    assert resources.read(CPU, [], "trial")["images_per_s"] is None

