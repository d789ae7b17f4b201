"""Text statistics of a synthetic corpus next to the human one: do the tails thin out?

Everything here works on plain Python data (lists of documents as lists of units: words or token
ids), so each statistic can be tested on text whose statistics are known exactly (e.g. sampled from
a Zipf law). `corpus_diagnostics` puts them together for the generate stage: scalar metrics for the
manifest, and log-spaced rank-frequency curves for the report's plot.

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
CURVE_POINTS = 200  # log-spaced ranks saved for the plot


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def rank_frequency(counts: Counter | Iterable[int]) -> np.ndarray:
    """Counts sorted from the most frequent type down (index 0 = rank 1)."""
    values = counts.values() if isinstance(counts, Counter) else counts
    return np.sort(np.fromiter(values, dtype=np.int64))[::-1]


def zipf_exponent(counts: Counter | Iterable[int], min_count: int = ZIPF_MIN_COUNT) -> float:
    """s in f(r) ~ r^-s: least squares of log count on log rank, over log-spaced ranks with count >= min_count.

    Log spacing gives every decade of ranks the same weight (otherwise the long tail of rare types,
    thousands of points, would decide the fit). NaN when fewer than 3 types reach min_count.
    """
    sorted_counts = rank_frequency(counts)
    sorted_counts = sorted_counts[sorted_counts >= min_count]
    if len(sorted_counts) < 3:
        return float("nan")
    picks = np.unique(np.round(np.geomspace(1, len(sorted_counts), ZIPF_POINTS)).astype(np.int64)) - 1
    slope = np.polyfit(np.log(picks + 1.0), np.log(sorted_counts[picks].astype(float)), 1)[0]
    return float(-slope)


def rank_frequency_curve(counts: Counter | Iterable[int], points: int = CURVE_POINTS) -> dict[str, list]:
    """Relative frequency at log-spaced ranks (all ranks when there are few): what the report plots."""
    sorted_counts = rank_frequency(counts)
    if len(sorted_counts) == 0:
        return {"rank": [], "frequency": []}
    picks = np.unique(np.round(np.geomspace(1, len(sorted_counts), points)).astype(np.int64)) - 1
    total = float(sorted_counts.sum())
    return {"rank": (picks + 1).tolist(), "frequency": (sorted_counts[picks] / total).tolist()}


def distinct_n(documents: Sequence[Sequence[Hashable]], n: int) -> float:
    """Distinct n-grams / all n-grams over the corpus (n-grams never cross a document boundary)."""
    seen: set = set()
    total = 0
    for doc in documents:
        grams = list(zip(*(doc[i:] for i in range(n))))
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else float("nan")


def type_coverage(units: Iterable[Hashable], reference_types: set) -> float:
    """Share of the reference's types that occur in `units` (e.g. human test words seen in synthetic text)."""
    if not reference_types:
        return float("nan")
    return len(reference_types & set(units)) / len(reference_types)


def reference_ranks(counts: Counter) -> dict[Hashable, int]:
    """Rank (1 = most frequent) of every type; ties broken by first occurrence, so ranks are stable."""
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    return {unit: rank for rank, (unit, _) in enumerate(ordered, start=1)}


def tail_mass(counts: Counter, ranks: dict[Hashable, int], tail_rank: int) -> tuple[float, float]:
    """(share of tokens whose type is beyond reference rank `tail_rank` or unseen, share that is unseen)."""
    total = sum(counts.values())
    if total == 0:
        return float("nan"), float("nan")
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


def unit_statistics(documents: Sequence[Sequence[Hashable]]) -> dict[str, float]:
    """Size, Zipf exponent, distinct-1/2/3 and mean document length of a corpus of unit sequences."""
    counts = Counter(unit for doc in documents for unit in doc)
    n_units = sum(counts.values())
    return {
        "documents": len(documents), "units": n_units, "types": len(counts),
        "zipf_exponent": zipf_exponent(counts),
        **{f"distinct_{n}": distinct_n(documents, n) for n in (1, 2, 3)},
        "mean_document_length": n_units / len(documents) if documents else float("nan"),
    }


def corpus_diagnostics(synthetic: Sequence[str], human_train: Sequence[str], human_test: Sequence[str],
                       tokenize: Callable[[Sequence[str]], list[list[int]]], tail_rank: int,
                       distinct: Callable[[Sequence[Sequence[Hashable]], int], float] | None = None) -> tuple[dict, dict]:
    """(metrics, curves) of a synthetic corpus against the human train/test documents.

    metrics: {"synthetic": {...}, "human": {...}} on words and on tokens (`tokenize` = the corpus
    tokenizer), plus test-type coverage and tail mass beyond human word rank `tail_rank`.
    curves: rank-frequency curves (words, tokens) of both corpora for the report.
    `distinct` overrides the distinct-n implementation (the `distinct_n` evaluate module).
    """
    synthetic_words = [words(t) for t in synthetic]
    train_words = [words(t) for t in human_train]
    test_word_types = {w for t in human_test for w in words(t)}
    synthetic_tokens, train_tokens = tokenize(list(synthetic)), tokenize(list(human_train))
    train_word_counts = Counter(w for doc in train_words for w in doc)
    ranks = reference_ranks(train_word_counts)

    n_synthetic_words = sum(map(len, synthetic_words))
    matched_words = size_matched(train_words, n_synthetic_words)
    matched_tokens = size_matched(train_tokens, sum(map(len, synthetic_tokens)))
    metrics: dict[str, dict] = {}
    for side, word_docs, token_docs, tail_counts in (
        ("synthetic", synthetic_words, synthetic_tokens, Counter(w for doc in synthetic_words for w in doc)),
        ("human", matched_words, matched_tokens, Counter(w for t in human_test for w in words(t))),
    ):
        word_stats, token_stats = unit_statistics(word_docs), unit_statistics(token_docs)
        if distinct is not None:
            for n in (1, 2, 3):
                word_stats[f"distinct_{n}"] = distinct(word_docs, n)
                token_stats[f"distinct_{n}"] = distinct(token_docs, n)
        beyond, unseen = tail_mass(tail_counts, ranks, tail_rank)
        metrics[side] = {
            "words": word_stats, "tokens": token_stats,
            "test_type_coverage": type_coverage((w for doc in word_docs for w in doc), test_word_types),
            "tail_mass": beyond, "unseen_mass": unseen,
        }
    # Zipf exponents of the human side from the whole train split (more data, a steadier fit).
    metrics["human"]["words"]["zipf_exponent"] = zipf_exponent(train_word_counts)
    metrics["human"]["tokens"]["zipf_exponent"] = zipf_exponent(Counter(t for doc in train_tokens for t in doc))
    metrics["tail_rank"] = tail_rank
    curves = {
        side: {"words": rank_frequency_curve(Counter(w for doc in wd for w in doc)),
               "tokens": rank_frequency_curve(Counter(t for doc in td for t in doc))}
        for side, wd, td in (("synthetic", synthetic_words, synthetic_tokens), ("human", train_words, train_tokens))
    }
    return metrics, curves
