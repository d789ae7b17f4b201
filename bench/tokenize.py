"""Benchmark: prepare's tokenisation + packing throughput against a plain per-document Python loop.

Corpus: the built-in Wikipedia sample (paragraph groups of >= 600 characters), tokenizer: the
byte-level BPE prepare trains (vocab 4096). Ours = `pack_documents` (batched fast tokenisation
through datasets.map, EOS, concatenation, cutting into 128-token blocks, save_to_disk), at
num_proc 1 (the config default) and 2. Baseline = `tokenizer(text)` for each document in a Python
loop, tokenisation only (no packing, nothing written), so the comparison favours the baseline.
Rounds interleave the three methods so that load from other processes hits them alike; the table
shows each method's best round (UTF-8 megabytes of text per second), `ratio` is the median of the
per-round ratios ours/baseline. The last output line is JSON.

    python bench/tokenize.py [--repeats 5] [--vocab-size 4096] [--block-size 128]
"""

from __future__ import annotations

import os
import sys

# This file is named tokenize.py, and Python puts its folder first on sys.path: the standard library's
# `tokenize` (imported by pandas, inspect, ...) would resolve to this script. Drop the folder first.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))  # the repository root: runnable from a checkout without install
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def baseline_loop(tokenizer, docs: list[str]) -> int:
    tokens = 0
    for text in docs:
        tokens += len(tokenizer(text)["input_ids"])
    return tokens


OURS, OURS2, BASELINE = "pack_documents num_proc=1", "pack_documents num_proc=2", "python loop tokenizer(text)"


def measure(docs: list[str], args) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per round and token count (EOS per document included) of each method."""
    from pipeline.data.packing import pack_documents
    from pipeline.data.tokenizer import train_bpe_tokenizer

    seconds: dict[str, list[float]] = {OURS: [], OURS2: [], BASELINE: []}
    tokens: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        tokenizer = train_bpe_tokenizer(docs, args.vocab_size, Path(tmp) / "tokenizer")
        methods = {
            OURS: lambda: pack_documents(docs, tokenizer, args.block_size, Path(tmp) / "b1", num_proc=1)["tokens"],
            OURS2: lambda: pack_documents(docs, tokenizer, args.block_size, Path(tmp) / "b2", num_proc=2)["tokens"],
            BASELINE: lambda: baseline_loop(tokenizer, docs) + len(docs),  # + the EOS ours appends per document
        }
        for _ in range(args.repeats):
            for name, method in methods.items():
                elapsed, tokens[name] = timed(method)
                seconds[name].append(elapsed)
    return seconds, tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--block-size", type=int, default=128)
    args = parser.parse_args()

    import datasets

    from pipeline.data.sources import load_documents

    datasets.disable_progress_bars()
    docs = load_documents("builtin:wikipedia", min_chars=600)
    megabytes = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    seconds, tokens = measure(docs, args)
    best = {name: min(times) for name, times in seconds.items()}
    ratio = {name: statistics.median(b / o for o, b in zip(seconds[name], seconds[BASELINE])) for name in (OURS, OURS2)}

    print(f"corpus: builtin:wikipedia, {len(docs)} documents, {megabytes:.2f} MB UTF-8; BPE vocab {args.vocab_size}; "
          f"block {args.block_size}; {args.repeats} interleaved rounds; TOKENIZERS_PARALLELISM="
          f"{os.environ.get('TOKENIZERS_PARALLELISM', '(unset)')}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"{'method':<30}{'best s':>9}{'MB/s':>9}{'Mtok/s':>9}{'tokens':>10}{'ratio':>8}")
    for name in (OURS, OURS2, BASELINE):
        print(f"{name:<30}{best[name]:>9.3f}{megabytes / best[name]:>9.2f}{tokens[name] / best[name] / 1e6:>9.3f}"
              f"{tokens[name]:>10}{ratio.get(name, 1.0):>8.2f}")
    if len(set(tokens.values())) != 1:
        print(f"warning: token counts differ: {tokens}", file=sys.stderr)
    print(json.dumps({
        "bench": "tokenize", "corpus": "builtin:wikipedia", "documents": len(docs), "megabytes": round(megabytes, 4),
        "tokens": tokens[OURS], "vocab_size": args.vocab_size, "block_size": args.block_size, "rounds": args.repeats,
        "ours_mb_s": round(megabytes / best[OURS], 3), "ours_num_proc2_mb_s": round(megabytes / best[OURS2], 3),
        "baseline_mb_s": round(megabytes / best[BASELINE], 3),
        "ratio": round(ratio[OURS], 3), "ratio_num_proc2": round(ratio[OURS2], 3),
        "tokens_match": len(set(tokens.values())) == 1, "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"), "python": platform.python_version(),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
