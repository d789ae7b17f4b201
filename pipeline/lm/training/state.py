"""What a training run carries from step to step (`TrainState`, written into every checkpoint's
trainer_state.json) and the clock of its training seconds (`Stopwatch`).

Training seconds count the optimizer steps only: the stopwatch is paused while the loop validates,
checkpoints, writes a log row or waits for a stop signal's vote, so tokens/s and MFU measure training,
and a checkpoint records the seconds its steps took (a resumed run goes on from there).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainState:
    """The counters a resume restores. `run` identifies the run a checkpoint belongs to (batch, data,
    block size, steps, seed); `processes` is the number of processes that wrote it."""

    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    last_val_loss: float | None = None
    processes: int = 1
    run: dict[str, Any] = field(default_factory=dict)

    def on_disk(self, *, epoch: int, batches_consumed: int, scheduler: dict[str, Any]) -> dict[str, Any]:
        """trainer_state.json: these fields, the data position before the next step and the LR schedule."""
        return {**asdict(self), "epoch": epoch, "batches_consumed": batches_consumed, "scheduler": scheduler}

    @classmethod
    def from_disk(cls, saved: dict[str, Any]) -> TrainState:
        """The state of a trainer_state.json (its data position and schedule are read by the caller)."""
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


class Stopwatch:
    """Seconds spent running, not counting the time between `pause` and `resume`."""

    def __init__(self, seconds: float = 0.0) -> None:
        self._closed = seconds  # seconds of the finished running stretches
        self._running_since: float | None = None

    def resume(self) -> None:
        if self._running_since is None:
            self._running_since = time.perf_counter()

    def pause(self) -> float:
        """Stop counting (a second pause changes nothing); returns the seconds so far."""
        if self._running_since is not None:
            self._closed += time.perf_counter() - self._running_since
            self._running_since = None
        return self._closed

    @property
    def seconds(self) -> float:
        running = time.perf_counter() - self._running_since if self._running_since is not None else 0.0
        return self._closed + running
