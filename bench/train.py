"""Benchmark: the train stage's loop against `transformers.Trainer` (CPU: the demo student; --device cuda: 124M).

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

With --device cuda (one GPU): GPT-2 124M (--model-size), vocab 50257, 1024-token blocks, global batch 32,
bf16 autocast, lr 6e-4 (GPT-2 small's usual peak; at 3e-3 a 124M model's loss spikes and two correct loops
part ways), 60 steps, the same data recipe and hyper-parameters otherwise. Contenders:

  ours                  train_model with precision bf16 and compile on, as the train stage runs it on a GPU
  Trainer               transformers.Trainer with bf16=True, its defaults otherwise (no torch_compile)
  reference loop        a plain loop: torch.compile(model), fused AdamW, bf16 autocast: the loop to beat

Tokens/s are steady state, on one clock for all: from the end of optimizer step W (--warmup-steps, default
10) to the end of the last step, the GPU synchronised at both ends, so compilation and warm-up are left
out (bench/train_contenders.py). MFU is against the measured bf16 matmul peak (pipeline/lm/training/mfu.py).
`ratio` = ours / Trainer and `ratio_vs_reference` = ours / reference, medians over rounds of per-round
ratios; `loss_rel_diff_vs_reference` compares the last step's losses (the worst round). Without CUDA it
prints one line and exits 2.

    python bench/train.py --device cuda [--steps 60] [--rounds 3] [--warmup-steps 10] [--model-size 124M]
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
from pathlib import Path

from bench.train_contenders import Setup, worker  # after the path fix above

OURS, TRAINER, TRAINER_FAST = "ours (train_model)", "transformers.Trainer", "Trainer + MKL fix"
REFERENCE = "reference loop"
WORKERS = {OURS: "ours", TRAINER: "trainer", TRAINER_FAST: "trainer-fast-mkl"}
CUDA_WORKERS = {OURS: "ours", TRAINER: "trainer", REFERENCE: "reference"}


# ---------------------------------------------------------------- driver side


def trial(kind: str, setup: Setup, threads: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-train-result-") as tmp:
        result_file = Path(tmp) / "result.json"
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)  # each worker decides for itself
        command = [sys.executable, __file__, "--worker", kind, "--setup", setup.to_json(), "--result", str(result_file)]
        proc = subprocess.run(command + (["--threads", str(threads)] if threads else []), env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
        return json.loads(result_file.read_text())


def interleaved(workers: dict[str, str], setup: Setup, rounds: int, threads: int | None, rate: str) -> dict:
    """{contender: [result per round]}, every contender once per round (load hits all alike)."""
    results: dict[str, list[dict]] = {name: [] for name in workers}
    for round_index in range(rounds):
        for name, kind in workers.items():
            results[name].append(trial(kind, setup, threads))
            print(f"round {round_index + 1}/{rounds} {name}: {results[name][-1][rate]:.0f} tokens/s", file=sys.stderr)
    return results


def cpu_report(args) -> int:
    setup = Setup(steps=args.steps or 120)
    results = interleaved(WORKERS, setup, args.rounds, args.threads, "tokens_per_s")
    tps = {name: [r["tokens_per_s"] for r in runs] for name, runs in results.items()}
    ratio = statistics.median(o / t for o, t in zip(tps[OURS], tps[TRAINER]))
    ratio_same_blas = statistics.median(o / t for o, t in zip(tps[OURS], tps[TRAINER_FAST]))
    reference = results[OURS][0]
    peak, per_token = reference["peak_flops"], reference["flops_per_token"]
    mfu = {name: max(values) * per_token / peak for name, values in tps.items()}

    print(f"model: GPT-2 tiny (2 x 128, vocab {setup.vocab}), {setup.block}-token blocks, batch {setup.batch}, {setup.steps} steps, fp32; "
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
        "bench": "train", "model": "gpt2-tiny", "vocab": setup.vocab, "block_size": setup.block, "batch_size": setup.batch,
        "steps": setup.steps, "rounds": args.rounds,
        "ours_tokens_per_s": round(max(tps[OURS]), 1), "trainer_tokens_per_s": round(max(tps[TRAINER]), 1),
        "trainer_fast_mkl_tokens_per_s": round(max(tps[TRAINER_FAST]), 1),
        "ratio": round(ratio, 3), "ratio_same_blas": round(ratio_same_blas, 3),
        "ours_mfu": round(mfu[OURS], 4), "trainer_mfu": round(mfu[TRAINER], 4),
        "peak_flops": round(peak), "flops_per_token": per_token, "mkl_fix": reference["mkl_fix"],
        "threads": reference["threads"], "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }))
    return 0


def cuda_setup(args) -> Setup:
    steps = args.steps or 60
    return Setup(device="cuda", size=args.model_size or "124M", vocab=50257, block=1024, batch=32, steps=steps,
                 lr=6e-4, precision="bf16", compile="on", warmup=args.warmup_steps, log_every=max(1, steps - 1))


def cuda_report(args) -> int:
    import torch

    if not torch.cuda.is_available():
        print(f"bench/train.py --device cuda: CUDA is not available here (torch {torch.__version__})")
        return 2
    setup = cuda_setup(args)
    if not 1 <= setup.warmup < setup.steps:
        raise SystemExit(f"--warmup-steps must be at least 1 and below --steps ({setup.steps})")
    results = interleaved(CUDA_WORKERS, setup, args.rounds, args.threads, "steady_tokens_per_s")
    tps = {name: [r["steady_tokens_per_s"] for r in runs] for name, runs in results.items()}
    ratios = {name: statistics.median(o / t for o, t in zip(tps[OURS], tps[name])) for name in CUDA_WORKERS}
    # One denominator for all: the best bf16 matmul peak any of ours' runs measured (mfu.py caches it).
    peak = max(r["peak_flops"] for r in results[OURS])
    per_token = results[OURS][0]["flops_per_token"]
    mfu = {name: max(values) * per_token / peak for name, values in tps.items()}
    memory = {name: max(r["peak_memory"] for r in runs) for name, runs in results.items()}
    loss = {name: statistics.median(r["last_loss"] for r in runs) for name, runs in results.items()}
    loss_diff = max(abs(o["last_loss"] - r["last_loss"]) / abs(r["last_loss"])
                    for o, r in zip(results[OURS], results[REFERENCE]))
    first = results[OURS][0]
    print(f"model: GPT-2 {setup.size}, vocab {setup.vocab}, {setup.block}-token blocks, batch {setup.batch}, "
          f"{setup.steps} steps (tokens/s over steps {setup.warmup + 1}-{setup.steps}), bf16, lr {setup.lr}; "
          f"{args.rounds} interleaved rounds; {first['device_name']}, torch {first['torch']}")
    print(f"peak (measured bf16 matmul): {peak / 1e12:.0f} TFLOP/s; model: {per_token / 1e9:.3f} GFLOP per token")
    print(f"{'contender':<24}{'best tok/s':>12}{'median tok/s':>14}{'MFU':>8}{'peak GiB':>10}{'last loss':>11}"
          f"{'ours/this':>11}")
    for name in CUDA_WORKERS:
        print(f"{name:<24}{max(tps[name]):>12.0f}{statistics.median(tps[name]):>14.0f}{mfu[name]:>8.3f}"
              f"{memory[name] / 2**30:>10.2f}{loss[name]:>11.4f}{ratios[name]:>11.2f}")
    keys = {OURS: "ours", TRAINER: "trainer", REFERENCE: "reference"}
    summary = {"bench": "train", "device": "cuda", "device_name": first["device_name"], "torch": first["torch"],
               "model": f"gpt2-{setup.size}", "vocab": setup.vocab, "block_size": setup.block,
               "batch_size": setup.batch, "steps": setup.steps, "warmup_steps": setup.warmup, "rounds": args.rounds,
               "precision": setup.precision, "lr": setup.lr,
               "ratio": round(ratios[TRAINER], 3), "ratio_vs_reference": round(ratios[REFERENCE], 3),
               "loss_rel_diff_vs_reference": round(loss_diff, 5)}
    for name, key in keys.items():
        summary.update({f"{key}_tokens_per_s": round(max(tps[name]), 1), f"{key}_mfu": round(mfu[name], 4),
                        f"{key}_peak_memory_bytes": memory[name], f"{key}_last_loss": round(loss[name], 5)})
    # What train_model itself logs (its own clock: first step to last, compile included), for comparison.
    summary.update(ours_loop_tokens_per_s=round(max(r["tokens_per_s"] for r in results[OURS]), 1),
                   ours_compiled=first["compiled"], ours_chunked_loss=first["chunked_loss"],
                   peak_flops=round(peak), flops_per_token=per_token, python=platform.python_version())
    print(json.dumps(summary))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 120 on CPU, 60 on CUDA)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every contender (default: torch's, one per core); 1 is far less "
                             "sensitive to other processes on a shared machine")
    parser.add_argument("--warmup-steps", type=int, default=10,
                        help="CUDA: steady-state tokens/s count the steps after this one (compile, warm-up excluded)")
    parser.add_argument("--model-size", default=None, help="CUDA: GPT-2 preset (default 124M; nano/tiny for a smoke run)")
    parser.add_argument("--worker", choices=sorted(set(WORKERS.values()) | set(CUDA_WORKERS.values())),
                        help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Setup.from_json(args.setup), args.result, args.threads)
        return 0
    return cuda_report(args) if args.device == "cuda" else cpu_report(args)


if __name__ == "__main__":
    raise SystemExit(main())
