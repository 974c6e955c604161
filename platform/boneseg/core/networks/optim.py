"""The optimiser and its step, shared by the U-Net (engine.training), its encoder
pretraining and the V-Net (labelling.vnet): AdamW + OneCycleLR, the loss scaled through
the GradScaler when fp16 needs it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from boneseg.core.config import TrainConfig
from boneseg.core.networks.runtime import Runtime, scaled_step
from boneseg.errors import ConfigError


def make_optim(model, tc: TrainConfig, steps_per_epoch: int, epochs: int):
    total = epochs * steps_per_epoch
    if total < 4:
        raise ConfigError(
            f"train: only {total} optimiser steps ({epochs} epochs x {steps_per_epoch} batches); "
            "one-cycle needs at least 4. Raise the epochs (train.epochs, pretrain.epochs) "
            "or lower the batch size."
        )
    # tiny runs (tests, smoke): the warm-up must span at least ~1.5 steps for OneCycleLR
    pct = max(tc.pct_start, min(1.5 / total, 0.5))
    # fused AdamW: one kernel over all parameters instead of a loop (on 1 CPU thread the
    # step of 24 M parameters took 97 ms looped, 39 ms fused; docs/benchmarks.md)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr / tc.div_factor, weight_decay=tc.weight_decay,
                            fused=tc.fused_optimizer)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=tc.lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=pct,
        div_factor=tc.div_factor, final_div_factor=tc.final_div_factor)
    return opt, sched


def backward_step(loss: torch.Tensor, opt, sched, scaler) -> bool:
    """One optimiser step on `loss`: zero the gradients, scale and backpropagate, step the
    optimiser and the schedule (`runtime.scaled_step`). True if fp16 skipped the step."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    return scaled_step(opt, sched, scaler)


@dataclass
class Stepper:
    """A run's optimiser, schedule and loss scaler, stepped together (`step`) and saved and
    restored together with a checkpoint."""

    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    @staticmethod
    def build(model, tc: TrainConfig, steps_per_epoch: int, epochs: int, rt: Runtime) -> Stepper:
        return Stepper(*make_optim(model, tc, steps_per_epoch, epochs), rt.grad_scaler())

    def step(self, loss: torch.Tensor) -> bool:
        """Backpropagate `loss` and step; True if fp16 skipped the step."""
        return backward_step(loss, self.opt, self.sched, self.scaler)

    @property
    def lr(self) -> float:
        return float(self.sched.get_last_lr()[0])

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
