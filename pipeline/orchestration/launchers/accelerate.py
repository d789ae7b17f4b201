"""Workstation launcher: train/teacher/generate units run under `accelerate launch`.

The child processes run `python -m pipeline stage STAGE RESOLVED_CONFIG --unit ID`; its main process
takes the unit lock and finalizes, exactly as a Slurm array task would. Units that do not declare
multiprocess=True (prepare, mix, fit, ...) run here in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.errors import DISK_ERRORS, UserError
from pipeline.orchestration.executor import Executor, UnitOutcome
from pipeline.unit import Unit


class AccelerateLauncher:
    def __init__(self, resolved_config: Path, accelerate_config: Path) -> None:
        if not accelerate_config.is_file():
            raise UserError(f"accelerate_config: file {accelerate_config} not found; see configs/accelerate/*.yaml")
        self.resolved_config = resolved_config
        self.accelerate_config = accelerate_config

    def command(self, unit: Unit, force: bool) -> list[str]:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(self.accelerate_config),
               "-m", "pipeline", "stage", unit.stage, str(self.resolved_config), "--unit", unit.id]
        return cmd + (["--force"] if force else [])

    def launch(self, executor: Executor, unit: Unit) -> UnitOutcome:
        if not unit.multiprocess:
            return executor.execute(unit)
        started = time.time()
        log_path = executor.run_dir.log_file(unit).with_suffix(".launch.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            proc = subprocess.run(self.command(unit, unit.stage in executor.force), stdout=log_file,
                                  stderr=subprocess.STDOUT)
        if proc.returncode == 2:
            raise child_error(_last_error_line(log_path) or f"unit {unit.key}: bad input (see {log_path})")
        if proc.returncode != 0:
            raise RuntimeError(f"accelerate launch exited {proc.returncode}; log: {log_path}")
        status = executor.state(unit)
        return UnitOutcome(unit, "ran" if status == "done" else status, time.time() - started)


def _last_error_line(path: Path) -> str | None:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith("collapse: error: ")]
    return lines[-1].removeprefix("collapse: error: ") if lines else None


def child_error(line: str) -> Exception:
    """What a child's exit-2 line was: a disk error comes back as the OSError it was (so the run keeps what it
    finished, see cli._bad_input_removes_a_new_run), anything else as bad input."""
    for code, hint in DISK_ERRORS.items():
        reason = os.strerror(code)
        if line.endswith(f"; {hint}") and f": {reason};" in line:
            return OSError(code, reason, line.split(f": {reason};")[0])
    return UserError(line)
