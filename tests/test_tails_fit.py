"""Known answers for pipeline/analysis/tails_fit.py: finite-support clean exponent, missing test mass, fit and report."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from pipeline.analysis import report_text, tails_fit
from pipeline.stages.fit import fit_tails
from pipeline.theory import tails


def test_local_exponent_at_a_huge_support_is_the_clean_exponent():
    # N = 10^7: the mass beyond N (∝ N^−(β−1)) is far below E(T) for β >= 1.5 and T <= 10^5; at β = 1.3 it
    # is not (N^−0.3 ≈ 0.008), which is why the reference language's 2,000 words matter.
    for beta in (1.5, 2.0, 3.0):
        local = tails_fit.local_exponent(np.array([1e3, 1e4, 1e5]), beta, support=10**7)
        assert local == pytest.approx(tails.clean_error_exponent(beta), abs=0.005)


def test_finite_support_steepens_the_exponent_as_t_reaches_the_last_ranks():
    beta, support = 1.3, 2000
    local = tails_fit.local_exponent(np.array([1e3, 1e4, 1e5]), beta, support)
    assert np.all(local > tails.clean_error_exponent(beta))  # E falls faster than T^−(1−1/β) ...
    assert np.all(np.diff(local) > 0)  # ... and ever faster: every type is seen, E ~ exp(−T·p_N)
    fitted = tails_fit.finite_support_exponent([1e3, 1e4, 1e5], beta, support)
    assert local[0] < fitted["fitted"] < local[-1]
    assert fitted["infinite_support"] == pytest.approx(1 - 1 / beta)


def test_missing_mass_is_zero_when_the_synthetic_corpus_holds_every_word():
    test_counts = {"a": 50, "b": 20, "c": 5}
    assert tails_fit.missing_test_mass(test_counts, ["c", "b", "a", "zz"]) == 0.0


def test_missing_mass_of_a_corpus_cut_at_rank_k_is_the_test_mass_beyond_k():
    ranked = [f"w{r}" for r in range(1, 101)]
    test_counts = {w: 1000 // r for r, w in enumerate(ranked, start=1)}
    k = 10
    beyond = sum(test_counts[w] for w in ranked[k:]) / sum(test_counts.values())
    assert tails_fit.missing_test_mass(test_counts, ranked[:k] + ["nonword"]) == pytest.approx(beyond)
    with pytest.raises(ValueError):
        tails_fit.missing_test_mass({}, ranked)


def _zipf_sample(probs, words, rng):
    return Counter(rng.choice(probs.size, size=words, p=probs).tolist())


def test_estimate_from_expected_coverages_recovers_the_test_size_and_the_missing_mass():
    probs = tails.zipf_probabilities(1.3, 2000)
    test_words, k = 15_000, 300  # the synthetic corpus holds exactly the 300 most frequent types (and non-words)
    in_test = 1 - (1 - probs) ** test_words
    human_coverage = tails_fit._coverage_by_sample(probs, test_words, 100_000)
    estimate = tails_fit.estimate_missing_mass(1e6 * probs, 100_000, human_coverage, in_test[:k].sum() / in_test.sum())
    assert estimate["test_words"] == pytest.approx(test_words, rel=1e-3)
    assert estimate["covered_types"] == k
    assert estimate["missing_mass"] == pytest.approx(tails.tail_mass(k, 1.3, 2000), rel=1e-6)
    low, high = estimate["missing_mass_range"]
    assert low < estimate["missing_mass"] < high


def test_estimate_from_sampled_coverages_brackets_the_exact_missing_mass():
    rng = np.random.default_rng(0)
    probs = tails.zipf_probabilities(1.3, 2000)
    train, test, matched = (_zipf_sample(probs, n, rng) for n in (300_000, 15_000, 100_000))
    k = 300
    human_coverage = len(set(test) & set(matched)) / len(test)
    synthetic_coverage = sum(1 for t in test if t < k) / len(test)
    exact = tails_fit.missing_test_mass(test, range(k))
    estimate = tails_fit.estimate_missing_mass(sorted(train.values(), reverse=True), 100_000, human_coverage,
                                               synthetic_coverage)
    # The human coverage's sampling noise moves the solved test size by ~2x here (30,781 for 15,000 words); the
    # range's upper end (at 15,390 words) then misses the test sample's own noise (0.0731 vs 0.0727 expected).
    assert estimate["missing_mass"] == pytest.approx(exact, abs=0.02)
    assert estimate["missing_mass_range"][0] <= exact <= estimate["missing_mass_range"][1] + 0.005


def test_estimate_ends_full_and_empty_coverage():
    counts = [1000 // r for r in range(1, 200)]
    assert tails_fit.estimate_missing_mass(counts, 5000, 0.95, 1.0)["missing_mass"] == pytest.approx(0.0, abs=1e-12)
    assert tails_fit.estimate_missing_mass(counts, 5000, 0.95, 0.0)["missing_mass"] == pytest.approx(1.0)


def test_theory_tail_scales_as_k_to_the_minus_beta_minus_one():
    beta = 1.5
    small, large = tails_fit.theory_tail(1000, beta, 10**7), tails_fit.theory_tail(2000, beta, 10**7)
    assert large["tail_mass"] / small["tail_mass"] == pytest.approx(2 ** -(beta - 1), rel=0.01)
    assert large["tail_mass"] == pytest.approx(large["plateau_asymptotic"], rel=0.02)


def _diagnostics(beta=1.3, support=2000, synthetic_coverage=0.5):
    counts = np.round(1e6 * tails.zipf_probabilities(beta, support)).astype(int)
    return {"human": {"word_rank_frequency": counts.tolist(), "words": 100_000, "tokens": 130_000,
                      "human_test_type_coverage": 0.98},
            "synthetic": {"word_rank_frequency": counts[:300].tolist(), "words": 100_000, "tokens": 131_000,
                          "human_test_type_coverage": synthetic_coverage}}


def test_fit_tails_keeps_its_entries_and_adds_the_finite_support_ones(tmp_path):
    (tmp_path / "g0").mkdir()
    (tmp_path / "g0" / "diagnostics.json").write_text(json.dumps(_diagnostics()))
    entry = fit_tails({"g0": tmp_path / "g0"}, {"temperature": 1.0, "top_p": 0.9})["g0"]
    assert {"human", "synthetic", "predicted_cutoff"} <= set(entry)  # the existing entries
    assert entry["lexicon_size"] == 2000
    assert entry["words_per_token"]["human"] == pytest.approx(100_000 / 130_000)
    assert 0 < entry["missing"]["missing_mass"] < 1
    top = entry["theory"]["top_p"]
    assert top["cutoff"] == tails.top_p_cutoff(0.9, entry["human"]["beta"], 2000)
    # A perfect teacher's 10^5 words cover the nucleus: it misses about the mass beyond the top-p cut.
    assert entry["perfect_teacher"]["missing_mass"] == pytest.approx(top["tail_mass"], rel=0.05)


def test_temperature_below_one_makes_a_perfect_teachers_sample_miss_more():
    diag = _diagnostics()
    full = tails_fit.corpus_tails(diag, 1.3, {"temperature": 1.0, "top_p": 1.0})
    cold = tails_fit.corpus_tails(diag, 1.3, {"temperature": 0.8, "top_p": 1.0})
    assert cold["perfect_teacher"]["missing_mass"] > full["perfect_teacher"]["missing_mass"]
    assert "top_p" not in full["theory"]


def test_corpus_tails_says_why_without_coverages():
    diag = _diagnostics()
    del diag["synthetic"]["human_test_type_coverage"]
    assert "why" in tails_fit.corpus_tails(diag, 1.3, {})["missing"]


def test_report_prints_missing_mass_gap_and_finite_support_exponent():
    entry = {"human": {"beta": 1.3}, "synthetic": {"beta": 1.6},
             **tails_fit.corpus_tails(_diagnostics(), 1.3, {"top_p": 0.9})}
    student = {"generation": 0, "budgets": [10_000, 40_000, 160_000],
               "measured_gaps": {"1": {"gap": 0.069, "budget": 160_000}},
               "excess": {"exponents": {"0": {"exponent": 0.121}, "1": {"exponent": 0.109}}}}
    text = "\n".join(report_text.tails({"tails": {"g0": entry}, "students": {"gpt2-tiny": student}}))
    assert "+0.0690 (gpt2-tiny, n = 160,000)" in text
    assert f"{entry['missing']['missing_mass']:.4f}" in text and f"{entry['theory']['top_p']['tail_mass']:.4f}" in text
    assert "0.231 | 0.121 | 0.109 |" in text  # 1 − 1/1.3 beside the measured exponents
    assert len(report_text.tails({"tails": {}})) == 0
