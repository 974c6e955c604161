"""train.data_on_device: batches gathered from device tensors equal the DataLoader's
(SliceDataset) for the same seed and epoch, and so does one trained epoch, bit for bit."""
import pytest
import torch

from boneseg.core.dataset import SliceDataset, make_loader
from boneseg.core.device_data import DeviceSlices, use_device_data
from boneseg.core.layout import load_splits
from boneseg.core.models import build_model
from boneseg.core.runtime import grad_scaler
from boneseg.core.training import make_optim, train_epoch

CPU = torch.device("cpu")


def train_cases(cfg):
    return load_splits(cfg.data.splits_file)["folds"][0]["train"]


@pytest.mark.parametrize("classes, targets", [("multi", "hard"), ("single", "hard"), ("multi", "soft"),
                                              ("single", "soft")])
def test_device_batches_equal_the_dataloaders(tiny_pipeline, classes, targets):
    ds = SliceDataset(tiny_pipeline.data.slices_dir, train_cases(tiny_pipeline), classes, targets)
    tc = tiny_pipeline.train.model_copy(update={"batch_size": 3})
    dev = DeviceSlices.from_dataset(ds, CPU)
    assert len(dev) == len(ds) and dev.images.dtype == torch.float16
    for epoch in (0, 1):
        n = 0
        # streamed side by side: the device path reuses its image buffer from batch to batch
        for (x0, y0), (x1, y1) in zip(make_loader(ds, tc, epoch, seed=5), dev.batches(3, epoch, seed=5),
                                      strict=True):
            assert x1.dtype == x0.dtype == torch.float32 and y1.dtype == y0.dtype
            assert torch.equal(x0, x1) and torch.equal(y0, y1)
            n += 1
        assert n == len(dev.batches(3, epoch, seed=5)) == len(make_loader(ds, tc, epoch, seed=5)) > 1
    idx = torch.tensor([4, 0, 7])
    fresh, buffered = dev.gather(idx), dev.gather(idx, out=torch.empty(3, 3, *dev.images.shape[1:]))
    assert torch.equal(fresh[0], buffered[0]) and torch.equal(fresh[1], buffered[1])


def test_a_trained_epoch_is_bit_identical_with_crops_and_augmentation(tiny_pipeline):
    ds = SliceDataset(tiny_pipeline.data.slices_dir, train_cases(tiny_pipeline), "multi", "hard")
    tc = tiny_pipeline.train.model_copy(update={"batch_size": 2, "patch_size": 32, "augment": True,
                                                "channels_last": False})
    auto = {"device_type": "cpu", "enabled": False}
    weights = []
    for path in ("loader", "device"):
        torch.manual_seed(0)
        net, _ = build_model(5, "none")
        loader = (make_loader(ds, tc, 0, 0) if path == "loader"
                  else DeviceSlices.from_dataset(ds, CPU).batches(2, 0, 0))
        opt, sched = make_optim(net, tc, len(loader), 2)
        torch.manual_seed(1)  # crops and augmentation draw from here, on either path
        out = train_epoch(net, loader, opt, sched, grad_scaler(auto), tc, CPU, auto)
        weights.append((out["train_loss"], {k: v.clone() for k, v in net.state_dict().items()}))
    assert weights[0][0] == weights[1][0]
    assert all(torch.equal(v, weights[1][1][k]) for k, v in weights[0][1].items())


def test_auto_is_off_on_cpu_and_explicit_settings_win(tiny_pipeline):
    ds = SliceDataset(tiny_pipeline.data.slices_dir, train_cases(tiny_pipeline))
    assert use_device_data("auto", ds, CPU) is False
    assert use_device_data(True, ds, CPU) is True and use_device_data(False, ds, CPU) is False
    assert DeviceSlices.bytes_needed(ds) > 0
