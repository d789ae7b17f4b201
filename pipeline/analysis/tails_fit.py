"""A Tale of Tails, measured against the finite-support theory (pipeline/theory/tails.py, docs/theory-notes.md §2).

Two comparisons the fit stage makes per synthetic corpus, and the report prints:

1. The clean exponent. `clean_error_exponent` = 1 − 1/β holds for an infinite Zipf support. The reference
   language has a finite lexicon (N words), and E(T) = Σ_i p_i (1 − p_i)^T then falls faster than T^−(1−1/β)
   once T reaches the last ranks, so the exponent a straight line through the study's budgets should see is the
   local one, −d log E / d log T, of `memorization_error(T, β, support=N)` at those budgets' word counts.
2. The level the students cannot get below from synthetic text: the human test words whose type never occurs in
   the synthetic corpus (their mass is out of reach of a learner of that corpus), next to the theory's tail
   mass beyond the corpus's cut k, Σ_{i>k} p_i ∝ k^−(β−1).

The fit stage counts the words (pipeline/lm/diagnostics.py `words`) of prepare's test and train splits and of each
corpus's training text, so the missing mass is exact (`missing_test_mass`); the lexicon size N is the reference
language's where the corpus is one, else the number of human train word types (a lower bound).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.theory import tails

_LOG_STEP = 0.01  # central difference step in ln T: the error, O(step²) relative, is far below any fit's interval
MISSING_MASS_METHOD = ("the token-weighted share of the human test split's words whose type never occurs in the "
                       "synthetic corpus's training text (its held-out documents excluded), counted word by word")
CUTOFF_METHOD = ("k = the human train word types the synthetic corpus holds; with top-p < 1 also "
                 "the nucleus of the human words' Zipf(β) law over N words (top-p acts on the teacher's BPE tokens, "
                 "so that is the word law's analogue)")
PERFECT_TEACHER_METHOD = ("a teacher that samples the human Zipf(β) word law exactly (cut at the top-p nucleus, "
                          "sharpened to p^(1/τ)), as many words as the corpus holds: the test mass its sample misses, "
                          "memorization_error(words, β, cutoff, support=N, temperature=τ)")


def local_exponent(T, beta, support, **law) -> np.ndarray | float:
    """−d log E(T)/d log T of `tails.memorization_error(T, beta, support=support, **law)` (central difference).

    At a huge support and T ≫ 1 this is the clean exponent 1 − 1/β; at a finite support it grows above it as T
    reaches the last ranks (every type then has been seen about once, and E falls exponentially).
    """
    T_arr = np.asarray(T, dtype=float)
    up = tails.memorization_error(T_arr * math.exp(_LOG_STEP), beta, support=support, **law)
    down = tails.memorization_error(T_arr * math.exp(-_LOG_STEP), beta, support=support, **law)
    slope = -(np.log(up) - np.log(down)) / (2.0 * _LOG_STEP)
    return float(slope) if T_arr.ndim == 0 else slope


def finite_support_exponent(word_counts: Sequence[float], beta: float, support: int) -> dict[str, Any]:
    """The clean exponent the budgets' word counts should show, for Zipf(β) over `support` words.

    fitted: −(least-squares slope of log E on log T) over the word counts, the straight line the measured excess
    exponent is (prediction.excess_exponents); local: −d log E/d log T at each word count; infinite_support: 1 − 1/β.
    """
    counts = np.asarray(sorted(word_counts), dtype=float)
    if counts.size < 2 or np.any(counts <= 0):
        raise ValueError(f"word_counts must hold two positive counts or more, got {list(word_counts)}")
    error = tails.memorization_error(counts, beta, support=support)
    slope = np.polyfit(np.log(counts), np.log(error), 1)[0]
    return {"fitted": float(-slope), "local": [float(v) for v in local_exponent(counts, beta, support)],
            "words": [float(c) for c in counts], "infinite_support": tails.clean_error_exponent(beta),
            "beta": float(beta), "support": int(support)}


def missing_test_mass(test_word_counts: Mapping[str, int], synthetic_types: Iterable[str]) -> float:
    """Token-weighted share of the test words whose type never occurs among `synthetic_types` (exact)."""
    total = sum(test_word_counts.values())
    if total <= 0:
        raise ValueError("test_word_counts must hold at least one word")
    seen = set(synthetic_types)
    return sum(c for word, c in test_word_counts.items() if word not in seen) / total


def theory_tail(cutoff: int, beta: float, support: int) -> dict[str, Any]:
    """Σ_{i>k} p_i at the finite support, and its large-k form k^−(β−1)/((β−1)ζ(β))."""
    k = max(1, min(int(cutoff), int(support)))
    return {"cutoff": k, "tail_mass": tails.tail_mass(k, beta, support),
            "plateau_asymptotic": tails.plateau_asymptotic(k, beta)}


def _words_per_token(side: Mapping[str, Any]) -> float | None:
    words, tokens = side.get("words"), side.get("tokens")
    return words / tokens if words and tokens else None


def corpus_tails(diag: Mapping[str, Any], human_beta: float, sampling: Mapping[str, Any],
                 words: Mapping[str, Any]) -> dict[str, Any]:
    """The new fit.json tails entries of one corpus (see the module docstring).

    words: {"test": Counter of the human test split's words, "train_types": set of the human train split's word
    types, "synthetic_types": set of the corpus's training-text word types, "lexicon_size": N (the reference
    language's, else the number of human train types) and "lexicon_size_source"}.
    Returns lexicon_size, words_per_token (human, synthetic), missing (exact), theory tail masses at the cutoffs,
    perfect_teacher (PERFECT_TEACHER_METHOD); a {"why"} where β <= 1 or a top-p the support cannot reach.
    """
    human, synthetic = diag.get("human") or {}, diag.get("synthetic") or {}
    support = int(words["lexicon_size"])
    entry: dict[str, Any] = {"lexicon_size": support, "lexicon_size_source": words["lexicon_size_source"],
                             "words_per_token": {"human": _words_per_token(human),
                                                 "synthetic": _words_per_token(synthetic)}}
    covered = len(words["train_types"] & words["synthetic_types"])
    entry["missing"] = {"missing_mass": missing_test_mass(words["test"], words["synthetic_types"]),
                        "covered_types": covered, "test_words": int(sum(words["test"].values())),
                        "method": MISSING_MASS_METHOD}
    try:
        cutoffs = {"coverage": max(1, covered)}
        top_p = sampling.get("top_p")
        if top_p is not None and top_p < 1:
            cutoffs["top_p"] = tails.top_p_cutoff(top_p, human_beta, support)
        entry["theory"] = {name: theory_tail(k, human_beta, support) for name, k in cutoffs.items()}
        entry["theory"]["method"] = CUTOFF_METHOD
        entry["perfect_teacher"] = _perfect_teacher(synthetic, human_beta, support, cutoffs.get("top_p"), sampling)
    except ValueError as exc:  # β <= 1 (the Zipf formulas need β > 1) or a top-p the support cannot reach
        entry["theory"] = {"why": str(exc)}
    return entry


def _perfect_teacher(synthetic: Mapping[str, Any], beta: float, support: int, cutoff: int | None,
                     sampling: Mapping[str, Any]) -> dict[str, Any]:
    """The test mass a synthetic sample of the corpus's word count from the exact (cut, sharpened) law misses."""
    words = synthetic.get("words")
    if not words:
        return {"why": "the synthetic corpus's word count is not in its diagnostics"}
    temperature = float(sampling.get("temperature") or 1.0)
    missed = tails.memorization_error(float(words), beta, cutoff=cutoff, support=support, temperature=temperature)
    return {"missing_mass": missed, "words": int(words), "temperature": temperature, "cutoff": cutoff,
            "method": PERFECT_TEACHER_METHOD}


# ------------------------------------------------------------------------------------------------ report rows


def _shown(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _generation_of(corpus_id: str) -> int | None:
    """gG or gG-tR (artifacts.generation_id) -> G."""
    head = corpus_id.split("-")[0]
    return int(head[1:]) if head[:1] == "g" and head[1:].isdigit() else None


def _p1_gaps(fit: Mapping[str, Any], corpus_id: str) -> str:
    """The measured p = 1 gap at the largest budget of every curve trained on this corpus's generation."""
    generation = _generation_of(corpus_id)
    gaps = [(label, s.get("measured_gaps", {}).get("1")) for label, s in sorted(fit.get("students", {}).items())
            if s.get("generation", 0) == generation]
    shown = [f"{_shown(g['gap'], '+.4f')} ({label}, n = {g['budget']:,})" for label, g in gaps if g]
    return "; ".join(shown) or "–"


def missing_mass_lines(fit: Mapping[str, Any]) -> list[str]:
    """Per corpus: measured missing mass, theory tail mass at k, perfect-teacher sample, measured p = 1 gap."""
    found = {name: t for name, t in sorted((fit.get("tails") or {}).items()) if "missing" in t}
    if not found:
        return []
    lines = ["| corpus | missing test mass (measured) | k (coverage) | tail mass beyond k (theory) | top-p k | "
             "tail mass beyond top-p k (theory) | perfect teacher's sample misses (theory) | p = 1 gap at n_max |",
             "|---|---|---|---|---|---|---|---|"]
    for name, t in found.items():
        theory, perfect = t.get("theory") or {}, t.get("perfect_teacher") or {}
        cov, top = theory.get("coverage") or {}, theory.get("top_p") or {}
        lines.append(f"| {name} | {_shown(t['missing'].get('missing_mass'), '.4f')} | {_shown(cov.get('cutoff'), 'd')} "
                     f"| {_shown(cov.get('tail_mass'), '.4f')} | {_shown(top.get('cutoff'), 'd')} | "
                     f"{_shown(top.get('tail_mass'), '.4f')} | {_shown(perfect.get('missing_mass'), '.4f')} | "
                     f"{_p1_gaps(fit, name)} |")
    first = next(iter(found.values()))
    return lines + ["", f"Measured missing mass: {first['missing'].get('method', first['missing'].get('why'))}.",
                    f"Theory k: {CUTOFF_METHOD}; tail mass Σ_(i>k) p_i over N = {first['lexicon_size']} words "
                    "(≈ k^−(β−1)/((β−1)ζ(β)) at large k).", f"Perfect teacher: {PERFECT_TEACHER_METHOD}.", ""]


def clean_exponent_lines(fit: Mapping[str, Any]) -> list[str]:
    """Per curve: the clean exponent at the lexicon's finite support over its budgets, beside 1 − 1/β and the
    measured excess-loss exponents of p = 0 and p = 1."""
    entries = [t for _, t in sorted((fit.get("tails") or {}).items())
               if t.get("human", {}).get("beta") and t.get("lexicon_size")]
    if not entries:
        return []
    tail = entries[0]
    beta, support, ratio = tail["human"]["beta"], tail["lexicon_size"], tail["words_per_token"].get("human")
    how = (f"{ratio:.3f} words per token (the human train text's, from diagnostics)" if ratio else
           "1 word per token (assumed: the diagnostics give no word and token counts)")
    lines = ["| curve | budgets as words | local exponent (smallest → largest) | fitted over the budgets "
             "(finite N) | 1 − 1/β (N = ∞) | measured excess exponent p = 0 | p = 1 |", "|---|---|---|---|---|---|---|"]
    for label, student in sorted(fit.get("students", {}).items()):
        budgets = student.get("budgets") or []
        if len(budgets) < 2 or beta <= 1:
            continue
        fitted = finite_support_exponent([n * (ratio or 1.0) for n in budgets], beta, support)
        measured = (student.get("excess") or {}).get("exponents") or {}
        lines.append(f"| {label} | {fitted['words'][0]:,.0f} – {fitted['words'][-1]:,.0f} | "
                     f"{fitted['local'][0]:.3f} → {fitted['local'][-1]:.3f} | {fitted['fitted']:.3f} | "
                     f"{fitted['infinite_support']:.3f} | {_shown(measured.get('0', {}).get('exponent'), '.3f')} | "
                     f"{_shown(measured.get('1', {}).get('exponent'), '.3f')} |")
    return lines + ["", f"Clean exponent at finite support: −d log E/d log T of E(T) = Σ_i p_i(1 − p_i)^T for "
                    f"Zipf(β = {beta:.3f}, the human words' fit) over N = {support} words "
                    f"({tail.get('lexicon_size_source', 'lexicon')}), at the budgets' word counts ({how}); 'fitted': the least-squares line through them.", ""]
