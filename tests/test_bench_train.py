"""bench/train.py's contenders on CPU (GPT-2 tiny, fp32, eager, 12 steps, ~15 s).

The GPU benchmark claims ours trains like the plain reference loop: same loss at the last step within 1%.
That claim is only meaningful if the two start from the same init, see the same batches in the same order
and follow the same schedule; here, where both are exact fp32 on CPU, they must agree. The Trainer
contender (its own data order) must run and report a finite last loss.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.train_contenders import Setup, run_ours, run_reference, run_trainer  # noqa: E402

# log_every = steps - 1: ours' last log row is the last step alone.
SETUP = Setup(device="cpu", size="tiny", steps=12, warmup=2, log_every=11, precision="fp32", compile="off")


@pytest.fixture(autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_ours_and_the_reference_loop_reach_the_same_last_loss(tmp_path):
    ours = run_ours(SETUP, tmp_path)
    reference = run_reference(SETUP)
    assert ours["steps"] == reference["steps"] == SETUP.steps
    assert ours["last_loss"] < math.log(SETUP.vocab) - 0.5, "12 steps must train (else equal losses prove nothing)"
    assert ours["last_loss"] == pytest.approx(reference["last_loss"], rel=0.01)
    assert ours["steady_tokens_per_s"] > 0 and reference["steady_tokens_per_s"] > 0
    assert ours["peak_memory"] is None and not ours["compiled"]


def test_trainer_contender_runs(tmp_path):
    result = run_trainer(SETUP, tmp_path)
    assert result["steps"] == SETUP.steps
    assert math.isfinite(result["last_loss"]) and result["last_loss"] < math.log(SETUP.vocab)
    assert result["steady_tokens_per_s"] > 0
