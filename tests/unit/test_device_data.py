"""train.data_on_device: batches gathered from device tensors equal the DataLoader's
(SliceDataset) for the same seed and epoch, and so does one trained epoch, bit for bit."""
import pytest
import torch

from boneseg.core.data.dataset import SliceDataset, make_loader
from boneseg.core.data.device_data import DeviceSlices, use_device_data
from boneseg.core.engine.augment import prepare_batch
from boneseg.core.engine.training import fit, train_epoch
from boneseg.core.layout import load_splits
from boneseg.core.networks.models import build_model
from boneseg.core.networks.optim import Stepper
from boneseg.core.networks.runtime import Runtime

CPU = torch.device("cpu")


def train_cases(cfg):
    return load_splits(cfg.data.splits_file)["folds"][0]["train"]


@pytest.mark.parametrize("classes, targets, cl", [("multi", "hard", False), ("single", "hard", False),
                                                  ("multi", "soft", False), ("single", "soft", False),
                                                  ("multi", "hard", True), ("single", "soft", True)])
def test_device_batches_equal_the_dataloaders(tiny_pipeline, classes, targets, cl):
    ds = SliceDataset(tiny_pipeline.data.slices_dir, train_cases(tiny_pipeline), classes, targets)
    tc = tiny_pipeline.train.model_copy(update={"batch_size": 3, "patch_size": None, "augment": False,
                                                "channels_last": False})
    dev = DeviceSlices.from_dataset(ds, CPU, channels_last=cl)
    assert len(dev) == len(ds) and dev.stacks.dtype == torch.float16
    for epoch in (0, 1):
        n = 0
        # streamed side by side: the device path reuses its buffers from batch to batch
        for (x0, y0), (x1, y1) in zip(make_loader(ds, tc, epoch, seed=5), dev.batches(3, epoch, seed=5),
                                      strict=True):
            assert x0.dtype == torch.float32 and x1.dtype == torch.float16  # gathered as stored
            assert x1.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
            assert y1.dtype == (torch.float32 if targets == "soft" else torch.uint8)
            assert torch.equal(x0, x1.float()) and torch.equal(y0, y1.to(y0.dtype))
            # what the step takes: the same tensors from either path, float32 + int64 on the CPU
            fp32 = Runtime(CPU)  # contiguous, as tc says
            (a0, b0), (a1, b1) = (prepare_batch(x, y, tc, fp32) for x, y in ((x0, y0), (x1, y1)))
            assert a0.dtype == a1.dtype == torch.float32 and b0.dtype == b1.dtype
            assert b0.dtype == (torch.float32 if targets == "soft" else torch.int64)
            assert torch.equal(a0, a1) and torch.equal(b0, b1)
            n += 1
        assert n == len(dev.batches(3, epoch, seed=5)) == len(make_loader(ds, tc, epoch, seed=5)) > 1
    idx = torch.tensor([4, 0, 7])
    buffers = torch.empty(3, *dev.stacks.shape[1:], dtype=torch.float16), \
        torch.empty(3, *dev.targets.shape[1:], dtype=torch.uint8)
    fresh, buffered = dev.gather(idx), dev.gather(idx, *buffers)
    assert torch.equal(fresh[0], buffered[0]) and torch.equal(fresh[1], buffered[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_autocast_the_float16_batch_goes_in_as_it_is_with_the_same_result(tiny_pipeline, dtype):
    """prepare_batch keeps the gathered float16 image under autocast (no widening pass):
    the model's first layer casts it to the autocast dtype, exactly as it casts float32."""
    ds = SliceDataset(tiny_pipeline.data.slices_dir, train_cases(tiny_pipeline), "multi", "hard")
    x16, y = next(iter(DeviceSlices.from_dataset(ds, CPU).batches(2, 0, 0)))
    tc = tiny_pipeline.train.model_copy(update={"patch_size": 32, "augment": False, "channels_last": True})
    torch.manual_seed(3)
    xa, ya = prepare_batch(x16, y, tc, Runtime(CPU, torch.float16, channels_last=True))
    assert xa.dtype == torch.float16 and ya.dtype == torch.int64 and xa.shape[-1] == 32
    torch.manual_seed(3)
    xf, yf = prepare_batch(x16, y, tc, Runtime(CPU, None, channels_last=True))
    assert xf.dtype == torch.float32 and torch.equal(xa.float(), xf) and torch.equal(ya, yf)  # same crop
    torch.manual_seed(0)
    net, _ = build_model(5, "none")
    net.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        assert torch.equal(net(xa), net(xf))
    aug = tc.model_copy(update={"augment": True})
    amp = Runtime(CPU, torch.float16, channels_last=True)
    assert prepare_batch(x16, y, aug, amp)[0].dtype == torch.float32  # augmentation: float32


@pytest.mark.parametrize("cl", [False, True])
def test_a_trained_epoch_is_bit_identical_with_crops_and_augmentation(tiny_pipeline, cl):
    ds = SliceDataset(tiny_pipeline.data.slices_dir, train_cases(tiny_pipeline), "multi", "hard")
    tc = tiny_pipeline.train.model_copy(update={"batch_size": 2, "patch_size": 32, "augment": True,
                                                "channels_last": cl})
    rt = Runtime(CPU)  # fp32
    weights = []
    for path in ("loader", "device"):
        torch.manual_seed(0)
        net, _ = build_model(5, "none")
        loader = (make_loader(ds, tc, 0, 0) if path == "loader"
                  else DeviceSlices.from_dataset(ds, CPU, cl).batches(2, 0, 0))
        stepper = Stepper.build(net, tc, len(loader), 2, rt)
        torch.manual_seed(1)  # crops and augmentation draw from here, on either path
        out = train_epoch(net, loader, stepper, tc, rt)
        weights.append((out["train_loss"], {k: v.clone() for k, v in net.state_dict().items()}))
    assert weights[0][0] == weights[1][0]
    assert all(torch.equal(v, weights[1][1][k]) for k, v in weights[0][1].items())


def test_auto_is_off_on_cpu_and_explicit_settings_win(tiny_pipeline):
    ds = SliceDataset(tiny_pipeline.data.slices_dir, train_cases(tiny_pipeline))
    assert use_device_data("auto", ds, CPU) is False
    assert use_device_data(True, ds, CPU) is True and use_device_data(False, ds, CPU) is False
    assert DeviceSlices.bytes_needed(ds) > 0


def test_auto_streams_from_the_slice_store_when_a_small_budget_is_exceeded_and_trains_the_same(
        tiny_pipeline, tmp_path):
    """train.data_memory_gib: slices that fit the budget go on the device; with a budget
    below their size the trial streams them from the memory-mapped store instead, and
    trains the very same weights (so a cohort larger than memory trains as a small one does)."""
    need = DeviceSlices.bytes_needed(SliceDataset(tiny_pipeline.data.slices_dir, train_cases(tiny_pipeline)))
    seen, results = {}, {}

    class Spy:
        def __init__(self, name):
            self.name = name

        def on_start(self, info):
            seen[self.name] = info.data_on_device

    for name, budget in (("fits", 2 * need / 2**30), ("streams", need / 4 / 2**30)):
        train = tiny_pipeline.train.model_copy(update={"epochs": 1, "data_memory_gib": budget})
        cfg = tiny_pipeline.model_copy(update={"train": train})
        results[name] = fit(cfg, "multi-random", 0, out_dir=tmp_path / name, callbacks=[Spy(name)])
    assert seen == {"fits": True, "streams": False}
    assert results["fits"].history[0]["train_loss"] == results["streams"].history[0]["train_loss"]
    wa = torch.load(tmp_path / "fits" / "model.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "streams" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert results["fits"].bone_dice == results["streams"].bone_dice
