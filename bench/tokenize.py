"""Benchmark: prepare's tokenisation + packing throughput against a plain per-document Python loop.

Corpus: the built-in Wikipedia sample (paragraph groups of >= 600 characters), tokenizer: the
byte-level BPE prepare trains (vocab 4096). Ours = `pack_documents` (batched fast tokenisation
through datasets.map, EOS, concatenation, cutting into 128-token blocks, save_to_disk), at
num_proc 1 (the config default) and 2. Baseline = `tokenizer(text)` for each document in a Python
loop, tokenisation only (no packing, nothing written), so the comparison favours the baseline.
Throughput is UTF-8 megabytes of text per second (best of --repeats). The last output line is JSON.

    python bench/tokenize.py [--repeats 3] [--vocab-size 4096] [--block-size 128]
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
import tempfile
import time
from pathlib import Path


def best_seconds(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def baseline_loop(tokenizer, docs: list[str]) -> int:
    tokens = 0
    for text in docs:
        tokens += len(tokenizer(text)["input_ids"])
    return tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--block-size", type=int, default=128)
    args = parser.parse_args()

    import datasets

    from pipeline.data.packing import pack_documents
    from pipeline.data.sources import load_documents
    from pipeline.data.tokenizer import train_bpe_tokenizer

    datasets.disable_progress_bars()
    docs = load_documents("builtin:wikipedia", min_chars=600)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    megabytes = n_bytes / 1e6
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        tokenizer = train_bpe_tokenizer(docs, args.vocab_size, Path(tmp) / "tokenizer")
        rows = []
        for num_proc in (1, 2):
            seconds, stats = best_seconds(
                lambda n=num_proc: pack_documents(docs, tokenizer, args.block_size, Path(tmp) / f"blocks{n}",
                                                  num_proc=n), args.repeats)
            rows.append((f"pack_documents num_proc={num_proc}", seconds, stats["tokens"]))
        seconds, tokens = best_seconds(lambda: baseline_loop(tokenizer, docs), args.repeats)
        rows.append(("python loop tokenizer(text)", seconds, tokens + len(docs)))  # + the EOS ours appends

    print(f"corpus: builtin:wikipedia, {len(docs)} documents, {megabytes:.2f} MB UTF-8; BPE vocab {args.vocab_size}; "
          f"block {args.block_size}; best of {args.repeats}; TOKENIZERS_PARALLELISM="
          f"{os.environ.get('TOKENIZERS_PARALLELISM', '(unset)')}; {os.cpu_count()} CPUs")
    print(f"{'method':<34}{'seconds':>9}{'MB/s':>9}{'Mtok/s':>9}{'tokens':>10}")
    for name, seconds, tokens in rows:
        print(f"{name:<34}{seconds:>9.3f}{megabytes / seconds:>9.2f}{tokens / seconds / 1e6:>9.3f}{tokens:>10}")
    ours1, ours2, base = (megabytes / row[1] for row in rows)
    if rows[0][2] != rows[2][2]:
        print(f"warning: token counts differ (ours {rows[0][2]}, loop {rows[2][2]})", file=sys.stderr)
    print(json.dumps({
        "bench": "tokenize", "corpus": "builtin:wikipedia", "documents": len(docs), "megabytes": round(megabytes, 4),
        "tokens": rows[0][2], "vocab_size": args.vocab_size, "block_size": args.block_size,
        "ours_mb_s": round(ours1, 3), "ours_num_proc2_mb_s": round(ours2, 3), "baseline_mb_s": round(base, 3),
        "ratio": round(ours1 / base, 3), "ratio_num_proc2": round(ours2 / base, 3),
        "tokens_match": rows[0][2] == rows[2][2], "cpus": os.cpu_count(),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"), "python": platform.python_version(),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
