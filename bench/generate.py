"""Benchmark: the generate stage's sampling path against transformers' text-generation pipeline.

Model: the demo teacher's architecture (GPT-2 "tiny": 2 layers, width 128, ~0.9M parameters with the
4096-token byte-level BPE prepare trains on the built-in Wikipedia sample), trained for --train-steps
steps with the shared training loop so that it ends documents with EOS like a real teacher (or any
checkpoint directory with --model). Same sampling settings on both sides: temperature 1, top_k 0 (off),
top_p 1, max_new_tokens 128, prompt = the EOS/BOS token alone.
  ours      pipeline.lm.sampling.sample_documents: batched generate (static KV cache, left padding,
            inverse-CDF sampler, per-sequence EOS stop), batch size chosen from free memory.
  batched   plain model.generate(do_sample=True) on the same batches (what our sampler replaces).
  baseline  transformers.pipeline("text-generation") called one prompt at a time.
Tokens counted: generated tokens before each sequence's first EOS (EOS and padding are not counted).
Rounds interleave the methods so load from other processes hits them alike; `ratio` is the median
over rounds of ours / baseline tokens per second. The last output line is JSON.

    python bench/generate.py [--rounds 3] [--prompts 24] [--tokens 65536] [--model DIR]
"""

from __future__ import annotations

import os
import sys

# Python puts this folder first on sys.path, and bench/tokenize.py would shadow the standard library's
# `tokenize` (pandas, inspect, ... import it): drop the folder, add the repository root (run from a checkout).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

MAX_NEW_TOKENS = 128
OURS, BATCHED, BASELINE = "ours: sample_documents", "model.generate(do_sample) batched", "pipeline one prompt at a time"


def demo_teacher(workdir: Path, steps: int):
    """GPT-2 tiny + BPE 4096 on the Wikipedia sample, trained `steps` steps by the shared loop."""
    import torch

    from pipeline.config import ModelConfig, TrainingConfig
    from pipeline.data.packing import load_blocks, pack_documents
    from pipeline.data.sources import load_documents
    from pipeline.data.tokenizer import train_bpe_tokenizer
    from pipeline.lm.models import build_model
    from pipeline.lm.training.loop import train_model

    docs = load_documents("builtin:wikipedia", min_chars=600)
    tokenizer = train_bpe_tokenizer(docs, 4096, workdir / "tokenizer")
    pack_documents(docs[:-5], tokenizer, 128, workdir / "train")
    pack_documents(docs[-5:], tokenizer, 128, workdir / "validation", keep_remainder=True)
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gpt2", size="tiny"), len(tokenizer), 128, tokenizer.eos_token_id,
                        tokenizer.eos_token_id)
    training = TrainingConfig(tokens=steps * 8 * 128, batch_size=8, lr=3e-3, checkpoint_every=0, log_every=50,
                              keep_best=False)
    train_model(model, load_blocks(workdir / "train", torch_format=False),
                load_blocks(workdir / "validation", torch_format=False), training, workdir / "run", 0)
    tokenizer.save_pretrained(workdir / "run" / "model")
    return workdir / "run" / "model"


def load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return model, tokenizer


def ours(model, tokenizer, target: int):
    from pipeline.lm import sampling as S

    result = S.sample_documents(model, S.SamplingSettings(max_new_tokens=MAX_NEW_TOKENS),
                                S.PromptSampler(S.start_token_id(tokenizer)), target_tokens=target,
                                eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, seed=0, progress=False)
    return result


def batched_hf(model, tokenizer, rows: list[int]) -> tuple[int, float]:
    """Plain do_sample generate on the same batches (row counts) as ours."""
    import torch

    from pipeline.lm.sampling import cut_at_eos, start_token_id

    eos = tokenizer.eos_token_id
    kept, started = 0, time.perf_counter()
    torch.manual_seed(0)
    with torch.inference_mode():
        for n in rows:
            ids = torch.full((n, 1), start_token_id(tokenizer), dtype=torch.long)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                 top_p=1.0, temperature=1.0, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id)
            kept += sum(len(d) for d in cut_at_eos(out[:, 1:], eos))
    return kept, time.perf_counter() - started


def baseline(pipe, tokenizer, prompts: int) -> tuple[int, float]:
    prompt = tokenizer.decode([tokenizer.bos_token_id or tokenizer.eos_token_id])
    kept, started = 0, time.perf_counter()
    for _ in range(prompts):
        (record,) = pipe(prompt, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS,
                         return_tensors=True, pad_token_id=tokenizer.pad_token_id)
        new = list(record["generated_token_ids"])[1:]
        kept += new.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in new else len(new)
    return kept, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=24, help="baseline prompts per round")
    parser.add_argument("--tokens", type=int, default=131072, help="tokens ours samples per round (batched: same batches)")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--model", type=Path, help="a checkpoint directory with its tokenizer (default: train one)")
    args = parser.parse_args()

    import datasets
    import torch
    from transformers import logging as hf_logging
    from transformers import pipeline

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        model_dir = args.model or demo_teacher(Path(tmp), args.train_steps)
        model, tokenizer = load(model_dir)
        pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, device=torch.device("cpu"))
        rates: dict[str, list[float]] = {OURS: [], BATCHED: [], BASELINE: []}
        batch_size = wasted = 0
        for _ in range(args.rounds):
            kept, seconds = baseline(pipe, tokenizer, args.prompts)
            rates[BASELINE].append(kept / seconds)
            result = ours(model, tokenizer, args.tokens)
            rates[OURS].append(result.tokens_per_second)
            batch_size, wasted = result.batch_size, result.wasted_fraction
            kept, seconds = batched_hf(model, tokenizer, result.rows)
            rates[BATCHED].append(kept / seconds)
    per_round = {name: [r / b for r, b in zip(rates[name], rates[BASELINE])] for name in rates}
    ratios = per_round[OURS]
    best = {name: max(values) for name, values in rates.items()}
    parameters = sum(p.numel() for p in model.parameters())

    print(f"model: {type(model).__name__} {parameters / 1e6:.2f}M parameters, vocab {len(tokenizer)}; "
          f"max_new_tokens {MAX_NEW_TOKENS}, T=1, top_k off, top_p 1; our batch {batch_size} "
          f"({100 * wasted:.0f}% of computed tokens after EOS); {args.rounds} interleaved rounds; "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, load {os.getloadavg()[0]:.2f}")
    print(f"{'method':<36}{'best tok/s':>12}{'median tok/s':>14}{'vs baseline':>13}  (median of per-round ratios)")
    for name in (OURS, BATCHED, BASELINE):
        median = statistics.median(rates[name])
        print(f"{name:<36}{best[name]:>12.0f}{median:>14.0f}{statistics.median(per_round[name]):>12.1f}x")
    print(json.dumps({
        "bench": "generate", "model_parameters": parameters, "vocab_size": len(tokenizer),
        "max_new_tokens": MAX_NEW_TOKENS, "batch_size": batch_size, "wasted_fraction": round(wasted, 4),
        "rounds": args.rounds, "ours_tokens_per_s": round(statistics.median(rates[OURS]), 1),
        "batched_generate_tokens_per_s": round(statistics.median(rates[BATCHED]), 1),
        "baseline_tokens_per_s": round(statistics.median(rates[BASELINE]), 1),
        "ratio": round(statistics.median(ratios), 2), "ratio_per_round": [round(r, 2) for r in ratios],
        "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2), "python": platform.python_version(),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
