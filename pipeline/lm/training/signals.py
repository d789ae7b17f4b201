"""SIGTERM / SIGUSR1: finish the current optimizer step, checkpoint, exit 75 ("requeue me").

Handlers only set a flag; the training loop looks at it at each step boundary (all processes agree
through an all-reduce, so they checkpoint the same step), writes a checkpoint and raises `Preempted`,
a SystemExit with code 75 (EX_TEMPFAIL in sysexits.h: a temporary failure, try again). A scheduler
that sees 75 requeues the unit; the next run resumes from the checkpoint. Slurm sends SIGUSR1 before
the time limit (`--signal`), and SIGTERM on preemption or scancel.
"""

from __future__ import annotations

import signal
import threading

from pipeline.errors import ExitCode

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """Raised after the checkpoint a SIGTERM/SIGUSR1 asked for; the process exits with code 75."""

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(ExitCode.REQUEUE)
        self.step, self.signum = step, signum

    def __str__(self) -> str:
        return (f"received {signal.Signals(self.signum).name}: checkpointed at step {self.step}, "
                f"exit {ExitCode.REQUEUE.value} (requeue to resume)")


class StopFlag:
    """Installs flag-setting handlers for SIGTERM and SIGUSR1 while in the `with` block."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def raised(self) -> bool:
        return self.signum is not None
