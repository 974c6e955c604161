"""The AMP path, run on CPU with a tiny model: the same code (`runtime.Runtime`, its
autocast and GradScaler, `optim.Stepper`, `training.train_epoch`, checkpoints) that
serves CUDA."""
import warnings

import numpy as np
import pytest
import torch

from boneseg.core.config import TrainConfig
from boneseg.core.engine.augment import prepare_batch
from boneseg.core.engine.training import maybe_resume, train_epoch
from boneseg.core.inference.predict import predict_slices
from boneseg.core.networks.checkpoint import read_checkpoint, save_checkpoint
from boneseg.core.networks.optim import Stepper
from boneseg.core.networks.runtime import Runtime, rng_state, use_channels_last

CPU = torch.device("cpu")


def tiny_net(seed=0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 1))


def batches(n=4, seed=0):
    """Fixed (x, y) batches: the label follows the middle channel's intensity bands."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.rand(4, 3, 16, 16, generator=g)
        y = (x[:, 1] * 5).long().clamp(max=4)
        out.append((x, y))
    return out


def cfg(amp: str) -> TrainConfig:
    return TrainConfig(amp=amp, patch_size=None, augment=False, channels_last=False, lr=1e-2, epochs=6)


def setup(amp: str, seed=0, epochs=6, n_batches=4):
    tc = cfg(amp).model_copy(update={"epochs": epochs})
    rt = Runtime.on(CPU, tc)
    model = tiny_net(seed)
    stepper = Stepper.build(model, tc, n_batches, epochs, rt)
    return tc, rt, model, stepper, stepper.opt, stepper.sched, stepper.scaler


def test_explicit_amp_is_honoured_on_cpu_and_auto_keeps_fp32():
    fp16, bf16 = Runtime.on(CPU, cfg("fp16")), Runtime.on(CPU, cfg("bf16"))
    assert (fp16.device, fp16.dtype, bf16.dtype) == (CPU, torch.float16, torch.bfloat16)
    with fp16.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16
    assert Runtime.on(CPU, cfg("auto")).dtype is None and Runtime.on(CPU, cfg("off")).dtype is None
    with Runtime.on(CPU, cfg("auto")).autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert (fp16.amp, bf16.amp, Runtime.on(CPU, cfg("auto")).amp) == ("float16", "bfloat16", "fp32")
    scaler = fp16.grad_scaler()
    assert scaler.is_enabled() and scaler._device == "cpu"
    assert not bf16.grad_scaler().is_enabled()  # bf16 has fp32's range: no loss scaling
    assert not Runtime.on(CPU, cfg("auto")).grad_scaler().is_enabled()


def test_fp16_autocast_with_grad_scaler_lowers_the_loss_as_fp32_does():
    data, curves = batches(), {}
    for amp in ("fp16", "off"):
        tc, rt, model, stepper, opt, sched, scaler = setup(amp, epochs=20)
        curves[amp] = [train_epoch(model, data, stepper, tc, rt)["train_loss"]
                       for _ in range(20)]
        if amp == "fp16":
            assert scaler.is_enabled() and scaler.get_scale() >= 2.0**10  # the loss really was scaled
    fp16, fp32 = np.array(curves["fp16"]), np.array(curves["off"])
    assert fp16[-1] < 0.5 * fp16[0], fp16
    np.testing.assert_allclose(fp16, fp32, rtol=0.03)  # the same descent, to fp16's precision


def test_bf16_trains_without_a_scaler():
    tc, rt, model, stepper, opt, sched, scaler = setup("bf16", epochs=6)
    assert not scaler.is_enabled()
    data = batches()
    first = train_epoch(model, data, stepper, tc, rt)
    for _ in range(5):
        last = train_epoch(model, data, stepper, tc, rt)
    assert last["train_loss"] < first["train_loss"] and "amp_skipped_steps" not in last


def test_scaler_state_is_checkpointed_and_resume_is_bit_exact(tmp_path):
    data = batches()
    tc, rt, model, stepper, opt, sched, scaler = setup("fp16", epochs=4)
    for _ in range(4):
        train_epoch(model, data, stepper, tc, rt)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    tc, rt, model, stepper, opt, sched, scaler = setup("fp16", epochs=4)
    for _ in range(2):
        train_epoch(model, data, stepper, tc, rt)
    save_checkpoint(tmp_path / "c.pt", dict(fingerprint="f", epoch=1, model=model.state_dict(),
                                            **stepper.state_dict(), rng=rng_state(), history=[]))
    saved = read_checkpoint(tmp_path / "c.pt")["scaler"]
    assert saved["scale"] == scaler.get_scale() and saved["_growth_tracker"] == scaler._get_growth_tracker()

    tc, rt, model, stepper, opt, sched, scaler = setup("fp16", seed=9, epochs=4)  # other weights: overwritten
    _, start = maybe_resume(tmp_path / "c.pt", "f", model, stepper)
    assert start == 2 and scaler.get_scale() == saved["scale"]
    for _ in range(2):
        train_epoch(model, data, stepper, tc, rt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, straight[k]), k


def test_an_inf_gradient_skips_that_step_keeps_the_schedule_aligned_and_warns_nothing():
    tc, rt, model, stepper, opt, sched, scaler = setup("fp16", epochs=2, n_batches=4)
    # no natural overflow: only the injected one
    stepper.scaler = scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    poisoned = {"left": 1}

    def poison(grad):
        if poisoned["left"]:
            poisoned["left"] -= 1
            return torch.full_like(grad, float("inf"))
        return grad

    weight = model[0].weight
    hook = weight.register_hook(poison)
    before, scale0 = weight.detach().clone(), scaler.get_scale()
    data = batches(1)  # one batch: the first step of the run, where PyTorch's warning would fire
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train_epoch(model, data, stepper, tc, rt)
    hook.remove()
    assert out["amp_skipped_steps"] == 1
    assert torch.equal(weight.detach(), before)  # the optimizer step was skipped
    assert scaler.get_scale() == scale0 / 2  # and the scale backed off
    assert sched.last_epoch == 1  # the one-cycle schedule still advanced with the batch
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "lr_scheduler.step()" in m], messages
    more = train_epoch(model, batches(3, seed=1), stepper, tc, rt)
    assert more["amp_skipped_steps"] == 0 and not torch.equal(weight.detach(), before)
    assert sched.last_epoch == 4  # every batch stepped it once: aligned with the optimizer's step count


@pytest.mark.parametrize("amp, min_agree", [("fp16", 0.995), ("bf16", 0.98)])
def test_evaluation_under_autocast_gives_the_fp32_argmax(amp, min_agree):
    tc, rt, model, stepper, opt, sched, scaler = setup("off", epochs=10)
    data = batches()
    for _ in range(10):
        train_epoch(model, data, stepper, tc, rt)
    planes = np.random.default_rng(0).random((12, 16, 16), dtype=np.float32)  # (Z, S, S) windowed slices
    ref = predict_slices(model, planes, Runtime(CPU), channels_last=False)
    low = predict_slices(model, planes, Runtime.on(CPU, cfg(amp)), channels_last=False)
    agree = float((ref.argmax(1) == low.argmax(1)).float().mean())
    assert agree >= min_agree, agree
    assert low.dtype == torch.float32  # logits come back as fp32 either way


def test_channels_last_auto_trains_contiguous_on_cpu_and_is_channels_last_elsewhere():
    cuda = torch.device("cuda")  # a device object only: nothing runs there
    assert use_channels_last("auto", CPU) is False
    assert use_channels_last("auto", CPU, training=False) is True
    assert use_channels_last("auto", cuda) is True
    assert use_channels_last(True, CPU) is True
    assert use_channels_last(False, cuda, training=False) is False
    tc = TrainConfig(patch_size=None, augment=False)
    assert tc.channels_last == "auto"
    x, y = torch.rand(2, 3, 16, 16), torch.zeros(2, 16, 16, dtype=torch.uint8)
    xb, _ = prepare_batch(x, y, tc, Runtime.on(CPU, tc))
    assert xb.is_contiguous()
    cl = tc.model_copy(update={"channels_last": True})
    xb, _ = prepare_batch(x, y, cl, Runtime.on(CPU, cl))
    assert xb.is_contiguous(memory_format=torch.channels_last) and not xb.is_contiguous()
