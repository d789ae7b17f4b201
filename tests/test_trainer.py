"""The training loop: kill/resume equality, SIGUSR1 -> exit 75 -> resume, data position, loss, schedule,
best checkpoint, early stopping, logs and the measured MFU peak. Runtime ~60 s on 2 slow CPU cores
(most of it is the two child processes' imports)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from train_helpers import BLOCK, ROOT, run_training, tiny_model, token_blocks, training_config

CHILD = [sys.executable, str(ROOT / "tests" / "train_helpers.py")]
RUN = dict(epochs=10.0, checkpoint_every=10, eval_every=20, log_every=10)  # 60 steps


def child_args(out: Path, settings: dict) -> list[str]:
    return CHILD + [str(out)] + [f"{k}={json.dumps(v)}" for k, v in settings.items()]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180.0, non_empty: bool = False) -> None:
    """Poll until `path` exists (and has content if `non_empty`); fail if the child exits first."""
    deadline = time.time() + timeout
    while not path.exists() or (non_empty and path.stat().st_size == 0):
        if proc.poll() is not None:
            pytest.fail(f"child exited ({proc.returncode}) before {path} appeared: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.002)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    metrics = run_training(out, **RUN)
    metrics["weights"] = load_file(out / "model" / "model.safetensors")
    return metrics


def assert_same_run(resumed: dict, out: Path, reference: dict) -> None:
    assert abs(resumed["final_val_loss"] - reference["final_val_loss"]) < 1e-6
    assert abs(resumed["best_val_loss"] - reference["best_val_loss"]) < 1e-6
    assert resumed["steps"] == reference["steps"] and resumed["tokens"] == reference["tokens"]
    weights = load_file(out / "model" / "model.safetensors")
    for name, tensor in reference["weights"].items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-6)
    assert not (out / "checkpoints").exists(), "checkpoints are deleted once the final model is saved"


def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted(tmp_path, reference):
    out = tmp_path / "run"
    proc = subprocess.Popen(child_args(out, RUN), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(out / "checkpoints" / "step-00000020" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model").exists(), "the child finished before it was killed; the test proves nothing"
    # A checkpoint being written when the kill came: a .tmp- dir with garbage must be ignored and removed.
    partial = out / "checkpoints" / ".tmp-step-00000999"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half a file")

    resumed = run_training(out, **RUN)
    start = resumed["resumed_from_step"]
    assert start >= 20
    assert resumed["batches_fetched"] == reference["steps"] - start, "consumed batches were read again"
    assert_same_run(resumed, out, reference)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == sorted(set(steps)), "rows the killed run wrote after its checkpoint are dropped on resume"


def test_sigusr1_checkpoints_exits_75_and_resumes(tmp_path, reference):
    out = tmp_path / "run"
    settings = {**RUN, "checkpoint_every": 0}  # no periodic checkpoints: only the signal writes one
    proc = subprocess.Popen(child_args(out, settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(out / "log.jsonl", proc, non_empty=True)  # the first row is written at step 10
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-2000:]
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert 10 <= state["step"] < reference["steps"]
    assert state["epoch"] * 6 + state["batches_consumed"] == state["step"]  # 6 steps per epoch

    resumed = run_training(out, **settings)
    assert resumed["resumed_from_step"] == state["step"]
    assert resumed["batches_fetched"] == reference["steps"] - state["step"]
    assert_same_run(resumed, out, reference)


def test_training_learns_and_logs(tmp_path, reference):
    out = tmp_path / "run"
    metrics = run_training(out, epochs=2.0, checkpoint_every=0, eval_every=0, log_every=2)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val_rows] == [6, 12]  # eval_every 0: each epoch end (6 steps per epoch)
    assert {"loss", "lr", "tokens_per_s", "mfu", "grad_norm"} <= set(train_rows[0])
    assert all(0 < r["mfu"] < 1 for r in train_rows)
    assert any((out / "tb").iterdir())
    assert metrics["final_val_loss"] == val_rows[-1]["val_loss"]
    assert reference["final_val_loss"] < np.log(96) - 1.0, "60 steps on a 2-successor Markov chain must learn"
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()


def test_keep_best_saves_the_best_validation_weights(tmp_path, monkeypatch):
    # Pinned to CPU (fp32) even on a GPU host: the saved weights are re-evaluated on CPU below.
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    from pipeline.lm.evaluation import stream_windows, summed_nll, token_stream
    from pipeline.lm.training.loop import train_model

    torch.set_num_threads(1)
    other_language = token_blocks(6, seed=1, partial=5, language=99)  # validation gets worse as training goes on
    metrics = train_model(tiny_model(), token_blocks(48), other_language,
                          training_config(epochs=4.0, eval_every=3, checkpoint_every=0), tmp_path, seed=0,
                          block_size=BLOCK)
    assert metrics["best_step"] < metrics["steps"] and metrics["best_val_loss"] < metrics["final_val_loss"]
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    nll, count = summed_nll(saved, stream_windows(token_stream(other_language), 32, 0), 8, torch.device("cpu"))
    assert abs(nll / count - metrics["best_val_loss"]) < 1e-5


def test_early_stopping(tmp_path):
    from pipeline.lm.training.loop import train_model

    torch.set_num_threads(1)
    metrics = train_model(tiny_model(), token_blocks(48), token_blocks(6, seed=1, language=99),
                          training_config(epochs=6.0, eval_every=3, checkpoint_every=0, early_stopping_patience=2),
                          tmp_path, seed=0, block_size=BLOCK)
    assert metrics["stopped_early"] and metrics["steps"] < metrics["planned_steps"]
    assert metrics["steps"] == metrics["best_step"] + 2 * 3


def test_batches_position_split_and_budget():
    from pipeline.lm.training.data import BlockBatches, micro_batches, total_steps

    blocks = torch.arange(20 * 4).view(20, 4)
    single = BlockBatches(blocks, global_batch=8, seed=3)
    halves = [BlockBatches(blocks, global_batch=8, seed=3, rank=r, world=2) for r in range(2)]
    assert single.steps_per_epoch == 2  # 20 blocks, batches of 8, the partial batch is dropped
    for step in range(5):
        both = torch.cat([h.rows(step) for h in halves])
        assert torch.equal(both, single.rows(step)), "2 processes train on exactly the 1-process batch"
    epoch0 = torch.cat([single.rows(0), single.rows(1)])
    assert len(set(epoch0.tolist())) == 16  # no block twice in an epoch
    assert not torch.equal(single.rows(2), single.rows(0))  # a new permutation each epoch
    resumed = BlockBatches(blocks, global_batch=8, seed=3)
    assert torch.equal(resumed.fetch(3), single.fetch(3)) and resumed.fetched == 1
    parts = micro_batches(torch.zeros(8, 4), 3)
    assert [len(p) for p, _ in parts] == [3, 3, 2] and sum(w for _, w in parts) == pytest.approx(1.0)
    assert total_steps(training_config(epochs=1.5), 10, 32) == 15
    assert total_steps(training_config(epochs=None, tokens=1000), 10, 32) == 4  # ceil(1000 / 256)
    # min_tokens raises a small unit's steps (here 3 epochs = 30 steps < ceil(10000 / 256) = 40), never lowers them
    assert total_steps(training_config(epochs=3.0, min_tokens=10_000), 10, 32) == 40
    assert total_steps(training_config(epochs=3.0, min_tokens=1_000), 10, 32) == 30


def test_min_tokens_is_hashed_only_when_set():
    """Added after runs existed: configs without it keep their fingerprints; set, it reruns training."""
    unset, set_ = training_config(), training_config(min_tokens=5000)
    assert "min_tokens" not in unset.result_fields()
    assert set_.result_fields()["min_tokens"] == 5000


def test_lean_cross_entropy_matches_torch():
    from pipeline.lm.training.loss import next_token_nll

    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50, dtype=torch.float64).float().requires_grad_()
    targets = torch.randint(0, 50, (3, 7))
    ours = next_token_nll(logits, targets)
    ours.backward()
    ours_grad = logits.grad.clone()
    logits.grad = None
    stock = F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1))
    stock.backward()
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_grad, logits.grad, rtol=0, atol=1e-7)


def test_lr_schedule_warmup_and_cosine_floor():
    from pipeline.lm.training.optim import lr_multiplier

    values = [lr_multiplier(s, 100, 10, 0.1) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_peak_flops_is_measured_once_and_cached(tmp_path, monkeypatch):
    from pipeline.lm.training import mfu

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = mfu.peak_flops("cpu", torch.float32)
    assert first > 1e8
    table = json.loads((tmp_path / "collapse-lab" / "peak_flops.json").read_text())
    assert list(table.values()) == [first] and "float32" in next(iter(table))

    def no_measuring(*args):
        raise AssertionError("the cached peak must be reused")

    monkeypatch.setattr(mfu, "measure_matmul_flops", no_measuring)
    assert mfu.peak_flops("cpu", torch.float32) == first
    # A run faster than the cached peak measures again; the cache keeps the larger value.
    monkeypatch.setattr(mfu, "measure_matmul_flops", lambda device, dtype: first / 2)
    assert mfu.remeasure_peak("cpu", torch.float32) == first
    monkeypatch.setattr(mfu, "measure_matmul_flops", lambda device, dtype: first * 2)
    assert mfu.remeasure_peak("cpu", torch.float32) == mfu.peak_flops("cpu", torch.float32) == first * 2


def test_mkl_dispatch_fix_is_applied_before_torch_and_keeps_float32_results(tmp_path):
    """In a fresh process (the fix only works before `import torch`): on AMD it is active and a matmul
    agrees with the default kernels to float32 rounding; elsewhere it reports that it is not needed."""
    script = (
        "import sys, json; sys.path.insert(0, %r)\n"
        "from pipeline.orchestration.cpu_startup import enable_fast_mkl_on_amd, is_active\n"
        "status = enable_fast_mkl_on_amd() if sys.argv[1] == 'fix' else 'off'\n"
        "import torch\n"
        "g = torch.Generator().manual_seed(0)\n"
        "a, b = torch.randn(256, 512, generator=g), torch.randn(512, 384, generator=g)\n"
        "torch.save(a @ b, sys.argv[2])\n"
        "print(json.dumps({'status': status, 'active': is_active()}))\n" % str(ROOT))
    runs = {}
    for mode in ("fix", "off"):
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        proc = subprocess.run([sys.executable, "-c", script, mode, str(tmp_path / f"{mode}.pt")], env=env,
                              capture_output=True, text=True, check=True)
        runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    from pipeline.orchestration.cpu_startup import cpu_vendor

    if cpu_vendor() == "AuthenticAMD":
        assert runs["fix"] == {"status": "active", "active": True}
    else:
        assert runs["fix"]["status"].startswith("not needed") and not runs["fix"]["active"]
    assert runs["off"]["active"] is False
    fixed, default = torch.load(tmp_path / "fix.pt", weights_only=True), torch.load(tmp_path / "off.pt", weights_only=True)
    torch.testing.assert_close(fixed, default, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_compiled_training_with_a_padded_micro_batch_matches_eager(tmp_path):
    """train.compile: on (CUDA's default) on CPU: micro-batches of 3, 3 and 2 rows, the last padded to 3 for the
    one compiled shape; its padding must change neither the loss nor the gradients."""
    settings = dict(epochs=1.0, checkpoint_every=0, eval_every=0, log_every=2, micro_batch_size=3)
    compiled = run_training(tmp_path / "compiled", compile="on", **settings)
    eager = run_training(tmp_path / "eager", compile="off", **settings)
    assert compiled["compiled"] and not eager["compiled"]
    assert compiled["steps"] == eager["steps"] == 6
    assert abs(compiled["final_val_loss"] - eager["final_val_loss"]) < 1e-5


def test_stopwatch_leaves_out_paused_time_and_train_state_round_trips():
    from pipeline.lm.training.state import Stopwatch, TrainState

    watch = Stopwatch(5.0)
    watch.resume()
    time.sleep(0.02)
    running = watch.pause()
    time.sleep(0.05)  # paused: validation, checkpoints
    assert 5.02 <= running == watch.pause() == watch.seconds < 5.05
    state = TrainState(step=3, tokens=96, best_val_loss=1.5, best_step=3, processes=2, run={"seed": 0})
    saved = state.on_disk(epoch=1, batches_consumed=1, scheduler={"last_epoch": 3})
    assert list(saved)[:9] == ["step", "tokens", "train_seconds", "best_val_loss", "best_step", "evals_since_best",
                               "last_val_loss", "processes", "run"]
    assert TrainState.from_disk(saved) == state


def test_blocks_longer_than_the_packing_block_size_are_refused():
    from pipeline.errors import UserError
    from pipeline.lm.training.data import blocks_tensor

    assert tuple(blocks_tensor(token_blocks(4, partial=7), BLOCK).shape) == (4, BLOCK)  # the short tail dropped
    with pytest.raises(UserError, match="longer than the packing's block size 16"):
        blocks_tensor(token_blocks(4), 16)
