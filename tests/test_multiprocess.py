"""One training run in 2 CPU processes (`accelerate launch --config_file configs/accelerate/cpu2.yaml`)
matches the 1-process run with the same global batch. Runtime ~25 s.

Tolerance 1e-4 on the validation loss (nats/token). The two runs see exactly the same blocks at every
step (tests/test_trainer.py checks the split), so they differ only in float32 rounding: each process
averages the gradient over 4 rows and gloo sums the two halves, where one process averages 8 rows in
another order; matmuls of 4 and 8 rows also block differently. Those ~1e-7 relative differences per
step grow over 60 Adam steps to ~1e-6 here. A real bug (a per-process batch of 8, i.e. a global batch
of 16, or unsynchronised gradients) moves the loss by more than 1e-2, which the last check confirms.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from train_helpers import ROOT, run_training

SETTINGS = dict(epochs=10.0, checkpoint_every=0, eval_every=20, log_every=10)
TOLERANCE = 1e-4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_match_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # the in-process reference on CPU on a GPU host too
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(ROOT / "configs" / "accelerate" / "cpu2.yaml"),
               "--main_process_port", str(free_port()), str(ROOT / "tests" / "train_helpers.py"),
               str(tmp_path / "two")] + [f"{k}={json.dumps(v)}" for k, v in SETTINGS.items()]
    # CPU processes even on a GPU host (the one-process reference below runs on CPU too).
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"two.metrics-{rank}.json").read_text()) for rank in range(2)]
    assert len(reports) == 2 and {r["processes"] for r in reports} == {2}, "accelerate started 2 workers"
    assert reports[0]["final_val_loss"] == reports[1]["final_val_loss"], "processes agree on the reduced loss"
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()

    one = run_training(tmp_path / "one", **SETTINGS)
    two = reports[0]
    assert one["steps"] == two["steps"] == 60 and one["tokens"] == two["tokens"]
    assert abs(one["final_val_loss"] - two["final_val_loss"]) < TOLERANCE
    assert abs(one["best_val_loss"] - two["best_val_loss"]) < TOLERANCE

    doubled = run_training(tmp_path / "doubled", **{**SETTINGS, "batch_size": 16, "epochs": 20.0})
    assert abs(doubled["final_val_loss"] - two["final_val_loss"]) > 100 * TOLERANCE, \
        "the tolerance is far below what a wrong global batch changes"
