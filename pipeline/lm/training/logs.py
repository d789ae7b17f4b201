"""Training log: JSON lines (out_dir/log.jsonl), TensorBoard (out_dir/tb), a tqdm bar with ETA.

Written by the main process only. On resume, rows after the checkpoint's step (written by the killed
run after its last checkpoint) are dropped from the JSONL and TensorBoard purges its events past that
step, so a resumed run's log reads like an uninterrupted one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pipeline.io import write_text_atomic


class TrainLog:
    def __init__(self, out_dir: Path, start_step: int, total_steps: int, enabled: bool, desc: str = "train") -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / "log.jsonl"
        self._writer = self._file = self._bar = None
        if not enabled:
            return
        from tqdm.auto import tqdm

        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, start_step)
        self._file = open(self.path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=start_step or None)
        except ImportError:  # tensorboard is a declared dependency; a missing one costs only the curves
            self._writer = None
        # In a log file (Slurm, launcher logs) a redraw every second would flood it: every 30 s there.
        interactive = sys.stderr.isatty()
        self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True,
                         mininterval=1.0 if interactive else 30.0)

    def step(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def record(self, row: dict[str, Any]) -> None:
        """One JSON line, each numeric field as a TensorBoard scalar at row['step']."""
        if not self.enabled:
            return
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self._writer.add_scalar(key, value, row["step"])
        shown = {k: row[k] for k in ("loss", "val_loss", "tokens_per_s", "mfu") if row.get(k) is not None}
        if shown and self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        self._bar = self._writer = self._file = None


def _truncate_after(path: Path, step: int) -> None:
    """Keep only rows with step <= `step` (atomically); nothing to do for a fresh run."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:  # a line cut by a kill mid-write
            continue
    write_text_atomic(path, "".join(line + "\n" for line in kept))
