"""Benchmark: the train stage's loop against `transformers.Trainer` on the demo student.

Same model and init (GPT-2 tiny: 2 layers, width 128, vocab 4096, blocks of 128 tokens, dropout 0),
same data (Zipf-distributed token blocks), global batch 8, lr 3e-3 with warmup + cosine to 10%, AdamW
(0.9, 0.95, decay 0.1), clipping at 1.0, fp32 on CPU, loss logged every 10 steps, no evaluation, no
checkpoints. Each contender runs in a fresh process (import order matters, see below), rounds are
interleaved so that load from other processes hits all alike. Throughput is tokens/s over the step
loop (first step to last, setup excluded for both); `ratio` is the median over rounds of
ours / Trainer. Contenders:

  ours                  pipeline.lm.training.train_model, started like the `collapse` entry point starts
                        it: MKL dispatch fix on AMD CPUs first (pipeline/orchestration/cpu_startup.py)
  Trainer               transformers.Trainer as a user runs it (its default fused AdamW)
  Trainer + MKL fix     Trainer with the same MKL fix, to show what the loop itself is worth
                        (`ratio_same_blas`)

MFU is against this machine's measured float32 matmul peak with the fast kernels (the best the CPU
can do), for every contender. The last output line is JSON.

    python bench/train.py [--steps 120] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
# bench/ holds tokenize.py, which would shadow the standard library's `tokenize`: drop the folder.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, ROOT)  # runnable from a checkout without install
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

VOCAB, BLOCK, BATCH, LR = 4096, 128, 8, 3e-3
OURS, TRAINER, TRAINER_FAST = "ours (train_model)", "transformers.Trainer", "Trainer + MKL fix"
WORKERS = {OURS: "ours", TRAINER: "trainer", TRAINER_FAST: "trainer-fast-mkl"}


# ---------------------------------------------------------------- worker side (one fresh process per trial)


def blocks(steps: int):
    import numpy as np
    from datasets import Dataset

    ids = (np.random.default_rng(0).zipf(1.2, size=(steps * BATCH, BLOCK)) - 1) % VOCAB
    return Dataset.from_dict({"input_ids": ids.tolist()})


def model():
    import torch

    from pipeline.config import ModelConfig
    from pipeline.lm.models import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(family="gpt2", size="tiny", dropout=0.0), VOCAB, BLOCK, 0, 0)


def run_ours(steps: int, out: Path) -> dict:
    from pipeline.config import TrainingConfig
    from pipeline.lm.training.loop import train_model

    training = TrainingConfig(epochs=1.0, batch_size=BATCH, lr=LR, warmup_fraction=0.05, min_lr_ratio=0.1,
                              weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, precision="fp32",
                              checkpoint_every=0, log_every=10, keep_best=False)
    metrics = train_model(model(), blocks(steps), None, training, out, seed=0)
    last = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    return {"tokens_per_s": metrics["tokens_per_s"], "steps": metrics["steps"], "final_loss": last["loss"],
            "peak_flops": metrics["peak_flops_per_process"], "flops_per_token": metrics["flops_per_token"]}


def run_trainer(steps: int, out: Path) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Clock(TrainerCallback):
        """First step's start to the end of training: the same span as ours' tokens/s."""

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = logs["loss"]

    data = blocks(steps)
    data = data.add_column("labels", data["input_ids"]).with_format("torch")
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
                             weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, warmup_steps=0.05,
                             lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
                             max_grad_norm=1.0, logging_steps=10, save_strategy="no", eval_strategy="no",
                             report_to="none", use_cpu=True, dataloader_num_workers=0, seed=0)
    clock = Clock()
    result = Trainer(model=model(), args=args, train_dataset=data, callbacks=[clock]).train()
    return {"tokens_per_s": steps * BATCH * BLOCK / (clock.end - clock.start), "steps": result.global_step,
            "final_loss": clock.loss}


def worker(kind: str, steps: int, result_file: Path, threads: int | None) -> None:
    if kind == "ours":  # before torch is imported, as the entry point does (MKL dispatch, MKL_CBWR, allocator)
        from pipeline.orchestration.cpu_startup import start_up

        status = start_up()["fast_mkl"]
    elif kind == "trainer-fast-mkl":
        from pipeline.orchestration.cpu_startup import enable_fast_mkl_on_amd

        status = enable_fast_mkl_on_amd()
    else:
        status = "off"
    import torch

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        result = (run_ours if kind == "ours" else run_trainer)(steps, Path(tmp))
    result.update(mkl_fix=status, threads=torch.get_num_threads())
    result_file.write_text(json.dumps(result))


# ---------------------------------------------------------------- driver side


def trial(name: str, steps: int, threads: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-train-result-") as tmp:
        result_file = Path(tmp) / "result.json"
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)  # each worker decides for itself
        command = [sys.executable, __file__, "--worker", WORKERS[name], "--steps", str(steps), "--result", str(result_file)]
        proc = subprocess.run(command + (["--threads", str(threads)] if threads else []), env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        return json.loads(result_file.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every contender (default: torch's, one per core); 1 is far less "
                             "sensitive to other processes on a shared machine")
    parser.add_argument("--worker", choices=sorted(WORKERS.values()), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.result, args.threads)
        return 0

    results: dict[str, list[dict]] = {name: [] for name in WORKERS}
    for round_index in range(args.rounds):
        for name in WORKERS:
            results[name].append(trial(name, args.steps, args.threads))
            print(f"round {round_index + 1}/{args.rounds} {name}: {results[name][-1]['tokens_per_s']:.0f} tokens/s",
                  file=sys.stderr)
    tps = {name: [r["tokens_per_s"] for r in runs] for name, runs in results.items()}
    ratio = statistics.median(o / t for o, t in zip(tps[OURS], tps[TRAINER]))
    ratio_same_blas = statistics.median(o / t for o, t in zip(tps[OURS], tps[TRAINER_FAST]))
    reference = results[OURS][0]
    peak, per_token = reference["peak_flops"], reference["flops_per_token"]
    mfu = {name: max(values) * per_token / peak for name, values in tps.items()}

    print(f"model: GPT-2 tiny (2 x 128, vocab {VOCAB}), {BLOCK}-token blocks, batch {BATCH}, {args.steps} steps, fp32; "
          f"{args.rounds} interleaved rounds; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"torch threads {reference['threads']}, load {os.getloadavg()[0]:.2f}; MKL fix: {reference['mkl_fix']}")
    print(f"peak (measured fp32 matmul): {peak / 1e9:.1f} GFLOP/s; model: {per_token / 1e6:.2f} MFLOP per token")
    print(f"{'contender':<24}{'best tok/s':>12}{'median tok/s':>14}{'MFU':>8}{'final loss':>12}{'ours/this':>11}")
    for name in WORKERS:
        ratio_here = statistics.median(o / t for o, t in zip(tps[OURS], tps[name]))
        loss = statistics.median(r["final_loss"] for r in results[name])
        print(f"{name:<24}{max(tps[name]):>12.0f}{statistics.median(tps[name]):>14.0f}{mfu[name]:>8.3f}"
              f"{loss:>12.3f}{ratio_here:>11.2f}")
    print(json.dumps({
        "bench": "train", "model": "gpt2-tiny", "vocab": VOCAB, "block_size": BLOCK, "batch_size": BATCH,
        "steps": args.steps, "rounds": args.rounds,
        "ours_tokens_per_s": round(max(tps[OURS]), 1), "trainer_tokens_per_s": round(max(tps[TRAINER]), 1),
        "trainer_fast_mkl_tokens_per_s": round(max(tps[TRAINER_FAST]), 1),
        "ratio": round(ratio, 3), "ratio_same_blas": round(ratio_same_blas, 3),
        "ours_mfu": round(mfu[OURS], 4), "trainer_mfu": round(mfu[TRAINER], 4),
        "peak_flops": round(peak), "flops_per_token": per_token, "mkl_fix": reference["mkl_fix"],
        "threads": reference["threads"], "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
