"""A Tale of Tails, measured against the finite-support theory (pipeline/theory/tails.py, docs/theory-notes.md §2).

Two comparisons the fit stage makes per synthetic corpus, and the report prints:

1. The clean exponent. `clean_error_exponent` = 1 − 1/β holds for an infinite Zipf support. The reference
   language has a finite lexicon (N words), and E(T) = Σ_i p_i (1 − p_i)^T then falls faster than T^−(1−1/β)
   once T reaches the last ranks, so the exponent a straight line through the study's budgets should see is the
   local one, −d log E / d log T, of `memorization_error(T, β, support=N)` at those budgets' word counts.
2. The level the students cannot get below from synthetic text: the human test words whose type never occurs in
   the synthetic corpus (their mass is out of reach of a learner of that corpus), next to the theory's tail
   mass beyond the corpus's cut k, Σ_{i>k} p_i ∝ k^−(β−1).

What fit can read is the corpus units' diagnostics.json (generate's; pipeline/lm/diagnostics.py): anonymous
rank-frequency counts, human test word-type coverage and sizes. The lexicon size is taken as the number of
human train word types (a lower bound: types the train split never drew are missing, of mass ~ N·p_N). The
missing mass is estimated from the coverages (`estimate_missing_mass`); `missing_test_mass` computes it
exactly where the words themselves are at hand (tests, and a check against prepare's test split).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import brentq

from pipeline.theory import tails

_LOG_STEP = 0.01  # central difference step in ln T: the error, O(step²) relative, is far below any fit's interval
MISSING_MASS_METHOD = (
    "estimated from generate's diagnostics (no word identities reach fit): the human train rank frequencies as the "
    "test law; the test sample's size from the human side's test-type coverage (a size-matched train sample's); the "
    "synthetic corpus's test-type coverage read as its holding the m most frequent human types (head first: for m "
    "types, the least mass it can miss); in brackets, the estimate at twice and half that test size")
CUTOFF_METHOD = ("k = m, the human word types the synthetic corpus holds (as estimated above); with top-p < 1 also "
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


def _seen_probability(probs: np.ndarray, draws: float) -> np.ndarray:
    """P(a type of probability p occurs in `draws` i.i.d. draws) = 1 − (1 − p)^draws, accurate for small p."""
    return -np.expm1(draws * np.log1p(-np.minimum(probs, 1.0 - 1e-16)))


def _coverage_by_sample(probs: np.ndarray, test_words: float, sample_words: float) -> float:
    """Expected share of a test sample's types that an independent sample of `sample_words` also holds."""
    in_test = _seen_probability(probs, test_words)
    return float(np.sum(in_test * _seen_probability(probs, sample_words)) / np.sum(in_test))


def estimate_test_words(probs: np.ndarray, sample_words: float, coverage: float) -> tuple[float, str]:
    """The test sample's word count at which a `sample_words` sample covers `coverage` of its types (and how).

    The coverage falls as the test sample grows (a bigger one holds rarer types); outside the range it can take,
    the nearest end of [1, 10^9] words is returned, and the note says so.
    """
    def gap(log_words):
        return _coverage_by_sample(probs, math.exp(log_words), sample_words) - coverage

    low, high = 0.0, math.log(1e9)
    if gap(low) <= 0:
        return 1.0, "coverage at or above that of a one-word test sample: set to 1 word"
    if gap(high) >= 0:
        return 1e9, "coverage at or below that of a 10^9-word test sample: set to 10^9 words"
    return math.exp(brentq(gap, low, high, xtol=1e-6)), "solved from the human side's test-type coverage"


def estimate_missing_mass(human_rank_frequency: Sequence[int], human_sample_words: float, human_coverage: float,
                          synthetic_coverage: float) -> dict[str, Any]:
    """Test mass of the human word types a synthetic corpus lacks, from anonymous diagnostics (see MISSING_MASS_METHOD).

    human_rank_frequency: human train word counts by rank; human_sample_words and human_coverage: the size-matched
    human sample's word count and its test-type coverage; synthetic_coverage: the synthetic corpus's. Returns
    missing_mass = Σ_{r>m} p̂_r, covered_types m, test_words (the test sample's estimated size) and
    missing_mass_range (the estimate at twice and half that size).
    """
    counts = np.sort(np.asarray(human_rank_frequency, dtype=float))[::-1]
    counts = counts[counts > 0]
    if counts.size == 0 or not 0.0 <= synthetic_coverage <= 1.0 or not 0.0 < human_coverage <= 1.0:
        raise ValueError("needs human counts and coverages in [0, 1]")
    probs = counts / counts.sum()
    test_words, how = estimate_test_words(probs, human_sample_words, human_coverage)
    covered = _head_types(probs, test_words, synthetic_coverage)
    # The coverage curve is flat in the test size (a factor 2 moves it by about its sampling noise over ~10^3
    # types), so the range gives the estimate at half and twice the solved size.
    bounds = [float(probs[_head_types(probs, test_words * f, synthetic_coverage):].sum()) for f in (2.0, 0.5)]
    return {"missing_mass": float(probs[covered:].sum()), "missing_mass_range": bounds, "covered_types": covered,
            "test_words": test_words, "test_words_how": how}


def _head_types(probs: np.ndarray, test_words: float, synthetic_coverage: float) -> int:
    """The m whose ranks 1..m hold the share `synthetic_coverage` of a `test_words` sample's expected types."""
    if synthetic_coverage <= 0:
        return 0
    in_test = _seen_probability(probs, test_words)
    covered_share = np.cumsum(in_test) / in_test.sum()  # share of test types among ranks 1..m, m = 1..R
    return min(int(np.searchsorted(covered_share, synthetic_coverage - 1e-12)) + 1, probs.size)


def theory_tail(cutoff: int, beta: float, support: int) -> dict[str, Any]:
    """Σ_{i>k} p_i at the finite support, and its large-k form k^−(β−1)/((β−1)ζ(β))."""
    k = max(1, min(int(cutoff), int(support)))
    return {"cutoff": k, "tail_mass": tails.tail_mass(k, beta, support),
            "plateau_asymptotic": tails.plateau_asymptotic(k, beta)}


def _words_per_token(side: Mapping[str, Any]) -> float | None:
    words, tokens = side.get("words"), side.get("tokens")
    return words / tokens if words and tokens else None


def corpus_tails(diag: Mapping[str, Any], human_beta: float, sampling: Mapping[str, Any]) -> dict[str, Any]:
    """The new fit.json tails entries of one corpus from its diagnostics.json (see the module docstring).

    lexicon_size, words_per_token (human, synthetic), missing_mass (estimate_missing_mass), cutoffs and theory
    tail masses, perfect_teacher (PERFECT_TEACHER_METHOD); a {"why"} where an input is missing or β <= 1.
    """
    human, synthetic = diag.get("human") or {}, diag.get("synthetic") or {}
    ranks = human.get("word_rank_frequency") or []
    entry: dict[str, Any] = {"lexicon_size": len(ranks) or None, "lexicon_size_source": "human train word types",
                             "words_per_token": {"human": _words_per_token(human),
                                                 "synthetic": _words_per_token(synthetic)}}
    coverages = (human.get("human_test_type_coverage"), synthetic.get("human_test_type_coverage"))
    if not ranks or None in coverages or not human.get("words"):
        entry["missing"] = {"why": "diagnostics lack the human rank frequencies, words or test-type coverages"}
        return entry
    support = len(ranks)
    missing = estimate_missing_mass(ranks, human["words"], *coverages)
    entry["missing"] = {**missing, "method": MISSING_MASS_METHOD}
    try:
        cutoffs = {"coverage": max(1, missing["covered_types"])}
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
        bounds = t["missing"].get("missing_mass_range") or [None, None]
        lines.append(f"| {name} | {_shown(t['missing'].get('missing_mass'), '.4f')} ({_shown(bounds[0], '.4f')} – "
                     f"{_shown(bounds[1], '.4f')}) | {_shown(cov.get('cutoff'), 'd')} "
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
                    f"Zipf(β = {beta:.3f}, the human words' fit) over N = {support} words (the human train word "
                    f"types), at the budgets' word counts ({how}); 'fitted': the least-squares line through them.", ""]
