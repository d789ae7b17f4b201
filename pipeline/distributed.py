"""Processes: rank, barrier, broadcast from the main process, and the device a process computes on.

One place for what the executor, the stages and the training loop need to know about the other
processes of an `accelerate launch` (or of nothing: a plain process is rank 0 of 1). Built on
accelerate's PartialState, which reads the launcher's environment and owns the process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def default_device():
    """cuda when there is a GPU, else cpu (the device evaluation and sampling use outside a launcher)."""
    import torch

    return torch.device("cuda" if cuda_available() else "cpu")


def force_cpu() -> bool:
    """Whether this process must run on CPU: asked for by the launcher config, or no CUDA at all.

    `accelerate launch` with a use_cpu config does not always export ACCELERATE_USE_CPU, hence the
    CUDA check: without it a CPU-only worker would look for a GPU backend.
    """
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not cuda_available()


def process_state():
    """accelerate's PartialState for this process (rank 0 of 1 outside `accelerate launch`)."""
    from accelerate import PartialState

    return PartialState(cpu=force_cpu())


@dataclass
class Processes:
    """Rank and collectives of this process group; trivial (rank 0 of 1) for a plain process."""

    state: Any = None  # accelerate PartialState, or None for a single plain process

    @classmethod
    def single(cls) -> "Processes":
        return cls(None)

    @classmethod
    def from_env(cls) -> "Processes":
        """The launcher's process group when WORLD_SIZE > 1, else a single process (imports no torch)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls.single()
        return cls(process_state())

    @property
    def is_main(self) -> bool:
        return self.state is None or self.state.is_main_process

    @property
    def rank(self) -> int:
        return 0 if self.state is None else self.state.process_index

    @property
    def world(self) -> int:
        return 1 if self.state is None else self.state.num_processes

    def barrier(self) -> None:
        if self.state is not None and self.world > 1:
            self.state.wait_for_everyone()

    def broadcast(self, value: Any) -> Any:
        """The main process's `value` in every process (one decision, even on a lagging shared filesystem)."""
        if self.state is None or self.world <= 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]


def broadcast_from_main(value: Any) -> Any:
    """`Processes.broadcast` for code that already runs inside an initialised process group."""
    return Processes(process_state()).broadcast(value)
