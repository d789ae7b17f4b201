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

--device cuda: GPT-2 124M (the project's "124M" preset, vocab 50257, context 1024) randomly
initialised (nothing downloaded; untrained, so it rarely ends a document), in bf16, max_new_tokens
256, with a word-level stand-in tokenizer of 50257 entries (only ids are compared). Same three
contenders on the same batches. Ours decodes with compiled CUDA graphs over bucketed batch shapes
(pipeline/lm/sampling_device.py); one untimed warm-up call per contender first (compilation, cuBLAS
and allocator warm-up), its seconds reported as `warmup_seconds`. Without CUDA: one line, exit 2.

    python bench/generate.py [--rounds 3] [--prompts 24] [--tokens 131072] [--model DIR]
    python bench/generate.py --device cuda [--rounds 3] [--prompts 2] [--tokens 1048576]
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

OURS, BATCHED, BASELINE = "ours: sample_documents", "model.generate(do_sample) batched", "pipeline one prompt at a time"
# Per device: max_new_tokens, baseline prompts per round, tokens ours samples per round. On CUDA a one-prompt
# pipeline call of 256 tokens takes seconds (per-step overhead), and 2**20 tokens are ~one auto batch (4096 x 256).
DEFAULTS = {"cpu": dict(max_new_tokens=128, prompts=24, tokens=131072),
            "cuda": dict(max_new_tokens=256, prompts=2, tokens=1 << 20)}
GPT2_VOCAB = 50257


def demo_teacher(workdir: Path, steps: int):
    """GPT-2 tiny + BPE 4096 on the Wikipedia sample, trained `steps` steps by the shared loop."""
    import torch

    from pipeline.config import ModelConfig, TrainingConfig
    from pipeline.data.packing import load_blocks, pack_documents
    from pipeline.data.sources import load_documents
    from pipeline.data.tokenizer import train_bpe_tokenizer
    from pipeline.lm.loading import build_model
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
                load_blocks(workdir / "validation", torch_format=False), training, workdir / "run", seed=0, block_size=128)
    tokenizer.save_pretrained(workdir / "run" / "model")
    return workdir / "run" / "model"


def word_tokenizer(vocab_size: int):
    """A stand-in for GPT-2's tokenizer (not downloadable here): words w0.. plus <|endoftext|> as the last id
    (50256 at GPT-2's size), which is BOS, EOS and padding. Only token ids are benchmarked."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = "<|endoftext|>"
    vocab = {**{f"w{i}": i for i in range(vocab_size - 1)}, special: vocab_size - 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=special))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=special, eos_token=special, pad_token=special,
                                   unk_token=special)


def random_gpt2(device, size: str = "124M", dtype=None):
    """The project's GPT-2 preset, randomly initialised (seed 0), in the sampling dtype of `device`, eval mode."""
    import torch

    from pipeline.config import ModelConfig
    from pipeline.lm.loading import build_model
    from pipeline.lm.sampling_device import sampling_dtype

    tokenizer = word_tokenizer(GPT2_VOCAB)
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gpt2", size=size), len(tokenizer), 1024, tokenizer.eos_token_id,
                        tokenizer.eos_token_id)
    return model.to(device, dtype or sampling_dtype(device)).eval(), tokenizer


def load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return model, tokenizer


def ours(model, tokenizer, target: int, max_new_tokens: int = 128, batch_size: int | None = None):
    from pipeline.lm import sampling as S

    result = S.sample_documents(model, S.SamplingSettings(max_new_tokens=max_new_tokens),
                                S.PromptSampler(S.start_token_id(tokenizer)), target_tokens=target,
                                eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, seed=0, progress=False,
                                batch_size=batch_size)
    return result


def batched_hf(model, tokenizer, rows: list[int], max_new_tokens: int = 128) -> tuple[int, float]:
    """Plain do_sample generate on the same batches (row counts) as ours."""
    import torch

    from pipeline.lm.sampling import cut_at_eos, start_token_id

    eos, device = tokenizer.eos_token_id, next(model.parameters()).device
    kept, started = 0, time.perf_counter()
    torch.manual_seed(0)
    with torch.inference_mode():
        for n in rows:
            ids = torch.full((n, 1), start_token_id(tokenizer), dtype=torch.long, device=device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                 top_p=1.0, temperature=1.0, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id)
            kept += sum(len(d) for d in cut_at_eos(out[:, 1:].cpu(), eos))
    return kept, time.perf_counter() - started


def baseline(pipe, tokenizer, prompts: int, max_new_tokens: int = 128) -> tuple[int, float]:
    prompt = tokenizer.decode([tokenizer.bos_token_id or tokenizer.eos_token_id])
    kept, started = 0, time.perf_counter()
    for _ in range(prompts):
        (record,) = pipe(prompt, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                         return_tensors=True, pad_token_id=tokenizer.pad_token_id)
        new = list(record["generated_token_ids"])[1:]
        kept += new.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in new else len(new)
    return kept, time.perf_counter() - started


def warm_up(model, tokenizer, pipe, target: int, max_new_tokens: int, batch_size: int) -> float:
    """One untimed call per contender: ours with the timed target and batch size (so every bucket it will use
    is compiled), batched on 8 rows, the pipeline on one short prompt. Returns ours' seconds (mostly compiling)."""
    started = time.perf_counter()
    ours(model, tokenizer, target, max_new_tokens, batch_size)
    seconds = time.perf_counter() - started
    batched_hf(model, tokenizer, [8], max_new_tokens)
    baseline(pipe, tokenizer, 1, 8)
    return seconds


def measure(model, tokenizer, pipe, rounds: int, prompts: int, tokens: int, max_new_tokens: int,
            batch_size: int | None = None) -> tuple[dict, object]:
    """Interleaved rounds: tokens/s per contender per round, and ours' last SampleResult."""
    rates: dict[str, list[float]] = {OURS: [], BATCHED: [], BASELINE: []}
    result = None
    for _ in range(rounds):
        kept, seconds = baseline(pipe, tokenizer, prompts, max_new_tokens)
        rates[BASELINE].append(kept / seconds)
        result = ours(model, tokenizer, tokens, max_new_tokens, batch_size)
        rates[OURS].append(result.tokens_per_second)
        kept, seconds = batched_hf(model, tokenizer, result.rows, max_new_tokens)
        rates[BATCHED].append(kept / seconds)
    return rates, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=sorted(DEFAULTS), default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, help="baseline prompts per round (default: 24 on CPU, 2 on CUDA)")
    parser.add_argument("--tokens", type=int, help="tokens ours samples per round (batched: same batches); "
                                                   "default 131072 on CPU, 2**20 on CUDA")
    parser.add_argument("--train-steps", type=int, default=150, help="CPU: steps to train the demo teacher")
    parser.add_argument("--model", type=Path, help="CPU: a checkpoint directory with its tokenizer "
                                                   "(default: train one)")
    args = parser.parse_args()
    defaults = DEFAULTS[args.device]
    prompts, tokens = args.prompts or defaults["prompts"], args.tokens or defaults["tokens"]
    max_new_tokens = defaults["max_new_tokens"]

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/generate.py --device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
        return 2
    from transformers import logging as hf_logging
    from transformers import pipeline

    hf_logging.set_verbosity_error()
    device, warmup, batch_size = torch.device(args.device), None, None
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        if args.device == "cuda":
            model, tokenizer = random_gpt2(device)
        else:
            import datasets  # the demo teacher's data path; not needed (nor installed everywhere) for CUDA

            datasets.disable_progress_bars()
            model, tokenizer = load(args.model or demo_teacher(Path(tmp), args.train_steps))
        pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, device=device)
        if args.device == "cuda":  # the auto batch once: free memory shrinks as the allocator caches blocks
            from pipeline.lm.sampling_device import auto_batch_size

            batch_size = auto_batch_size(model, 1 + max_new_tokens, device)
            warmup = warm_up(model, tokenizer, pipe, tokens, max_new_tokens, batch_size)
        rates, result = measure(model, tokenizer, pipe, args.rounds, prompts, tokens, max_new_tokens, batch_size)
    report(args, model, tokenizer, rates, result, max_new_tokens, warmup)
    return 0


def report(args, model, tokenizer, rates: dict, result, max_new_tokens: int, warmup: float | None) -> None:
    """The table, then one JSON line (CUDA adds the device, dtype, warm-up seconds and ours vs batched)."""
    import torch

    batch_size, wasted = result.batch_size, result.wasted_fraction
    per_round = {name: [r / b for r, b in zip(rates[name], rates[BASELINE])] for name in rates}
    ratios = per_round[OURS]
    best = {name: max(values) for name, values in rates.items()}
    parameters = sum(p.numel() for p in model.parameters())
    where = (f"{torch.cuda.get_device_name()}, {next(model.parameters()).dtype}, warm-up {warmup:.1f} s"
             if args.device == "cuda" else
             f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, load {os.getloadavg()[0]:.2f}")
    print(f"model: {type(model).__name__} {parameters / 1e6:.2f}M parameters, vocab {len(tokenizer)}; "
          f"max_new_tokens {max_new_tokens}, T=1, top_k off, top_p 1; our batch {batch_size} "
          f"({100 * wasted:.0f}% of computed tokens after EOS); {args.rounds} interleaved rounds; {where}")
    print(f"{'method':<36}{'best tok/s':>12}{'median tok/s':>14}{'vs baseline':>13}  (median of per-round ratios)")
    for name in (OURS, BATCHED, BASELINE):
        median = statistics.median(rates[name])
        print(f"{name:<36}{best[name]:>12.0f}{median:>14.0f}{statistics.median(per_round[name]):>12.1f}x")
    line = {
        "bench": "generate", "model_parameters": parameters, "vocab_size": len(tokenizer),
        "max_new_tokens": max_new_tokens, "batch_size": batch_size, "wasted_fraction": round(wasted, 4),
        "rounds": args.rounds, "ours_tokens_per_s": round(statistics.median(rates[OURS]), 1),
        "batched_generate_tokens_per_s": round(statistics.median(rates[BATCHED]), 1),
        "baseline_tokens_per_s": round(statistics.median(rates[BASELINE]), 1),
        "ratio": round(statistics.median(ratios), 2), "ratio_per_round": [round(r, 2) for r in ratios],
        "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2), "python": platform.python_version(),
    }
    if args.device == "cuda":
        vs_batched = [o / b for o, b in zip(rates[OURS], rates[BATCHED])]
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        line.update(device=torch.cuda.get_device_name(), dtype=dtype, torch=torch.__version__,
                    warmup_seconds=round(warmup, 1), run_rows=result.run_rows,
                    ratio_vs_batched=round(statistics.median(vs_batched), 2))
    print(json.dumps(line))


if __name__ == "__main__":
    raise SystemExit(main())
