"""Text statistics of a synthetic corpus next to the human one: do the tails thin out?

Everything here works on plain Python data (lists of documents as lists of units: words or token
ids), so each statistic can be tested on text whose statistics are known exactly (e.g. sampled from
a Zipf law). `corpus_diagnostics` puts them together for the generate stage: scalar metrics for the
manifest, and full rank-frequency count arrays for the report's plot.

Size matters for type counts and distinct-n (a bigger sample has more types), so the human
reference values are computed on a sample of human train documents with as many words as the
synthetic corpus. Tail mass is measured out of sample: human ranks come from the train split, the
human reference value from the test split.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable, Hashable, Iterable, Sequence

import numpy as np

# Words: runs of letters/digits, with inner apostrophes ("don't"); lower-cased.
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
ZIPF_MIN_COUNT = 5  # below this, counts are mostly sampling noise and flatten the fitted curve
ZIPF_POINTS = 50  # log-spaced ranks the line is fitted through (each decade weighs the same)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def rank_frequency(counts: Counter | Iterable[int]) -> np.ndarray:
    """Counts sorted from the most frequent type down (index 0 = rank 1)."""
    values = counts.values() if isinstance(counts, Counter) else counts
    return np.sort(np.fromiter(values, dtype=np.int64))[::-1]


def zipf_exponent(counts: Counter | Iterable[int], min_count: int = ZIPF_MIN_COUNT) -> float | None:
    """s in f(r) ~ r^-s: least squares of log count on log rank, over log-spaced ranks with count >= min_count.

    Log spacing gives every decade of ranks the same weight (otherwise the long tail of rare types,
    thousands of points, would decide the fit). None (JSON null: undefined, never NaN, which JSON has not)
    when fewer than 3 types reach min_count; so are the other statistics here without a denominator.
    """
    sorted_counts = rank_frequency(counts)
    sorted_counts = sorted_counts[sorted_counts >= min_count]
    if len(sorted_counts) < 3:
        return None
    picks = np.unique(np.round(np.geomspace(1, len(sorted_counts), ZIPF_POINTS)).astype(np.int64)) - 1
    slope = np.polyfit(np.log(picks + 1.0), np.log(sorted_counts[picks].astype(float)), 1)[0]
    return float(-slope)


def distinct_n(documents: Sequence[Sequence[Hashable]], n: int) -> float | None:
    """Distinct n-grams / all n-grams over the corpus (n-grams never cross a document boundary)."""
    seen: set = set()
    total = 0
    for doc in documents:
        grams = list(zip(*(doc[i:] for i in range(n))))
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else None


def type_coverage(units: Iterable[Hashable], reference_types: set) -> float | None:
    """Share of the reference's types that occur in `units` (e.g. human test words seen in synthetic text)."""
    if not reference_types:
        return None
    return len(reference_types & set(units)) / len(reference_types)


def reference_ranks(counts: Counter) -> dict[Hashable, int]:
    """Rank (1 = most frequent) of every type; ties broken by first occurrence, so ranks are stable."""
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    return {unit: rank for rank, (unit, _) in enumerate(ordered, start=1)}


def tail_mass(counts: Counter, ranks: dict[Hashable, int], tail_rank: int) -> tuple[float | None, float | None]:
    """(share of tokens whose type is beyond reference rank `tail_rank` or unseen, share that is unseen)."""
    total = sum(counts.values())
    if total == 0:
        return None, None
    unseen = sum(c for unit, c in counts.items() if unit not in ranks)
    beyond = sum(c for unit, c in counts.items() if ranks.get(unit, math.inf) > tail_rank)
    return beyond / total, unseen / total


def size_matched(documents: Sequence[Sequence[Hashable]], units: int) -> list[Sequence[Hashable]]:
    """The first documents holding about `units` units (the human reference for size-dependent statistics)."""
    picked, total = [], 0
    for doc in documents:
        if total >= units:
            break
        picked.append(doc)
        total += len(doc)
    return picked


def side_statistics(word_docs: Sequence[Sequence[str]], token_docs: Sequence[Sequence[int]],
                    distinct: Callable[[Sequence[Sequence[Hashable]]], dict] | None = None) -> dict:
    """Sizes, Zipf exponents, distinct-1/2/3 (words; tokens as token_distinct_n), mean document lengths."""
    distinct = distinct or (lambda docs: {f"distinct_{n}": distinct_n(docs, n) for n in (1, 2, 3)})
    word_counts = Counter(w for doc in word_docs for w in doc)
    token_counts = Counter(t for doc in token_docs for t in doc)
    n_docs = max(1, len(word_docs))
    return {
        "documents": len(word_docs), "words": sum(word_counts.values()), "tokens": sum(token_counts.values()),
        "word_types": len(word_counts), "token_types": len(token_counts),
        "zipf_word": zipf_exponent(word_counts), "zipf_token": zipf_exponent(token_counts),
        **distinct(word_docs), **{f"token_{k}": v for k, v in distinct(token_docs).items()},
        "mean_document_words": sum(word_counts.values()) / n_docs,
        "mean_document_tokens": sum(token_counts.values()) / n_docs,
        "word_rank_frequency": rank_frequency(word_counts).tolist(),
        "token_rank_frequency": rank_frequency(token_counts).tolist(),
    }


def corpus_diagnostics(synthetic: Sequence[str], human_train: Sequence[str], human_test: Sequence[str],
                       tokenize: Callable[[Sequence[str]], list[list[int]]], tail_rank: int,
                       distinct: Callable[[Sequence[Sequence[Hashable]]], dict] | None = None) -> dict:
    """{"synthetic": {...}, "human": {...}, "tail_rank": k}: the statistics of both sides, comparably.

    Per side: see `side_statistics` (the *_rank_frequency entries are full sorted count arrays, for the
    report's plot), plus `human_test_type_coverage` (share of human test word types that occur) and
    `tail_mass` / `unseen_mass` (share of word tokens beyond human train rank `tail_rank` / never in
    human train). The human side's size-dependent values come from a size-matched prefix of the train
    split (its Zipf exponents and rank-frequency from the whole split); its tail mass from the test split.
    `tokenize` maps texts to token ids (the corpus tokenizer); `distinct(docs) -> {distinct_1..3}`
    overrides the built-in distinct-n (the generate stage passes the `distinct_n` evaluate module).
    """
    synthetic_words = [words(t) for t in synthetic]
    train_words = [words(t) for t in human_train]
    test_words = [words(t) for t in human_test]
    synthetic_tokens, train_tokens = tokenize(list(synthetic)), tokenize(list(human_train))
    train_word_counts = Counter(w for doc in train_words for w in doc)
    ranks = reference_ranks(train_word_counts)
    test_types = {w for doc in test_words for w in doc}

    synthetic_stats = side_statistics(synthetic_words, synthetic_tokens, distinct)
    n_words = synthetic_stats["words"]
    human_stats = side_statistics(size_matched(train_words, n_words),
                                  size_matched(train_tokens, synthetic_stats["tokens"]), distinct)
    whole_train = side_statistics(train_words, train_tokens, lambda docs: {})
    for key in ("zipf_word", "zipf_token", "word_rank_frequency", "token_rank_frequency",
                "mean_document_words", "mean_document_tokens"):
        human_stats[key] = whole_train[key]
    for stats, word_docs, tail_docs in ((synthetic_stats, synthetic_words, synthetic_words),
                                        (human_stats, size_matched(train_words, n_words), test_words)):
        stats["human_test_type_coverage"] = type_coverage((w for doc in word_docs for w in doc), test_types)
        stats["tail_mass"], stats["unseen_mass"] = tail_mass(Counter(w for doc in tail_docs for w in doc), ranks, tail_rank)
    return {"synthetic": synthetic_stats, "human": human_stats, "tail_rank": tail_rank}


def without_arrays(diagnostics: dict) -> dict:
    """The scalar part (for a manifest): the rank-frequency arrays dropped."""
    return {key: without_arrays(value) if isinstance(value, dict) else value
            for key, value in diagnostics.items() if not isinstance(value, list)}
