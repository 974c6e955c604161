"""The runtime of a training or inference run: threads, device, autocast, loss scaling,
seeds and the RNG state that checkpoints carry. One path for CPU and CUDA."""
from __future__ import annotations

import contextlib
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from boneseg.core.config import TrainConfig
from boneseg.errors import ConfigError


def resolve_device(tc: TrainConfig) -> torch.device:
    if tc.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible. Use train.device=auto or cpu.")
    return torch.device("cuda" if tc.device != "cpu" and torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Runtime:
    """Where and how a run computes: the device, the autocast dtype (None: fp32) and the
    memory format of the model and its input. `Runtime.of(train)` resolves them from the
    settings; one path for CPU and CUDA."""

    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = False

    @staticmethod
    def of(tc: TrainConfig, training: bool = True) -> Runtime:
        """Threads, device, precision and memory format of a run (training, pretraining,
        or with training=False inference)."""
        if tc.threads:
            torch.set_num_threads(tc.threads)
        return Runtime.on(resolve_device(tc), tc, training)

    @staticmethod
    def on(device: torch.device | str, tc: TrainConfig, training: bool = True) -> Runtime:
        """`train.amp` and `train.channels_last` on a given device:
        - fp16 / bf16: that autocast dtype on whatever device the run uses (CPU too, as the
          tests do: on these CPUs it is slow, 10-70x for bf16, but it runs);
        - auto: bf16 on CUDA where supported, else fp16; fp32 on CPU;
        - off: fp32."""
        device = torch.device(device)
        dtype = None
        if tc.amp in ("fp16", "bf16") or (tc.amp == "auto" and device.type == "cuda"):
            use_bf16 = tc.amp == "bf16" or (tc.amp == "auto" and torch.cuda.is_bf16_supported())
            dtype = torch.bfloat16 if use_bf16 else torch.float16
        return Runtime(device, dtype, use_channels_last(tc.channels_last, device, training))

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    @property
    def amp(self) -> str:
        """The precision the run uses, as recorded: fp32, float16 or bfloat16."""
        return str(self.dtype).removeprefix("torch.") if self.dtype is not None else "fp32"

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling only for fp16 (bf16 and fp32 need none), on the run's device."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on the device, in the run's memory format."""
        return place_model(model, self.device, self.channels_last)


def use_channels_last(setting: bool | str, device: torch.device, training: bool = True) -> bool:
    """`train.channels_last` for a device: true / false as set; auto: channels_last on CUDA
    and for inference on any device, contiguous for training on a CPU. There channels_last's
    backward pass converts every weight gradient between formats (a 96 px step 414 vs 351 ms
    on one core), while its inference is faster (32 slices of 160 px: 1.86 vs 2.63 s);
    docs/benchmarks.md."""
    if setting == "auto":
        return device.type == "cuda" or not training
    return bool(setting)


def place_model(model: torch.nn.Module, device: torch.device, channels_last: bool = True) -> torch.nn.Module:
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def scaled_step(opt, sched, scaler) -> bool:
    """Optimizer step through the loss scaler, then the one-cycle step (every batch, so the
    schedule stays aligned with the batches). True if the scaler skipped the step (inf/NaN
    gradients in fp16): PyTorch would then warn that the scheduler stepped before the
    optimizer, which here is the intended order, so that one warning is silenced."""
    if not scaler.is_enabled():
        opt.step()
        sched.step()
        return False
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    skipped = scaler.get_scale() < scale
    with warnings.catch_warnings():
        if skipped:
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        sched.step()
    return skipped


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator's state as plain data (tensors, numbers, strings) that a checkpoint
    can hold without pickling objects (core/networks/checkpoint.py)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, torch.tensor(words, dtype=torch.int64), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(int(w) for w in words.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def deterministic():
    """torch's deterministic algorithms (warn-only) inside the block, and afterwards as
    they were: a trial is reproducible without changing the rest of the process."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
