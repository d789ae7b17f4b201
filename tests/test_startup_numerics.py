"""The test process computes its numbers as the CLI's processes do, whatever the CPU and the test order.

Trainer references are computed in the pytest process and compared with child processes' runs. MKL fixes its
reproducibility mode (MKL_CBWR) at its first call; every child starts through `cpu_startup.start_up`, so the
pytest process must too (tests/conftest.py does, before anything imports torch). On Intel CPUs MKL's default
path rounds differently from AUTO,STRICT (weights differed by ~6e-5 after 60 steps); on AMD the two happen to
agree, so the checks here read MKL's mode from MKL itself rather than rely on a difference showing.

Run as a script (`python tests/test_startup_numerics.py OUT careless|fixed`) it is the worker: `careless` loads
torch, churns the allocator and calls MKL before the start-up (a notebook that imported torch first); `fixed`
applies the start-up as tests/conftest.py does, then churns the same way. Both then train the trainer tests'
reference run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from train_helpers import ROOT, churn_allocator, run_training, tiny_model  # noqa: E402

RUN = dict(epochs=10.0, checkpoint_every=0, eval_every=20, log_every=10)  # the trainer tests' 60 steps


def worker(out: Path, mode: str) -> None:
    from pipeline.orchestration import cpu_startup

    if mode == "fixed":
        cpu_startup.start_up()
    import torch

    churn_allocator(torch, tiny_model(seed=1))
    if mode == "careless":
        cpu_startup.start_up()  # too late for this process: MKL has already run
    run_training(out, **RUN)
    (out / "startup.json").write_text(json.dumps({"mkl_cbwr": cpu_startup.mkl_cbwr_mode()}))


def _user_chose_mkl_mode() -> bool:
    return bool(os.environ.get("COLLAPSE_MKL_CBWR") == "0" or os.environ.get("MKL_CBWR") not in (None, "AUTO,STRICT"))


def test_the_test_process_runs_mkl_in_its_reproducible_mode():
    from pipeline.orchestration import cpu_startup

    mode = cpu_startup.mkl_cbwr_mode()
    if mode is None:
        pytest.skip("this torch has no MKL (nothing to fix)")
    if _user_chose_mkl_mode():
        pytest.skip("the user chose MKL's mode for this run")
    assert mode == cpu_startup.CBWR_AUTO_STRICT, f"MKL runs in mode {mode:#x}: conftest's start-up came too late"


def _train_in_child(out: Path, command: list[str]) -> tuple[bytes, dict]:
    """(model.safetensors bytes, the worker's start-up report) of a training run in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "LD_PRELOAD")}  # as a user's shell
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    startup = out / "startup.json"
    return (out / "model" / "model.safetensors").read_bytes(), json.loads(startup.read_text()) if startup.exists() else {}


def test_a_churned_process_started_like_the_suite_matches_a_fresh_child(tmp_path):
    from pipeline.orchestration import cpu_startup

    worker = [sys.executable, __file__]
    careless, careless_state = _train_in_child(tmp_path / "careless", [*worker, str(tmp_path / "careless"), "careless"])
    fixed, fixed_state = _train_in_child(tmp_path / "fixed", [*worker, str(tmp_path / "fixed"), "fixed"])
    settings = [f"{key}={json.dumps(value)}" for key, value in RUN.items()]
    fresh, _ = _train_in_child(tmp_path / "fresh", [sys.executable, str(TESTS / "train_helpers.py"),
                                                    str(tmp_path / "fresh"), *settings])
    if fixed_state["mkl_cbwr"] is None:
        pytest.skip("this torch has no MKL (nothing to fix)")
    assert careless_state["mkl_cbwr"] != cpu_startup.CBWR_AUTO_STRICT, "the careless worker must show the defect"
    assert fixed_state["mkl_cbwr"] == cpu_startup.CBWR_AUTO_STRICT
    assert fixed == fresh, "with the suite's start-up, a process with a history trains the same weights as a child"
    # The careless process's weights are not compared: whether MKL's default path rounds otherwise is the CPU's.
    assert len(careless) == len(fresh)


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2])
