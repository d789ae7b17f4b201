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


def test_theory_tail_scales_as_k_to_the_minus_beta_minus_one():
    beta = 1.5
    small, large = tails_fit.theory_tail(1000, beta, 10**7), tails_fit.theory_tail(2000, beta, 10**7)
    assert large["tail_mass"] / small["tail_mass"] == pytest.approx(2 ** -(beta - 1), rel=0.01)
    assert large["tail_mass"] == pytest.approx(large["plateau_asymptotic"], rel=0.02)


def _diagnostics(beta=1.3, support=2000):
    counts = np.round(1e6 * tails.zipf_probabilities(beta, support)).astype(int)
    return {"human": {"word_rank_frequency": counts.tolist(), "words": 100_000, "tokens": 130_000},
            "synthetic": {"word_rank_frequency": counts[:300].tolist(), "words": 100_000, "tokens": 131_000}}


def _words(support=2000, k=300):
    """Human words w1..wN with Zipf(1.3) test counts; a synthetic corpus holding w1..wk and two non-words."""
    probs = tails.zipf_probabilities(1.3, support)
    test = Counter({f"w{r}": int(round(1e6 * p)) for r, p in enumerate(probs, start=1)})
    return {"test": test, "train_types": set(test), "lexicon_size": support, "lexicon_size_source": "test",
            "synthetic_types": {f"w{r}" for r in range(1, k + 1)} | {"zork", "blib"}}


def test_fit_tails_keeps_its_entries_and_adds_the_finite_support_ones(tmp_path, monkeypatch):
    (tmp_path / "g0").mkdir()
    (tmp_path / "g0" / "diagnostics.json").write_text(json.dumps(_diagnostics()))
    (tmp_path / "g0" / "text.jsonl").write_text("".join(json.dumps({"text": text, "heldout": held}) + "\n" for text, held
                                                       in [("w1 w2 w3 zork", False), ("w4 w5", True)]))
    human = {k: v for k, v in _words().items() if k != "synthetic_types"}
    monkeypatch.setattr("pipeline.stages.fit.human_words", lambda prepare_dir: human)
    entry = fit_tails({"g0": tmp_path / "g0"}, {"temperature": 1.0, "top_p": 0.9}, tmp_path / "prepare")["g0"]
    assert {"human", "synthetic", "predicted_cutoff"} <= set(entry)  # the existing entries
    assert entry["lexicon_size"] == 2000
    assert entry["words_per_token"]["human"] == pytest.approx(100_000 / 130_000)
    # the corpus's training text holds w1..w3 (w4, w5 are in a held-out document): it misses all but their mass
    assert entry["missing"]["covered_types"] == 3
    assert entry["missing"]["missing_mass"] == pytest.approx(tails.tail_mass(3, 1.3, 2000), rel=1e-4)
    top = entry["theory"]["top_p"]
    assert top["cutoff"] == tails.top_p_cutoff(0.9, entry["human"]["beta"], 2000)
    # A perfect teacher's 10^5 words cover the nucleus: it misses about the mass beyond the top-p cut.
    assert entry["perfect_teacher"]["missing_mass"] == pytest.approx(top["tail_mass"], rel=0.05)


def test_missing_mass_of_a_corpus_holding_the_head_is_the_tail_beyond_it():
    entry = tails_fit.corpus_tails(_diagnostics(), 1.3, {"temperature": 1.0, "top_p": 1.0}, _words(k=300))
    assert entry["missing"]["covered_types"] == 300
    assert entry["missing"]["missing_mass"] == pytest.approx(entry["theory"]["coverage"]["tail_mass"], rel=1e-4)


def test_temperature_below_one_makes_a_perfect_teachers_sample_miss_more():
    diag = _diagnostics()
    full = tails_fit.corpus_tails(diag, 1.3, {"temperature": 1.0, "top_p": 1.0}, _words())
    cold = tails_fit.corpus_tails(diag, 1.3, {"temperature": 0.8, "top_p": 1.0}, _words())
    assert cold["perfect_teacher"]["missing_mass"] > full["perfect_teacher"]["missing_mass"]
    assert "top_p" not in full["theory"]


def test_report_prints_missing_mass_gap_and_finite_support_exponent():
    entry = {"human": {"beta": 1.3}, "synthetic": {"beta": 1.6},
             **tails_fit.corpus_tails(_diagnostics(), 1.3, {"top_p": 0.9}, _words())}
    student = {"generation": 0, "budgets": [10_000, 40_000, 160_000],
               "measured_gaps": {"1": {"gap": 0.069, "budget": 160_000}},
               "excess": {"exponents": {"0": {"exponent": 0.121}, "1": {"exponent": 0.109}}}}
    text = "\n".join(report_text.tails({"tails": {"g0": entry}, "students": {"gpt2-tiny": student}}))
    assert "+0.0690 (gpt2-tiny, n = 160,000)" in text
    assert f"{entry['missing']['missing_mass']:.4f}" in text and f"{entry['theory']['top_p']['tail_mass']:.4f}" in text
    assert "0.231 | 0.121 | 0.109 |" in text  # 1 − 1/1.3 beside the measured exponents
    assert len(report_text.tails({"tails": {}})) == 0
