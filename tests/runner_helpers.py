"""The toy-stage runner of tests/test_runner.py in a form its child processes import: a `python -c` child
(two whole runs racing) and a spawned multiprocessing child (two runners racing for one lock).

A module of its own, not the test module, so that a child process imports no test module.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.config import load_config
from pipeline.orchestration.executor import Executor
from pipeline.orchestration.launchers.local import LocalLauncher
from pipeline.orchestration.runner import plan_run
from pipeline.orchestration.sweep import run_units
from toy_stages import STAGES

REPO = Path(__file__).resolve().parent.parent


def make_executor(config_path: Path, overrides=()) -> Executor:
    cfg = load_config(config_path, list(overrides))
    return Executor(cfg=cfg, stages=STAGES, planned=plan_run(cfg, STAGES))


def run_all(executor: Executor):
    return run_units(executor, list(executor.planned), LocalLauncher(), progress=False)


def _hold_lock_then_run(cfg_path: str, queue) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    executor = make_executor(Path(cfg_path))
    queue.put(executor.execute(executor.planned.get("prepare/prepare")).status)
