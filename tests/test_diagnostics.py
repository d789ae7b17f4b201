"""pipeline.lm.diagnostics on text whose statistics are known exactly (sampled from a Zipf law, or built by hand)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pipeline.lm import diagnostics as D


def zipf_sample(s: float, vocabulary: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sample of type ids 0..V-1 where id r-1 has probability ~ r^-s, the exact probabilities)."""
    p = np.arange(1, vocabulary + 1, dtype=float) ** -s
    p /= p.sum()
    return np.random.default_rng(seed).choice(vocabulary, size=n, p=p), p


@pytest.mark.parametrize("s", [0.8, 1.1, 1.5])
def test_zipf_exponent_recovers_the_exponent_of_an_exact_zipf_sample(s):
    sample, _ = zipf_sample(s, vocabulary=5000, n=200_000)
    assert D.zipf_exponent(Counter(sample.tolist())) == pytest.approx(s, abs=0.03)


def test_zipf_exponent_needs_three_types_above_the_noise_floor():
    assert D.zipf_exponent(Counter({"a": 100, "b": 3, "c": 1})) is None
    assert D.zipf_exponent([1000, 500, 333, 250]) == pytest.approx(1.0, abs=0.01)  # f = 1000 / r


def test_rank_frequency_is_sorted_counts():
    assert D.rank_frequency(Counter("abracadabra")).tolist() == [5, 2, 2, 1, 1]


def test_distinct_n_counts_ngrams_within_documents_only():
    docs = [["a", "b", "a", "b"], ["a", "b"]]
    assert D.distinct_n(docs, 1) == pytest.approx(2 / 6)
    assert D.distinct_n(docs, 2) == pytest.approx(2 / 4)  # ab, ba, ab | ab: no (b, a) across documents
    assert D.distinct_n(docs, 3) == pytest.approx(2 / 2)
    assert D.distinct_n([["a"]], 2) is None


def test_distinct_n_of_an_iid_sample_matches_its_expectation():
    # Uniform over V types: E[distinct types in n draws] = V (1 - (1 - 1/V)^n).
    vocabulary, n = 1000, 3000
    sample = np.random.default_rng(1).integers(0, vocabulary, size=n).tolist()
    expected = vocabulary * (1 - (1 - 1 / vocabulary) ** n) / n
    assert D.distinct_n([sample], 1) == pytest.approx(expected, rel=0.02)


def test_distinct_via_the_evaluate_module_agrees_with_the_builtin():
    from pipeline.stages.generate import distinct_via_evaluate

    rng = np.random.default_rng(2)
    docs = [rng.integers(0, 30, size=rng.integers(0, 40)).tolist() for _ in range(50)]
    words = [[f"w{t}" for t in doc] for doc in docs]
    distinct = distinct_via_evaluate()
    for corpus in (docs, words):
        got = distinct(corpus)
        for n in (1, 2, 3):
            assert got[f"distinct_{n}"] == pytest.approx(D.distinct_n(corpus, n))


def test_tail_mass_of_a_zipf_sample_is_the_exact_tail_probability():
    sample, p = zipf_sample(1.2, vocabulary=3000, n=300_000, seed=3)
    ranks = {t: t + 1 for t in range(3000)}  # the true ranking
    beyond, unseen = D.tail_mass(Counter(sample.tolist()), ranks, tail_rank=100)
    assert beyond == pytest.approx(p[100:].sum(), abs=0.003)
    assert unseen == 0.0


def test_tail_mass_counts_types_missing_from_the_reference_as_tail_and_unseen():
    counts = Counter({"the": 6, "cat": 2, "zyx": 2})
    beyond, unseen = D.tail_mass(counts, {"the": 1, "cat": 2}, tail_rank=1)
    assert (beyond, unseen) == (pytest.approx(0.4), pytest.approx(0.2))


def test_reference_ranks_break_ties_by_first_occurrence():
    assert D.reference_ranks(Counter(["b", "a", "a", "b", "c"])) == {"b": 1, "a": 2, "c": 3}


def test_type_coverage_and_words():
    assert D.words("Don't stop—the cat's 2 hats_off!") == ["don't", "stop", "the", "cat's", "2", "hats", "off"]
    assert D.type_coverage(["a", "b", "b"], {"a", "c", "d", "e"}) == pytest.approx(0.25)


def _texts(sample: np.ndarray, per_doc: int) -> list[str]:
    return [" ".join(f"w{t}" for t in sample[i:i + per_doc]) for i in range(0, len(sample), per_doc)]


def _char_tokenize(texts):
    return [[ord(c) for c in text] for text in texts]


def test_corpus_diagnostics_of_human_text_against_itself_matches_the_human_side():
    sample, _ = zipf_sample(1.1, vocabulary=2000, n=60_000, seed=4)
    human = _texts(sample, 50)
    test, _ = zipf_sample(1.1, vocabulary=2000, n=5_000, seed=5)
    synthetic = human[:300]  # exactly the size-matched human prefix
    result = D.corpus_diagnostics(synthetic, human, _texts(test, 50), _char_tokenize, tail_rank=200)
    syn, hum = result["synthetic"], result["human"]
    for key in ("distinct_1", "distinct_2", "distinct_3", "human_test_type_coverage", "words", "word_types"):
        assert syn[key] == pytest.approx(hum[key]), key
    assert syn["zipf_word"] == pytest.approx(1.1, abs=0.06) and hum["zipf_word"] == pytest.approx(1.1, abs=0.03)
    assert syn["mean_document_words"] == pytest.approx(50)
    assert syn["tail_mass"] == pytest.approx(hum["tail_mass"], abs=0.03)  # in-sample vs test split, same law
    assert syn["word_rank_frequency"][0] >= syn["word_rank_frequency"][-1]
    assert "word_rank_frequency" not in D.without_arrays(result)["synthetic"]


def test_corpus_diagnostics_sees_a_thinned_tail():
    """Text from the same law at temperature 0.5 (exponent 2.2): fewer types, less tail, steeper Zipf."""
    human_sample, _ = zipf_sample(1.1, vocabulary=2000, n=60_000, seed=6)
    thin_sample, _ = zipf_sample(2.2, vocabulary=2000, n=15_000, seed=7)
    result = D.corpus_diagnostics(_texts(thin_sample, 50), _texts(human_sample, 50), _texts(human_sample[:5000], 50),
                                  _char_tokenize, tail_rank=100)
    syn, hum = result["synthetic"], result["human"]
    assert syn["zipf_word"] > hum["zipf_word"] + 0.5
    assert syn["tail_mass"] < hum["tail_mass"] / 3
    assert syn["word_types"] < hum["word_types"] / 2
    assert syn["distinct_1"] < hum["distinct_1"] and syn["human_test_type_coverage"] < hum["human_test_type_coverage"]
