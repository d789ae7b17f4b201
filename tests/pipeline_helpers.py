"""The `collapse` CLI in a child process (`python -m pipeline`), shared by tests/test_pipeline.py and
tests/test_replicated_runs.py.

A module of its own, not a test module, so that no test module imports another.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def collapse(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
