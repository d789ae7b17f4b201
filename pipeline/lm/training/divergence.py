"""A diverged run stops: the first optimizer step whose training loss is not finite (NaN or infinite).

A model trained on past a NaN loss is garbage with the shape of a result; saving it as finished would
let evaluation and fitting treat it as a measurement. The loss of every step is checked on the device
(no host sync per step, which would stall CUDA's queue) and the record is read where the loop already
waits for the host: log rows (the last step always logs one), validation and checkpoints. Every process
reads it through one collective, so all processes stop at the same point.
"""

from __future__ import annotations

import math

import torch

from pipeline.errors import UserError


class Diverged(UserError):
    """Training produced a non-finite loss: a setting (learning rate, clipping, precision) to change."""

    def __init__(self, step: int, value: float, which: str = "training") -> None:
        super().__init__(f"the {which} loss is {describe(value)} at step {step}")
        self.step, self.value = step, value

    def advice(self, unit_key: str, section: str, training) -> str:
        """The one line for the user: which unit, which step, which settings to change (section: train.training)."""
        return (f"unit {unit_key}: {self}: the run diverged; lower {section}.lr (now {training.lr:g}) or set "
                f"{section}.grad_clip (now {training.grad_clip:g}; 0 is off) and run again")


class DivergenceWatch:
    """The first step (1-based) with a non-finite loss and that loss, kept on the device until `check` reads it."""

    def __init__(self, device: torch.device) -> None:
        self.record = torch.zeros(2, dtype=torch.float64, device=device)  # [step, loss]; step 0: all finite so far

    def note(self, step: int, loss: torch.Tensor) -> None:
        """Record `loss` of step `step` if it is the first non-finite one (scalars only: no host-device copy)."""
        loss = loss.detach().double()
        first = ~torch.isfinite(loss) & (self.record[0] == 0)
        self.record[0].masked_fill_(first, step)
        self.record[1].copy_(torch.where(first, loss, self.record[1]))

    def check(self, accelerator) -> None:
        """Raise Diverged naming the earliest bad step of any process (every process raises alike)."""
        records = accelerator.gather(self.record.reshape(1, 2)).reshape(-1, 2).cpu()
        bad = records[records[:, 0] > 0]
        if len(bad):
            step, value = bad[torch.argmin(bad[:, 0])].tolist()
            raise Diverged(int(step), value)


def check_finite(step: int, loss: float, which: str) -> None:
    """A loss already on the host (validation): raise Diverged when it is not finite."""
    if not math.isfinite(loss):
        raise Diverged(step, loss, which)


def describe(value: float) -> str:
    return "NaN" if math.isnan(value) else ("+infinity" if value > 0 else "-infinity")
