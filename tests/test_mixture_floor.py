"""The floor predicted from P and Q: P's exact token conditionals, the mixture's loss and gap against a
direct computation, the χ² expansion at small p, and `collapse floor` on a tiny run and its refusals.

Teachers here are stand-ins whose logits are a known function of P's exact conditionals (P itself, a
tilt of P, P smoothed with the uniform distribution), so Q is known at every context and every number
of the floor can be recomputed directly, token by token, in float64.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from hardening_cli import cli, isolated  # noqa: F401  (isolated: the autouse fixture)
from hardening_helpers import error_line, snapshot, tiny_args

from pipeline.data.reference import ReferenceLanguage
from pipeline.data.reference_tokens import ReferenceTokenModel
from pipeline.data.tokenizer import train_bpe_tokenizer
from pipeline.errors import ExitCode
from pipeline.lm.mixture_floor import floor_report, predicted_floor, score_documents
from pipeline.lm.sampling import SamplingSettings

FRACTIONS = (0.0, 0.01, 0.02, 0.5, 1.0)


@pytest.fixture(scope="module")
def language() -> ReferenceLanguage:
    return ReferenceLanguage(beta=1.3, lexicon_size=300, mean_sentence_words=4.0, mean_document_sentences=2.0, seed=0)


@pytest.fixture(scope="module")
def tokenizer(language, tmp_path_factory):
    return train_bpe_tokenizer(language.sample_documents(400, seed=0), 400, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def token_model(language, tokenizer) -> ReferenceTokenModel:
    return ReferenceTokenModel.from_tokenizer(language, tokenizer)


@pytest.fixture(scope="module")
def test_docs(language) -> list[str]:
    return language.sample_documents(40, seed=7)


def document_ids(tokenizer, documents: list[str]) -> list[list[int]]:
    return [tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for doc in documents]


def dense_log_p(token_model: ReferenceTokenModel, state, vocab: int) -> np.ndarray:
    ids, probs = token_model.next_distribution(state)
    log_p = np.full(vocab, -np.inf)
    log_p[ids] = np.log(probs)
    return log_p


# ---------------------------------------------------------------- P's token conditionals


def test_conditionals_sum_to_one_on_random_contexts(language, tokenizer, token_model):
    rng = np.random.default_rng(0)
    for ids in document_ids(tokenizer, language.sample_documents(30, seed=11)):
        state = token_model.start_state()
        cut = int(rng.integers(len(ids)))  # a random context: the document's first `cut` tokens
        for token in ids[:cut]:
            _, state = token_model.advance(state, token)
        support, probs = token_model.next_distribution(state)
        assert len(np.unique(support)) == len(support) and (probs > 0).all()
        assert abs(probs.sum() - 1.0) < 1e-12
        assert ids[cut] in support


def test_conditionals_multiply_to_the_document_probability(language, tokenizer, token_model, test_docs):
    log_probs, _ = token_model.token_log_probs(document_ids(tokenizer, test_docs))
    for doc, per_token in zip(test_docs, log_probs):
        assert per_token.sum() == pytest.approx(language.log_prob(doc), abs=1e-9)


def test_a_tokenizer_with_ambiguous_boundaries_keeps_every_parse():
    """Words a, ab, b spelt without spaces: "abb" is [ab, b] or [a, b, b]; P(tokens) sums both paths."""
    language = ReferenceLanguage(beta=1.3, lexicon_size=3, mean_sentence_words=2.0, mean_document_sentences=1.5)
    language.words, language.rank_of = ["a", "ab", "b"], {"a": 0, "ab": 1, "b": 2}

    def encode(texts):
        return [[ord(c) for c in text if c != " "] for text in texts]

    model = ReferenceTokenModel(language, encode, eos_id=0)
    for doc in language.sample_documents(40, seed=3):
        ids = encode([doc])[0] + [0]
        log_probs, supports = model.conditionals(ids)
        assert all(abs(probs.sum() - 1.0) < 1e-12 for _, probs in supports)
        assert log_probs.sum() == pytest.approx(math.log(_spaceless_probability(language, doc)), abs=1e-12)


def _spaceless_probability(language: ReferenceLanguage, doc: str) -> float:
    """P of every document whose text without spaces is doc's, by enumerating segmentations."""
    forms = {False: language.words, True: [w[0].upper() + w[1:] for w in language.words]}

    def sentence(text: str, first: bool) -> float:
        total = 0.0
        for rank, form in enumerate(forms[first]):
            if text.startswith(form):
                rest = text[len(form):]
                stop = language.q_words if not rest else (1 - language.q_words) * sentence(rest, False)
                total += language.word_probs[rank] * stop
        return total

    sentences = doc.replace(" ", "")[:-1].split(".")
    prob = (1 - language.q_sentences) ** (len(sentences) - 1) * language.q_sentences
    return prob * math.prod(sentence(s, True) for s in sentences)


# ---------------------------------------------------------------- the floor against a direct computation


class ExactTeacher(torch.nn.Module):
    """A stand-in teacher: logits = transform(ln P(· | document so far)), from P's exact conditionals.

    Each input row must start at a document's start token (the window holds the whole document)."""

    def __init__(self, token_model: ReferenceTokenModel, vocab: int, transform):
        super().__init__()
        self.token_model, self.vocab, self.transform = token_model, vocab, transform

    def forward(self, input_ids, logits_to_keep=None, use_cache=False):
        logits = torch.tensor(np.stack([self._row(row) for row in input_ids.tolist()]), dtype=torch.float32)
        return SimpleNamespace(logits=logits if logits_to_keep is None else logits[:, logits_to_keep.cpu()])

    def _row(self, ids: list[int]) -> np.ndarray:
        out = np.zeros((len(ids), self.vocab))
        state = self.token_model.start_state()
        for t in range(len(ids) - 1):
            if not state:  # past the document's EOS: padding, never a target
                break
            out[t] = self.transform(dense_log_p(self.token_model, state, self.vocab))
            _, state = self.token_model.advance(state, ids[t + 1])
        return out


def tilt(vocab: int, theta: float):
    direction = np.cos(1.7 * np.arange(vocab))
    return lambda log_p: log_p + theta * direction


def smooth(vocab: int, eps: float):
    return lambda log_p: np.log((1 - eps) * np.exp(log_p) + eps / vocab)


def floor_scores(language, tokenizer, token_model, docs, transform, sampling=None):
    vocab = len(tokenizer)
    window = max(len(ids) for ids in document_ids(tokenizer, docs)) + 1
    return score_documents(language, docs, ExactTeacher(token_model, vocab, transform), tokenizer, FRACTIONS,
                           window=window, sampling=sampling, batch_size=8, device="cpu")


@np.errstate(divide="ignore")  # ln 0 = -inf off P's support (and at p = 0 or 1), as intended
def direct_floor(language, tokenizer, token_model, docs, transform, temperature: float = 1.0) -> dict:
    """Every number of the floor from Q = softmax(transform(ln P) / temperature), token by token, in float64."""
    vocab = len(tokenizer)
    log_p_tokens, log_q_tokens, chi2, outside, log_q_docs = [], [], [], [], []
    expected = {p: 0.0 for p in FRACTIONS}
    for ids in document_ids(tokenizer, docs):
        state, log_q_doc = token_model.start_state(), 0.0
        for token in ids:
            p_dist = np.exp(dense_log_p(token_model, state, vocab))
            logits = transform(np.log(p_dist)) / temperature
            q_dist = np.exp(logits - logits.max())
            q_dist /= q_dist.sum()
            on = p_dist > 0
            log_p_tokens.append(math.log(p_dist[token]))
            log_q_tokens.append(math.log(q_dist[token]))
            log_q_doc += log_q_tokens[-1]
            chi2.append((((q_dist - p_dist) ** 2)[on] / p_dist[on]).sum())
            outside.append(q_dist[~on].sum())
            for p in FRACTIONS:
                expected[p] -= (p_dist[on] * np.log((1 - p) * p_dist[on] + p * q_dist[on]) - p_dist[on] * np.log(p_dist[on])).sum()
            _, state = token_model.advance(state, token)
        log_q_docs.append(log_q_doc)
    log_p_docs = np.array([language.log_prob(doc) for doc in docs])
    n = len(log_p_tokens)
    token_loss = {p: -np.log((1 - p) * np.exp(log_p_tokens) + p * np.exp(log_q_tokens)).sum() / n for p in FRACTIONS}
    doc_loss = {p: -np.logaddexp(np.log1p(-p) + log_p_docs if p < 1 else -np.inf,
                                 np.log(p) + np.array(log_q_docs) if p > 0 else -np.inf).sum() / n for p in FRACTIONS}
    return {"entropy": -log_p_docs.sum() / n, "token_loss": token_loss, "document_loss": doc_loss,
            "chi2": np.mean(chi2), "outside_mass": np.mean(outside), "expected_gap": {p: expected[p] / n for p in FRACTIONS}}


def test_a_teacher_equal_to_p_has_no_gap(language, tokenizer, token_model, test_docs):
    scores = floor_scores(language, tokenizer, token_model, test_docs, lambda log_p: log_p)
    token = floor_report(scores, "token")
    window = max(len(ids) for ids in document_ids(tokenizer, test_docs)) + 1
    teacher = ExactTeacher(token_model, len(tokenizer), lambda log_p: log_p)
    document = predicted_floor(language, test_docs, teacher, tokenizer, FRACTIONS, level="document", window=window,
                               device="cpu")
    assert token["entropy"] == pytest.approx(language.total_nats(test_docs) / scores.tokens, rel=1e-12)
    assert token["chi2"] < 1e-10 and token["outside_mass"] == 0.0
    for report in (token, document):
        for p, row in report["per_fraction"].items():
            assert abs(row["gap"]) < 1e-6, (report["level"], p, row)
            assert row["loss"] == pytest.approx(report["entropy"], abs=1e-6)
    assert token["per_fraction"]["0"]["gap"] == 0.0 and document["per_fraction"]["0"]["gap"] == 0.0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_a_tilted_teacher_gives_the_directly_computed_floor(language, tokenizer, token_model, test_docs, temperature):
    transform = tilt(len(tokenizer), 0.8)
    scores = floor_scores(language, tokenizer, token_model, test_docs, transform, SamplingSettings(temperature=temperature))
    direct = direct_floor(language, tokenizer, token_model, test_docs, transform, temperature)
    token, document = floor_report(scores, "token"), floor_report(scores, "document")
    assert token["entropy"] == pytest.approx(direct["entropy"], rel=1e-12)
    assert token["chi2"] == pytest.approx(direct["chi2"], rel=1e-5)
    assert token["outside_mass"] == pytest.approx(direct["outside_mass"], abs=1e-7)
    for p in FRACTIONS:
        key = f"{p:g}"
        assert token["per_fraction"][key]["loss"] == pytest.approx(direct["token_loss"][p], abs=1e-5)
        assert document["per_fraction"][key]["loss"] == pytest.approx(direct["document_loss"][p], abs=1e-5)
        assert token["per_fraction"][key]["expected_gap"] == pytest.approx(direct["expected_gap"][p], abs=1e-6)
    assert token["per_fraction"]["1"]["gap"] > 0.01  # the tilt is large enough for the checks to bite


@pytest.mark.parametrize("name, teacher", [("tilt", lambda v: tilt(v, 0.3)), ("smoothed", lambda v: smooth(v, 0.05))])
def test_the_chi2_expansion_matches_the_exact_gap_at_small_p(language, tokenizer, token_model, test_docs, name, teacher):
    scores = floor_scores(language, tokenizer, token_model, test_docs, teacher(len(tokenizer)))
    report = floor_report(scores, "token")
    outside_is_zero = name == "tilt"  # a tilt keeps P's support; smoothing puts mass everywhere
    assert (report["outside_mass"] == 0.0) == outside_is_zero
    for p in ("0.01", "0.02"):
        row = report["per_fraction"][p]
        assert row["approx_gap"] == pytest.approx(row["expected_gap"], rel=0.05), (name, p, row)
        if outside_is_zero:
            assert row["chi2_approx_gap"] == row["approx_gap"]
    if name == "tilt":  # the 5% tolerance is tight enough to see the tilt's higher orders at p = 1
        row = report["per_fraction"]["1"]
        assert abs(row["approx_gap"] - row["expected_gap"]) > 0.05 * row["expected_gap"]


# ---------------------------------------------------------------- collapse floor


def _floor_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "tiny" / "floor"


def test_floor_refuses_a_corpus_whose_p_is_unknown(tmp_path, capsys):
    from pipeline.config import load_config
    from pipeline.orchestration.cli import save_resolved_config

    args = tiny_args(tmp_path, "corpus.source=builtin:wikipedia")
    save_resolved_config(load_config(Path(args[0]), args[2::2]))
    run_dir = tmp_path / "runs" / "tiny"
    before = snapshot(run_dir)
    rc, out, err = cli(capsys, "floor", run_dir)
    assert rc == ExitCode.BAD_INPUT and out == ""
    assert "corpus.source is builtin:wikipedia" in error_line(err) and "builtin:reference-language" in err
    assert snapshot(run_dir) == before

    rc, _, err = cli(capsys, "floor", tmp_path / "nowhere")
    assert rc == ExitCode.BAD_INPUT and "not a run directory" in error_line(err)


def test_floor_on_a_tiny_run(tmp_path, capsys):
    args = tiny_args(tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    rc, _, err = cli(capsys, "run", *args, "--stages", "prepare", "--no-progress")
    assert rc == 0, err
    before = snapshot(run_dir)
    rc, _, err = cli(capsys, "floor", run_dir)
    assert rc == ExitCode.BAD_INPUT and "teacher/g0 is pending, not finished" in error_line(err)
    assert "--stages prepare,teacher" in err and snapshot(run_dir) == before

    rc, _, err = cli(capsys, "run", *args, "--stages", "prepare,teacher", "--no-progress")
    assert rc == 0, err
    rc, out, err = cli(capsys, "floor", run_dir)
    path = _floor_dir(tmp_path) / "prediction.json"
    assert rc == 0 and out.strip() == str(path), err
    prediction = json.loads(path.read_text())
    teacher = json.loads((run_dir / "teacher" / "g0" / "manifest.json").read_text())
    prepare = json.loads((run_dir / "prepare" / "manifest.json").read_text())["metrics"]
    assert prediction["teacher"]["fingerprint"] == teacher["fingerprint"] and prediction["created"].endswith("Z")
    for level in ("token", "document"):
        report = prediction[level]
        assert report["entropy"] == pytest.approx(prepare["reference"]["test"]["nats_per_token"], rel=1e-12)
        assert report["tokens"] == prepare["splits"]["test"]["tokens"]
        assert sorted(report["per_fraction"]) == ["0", "0.5", "1"] and report["per_fraction"]["0"]["gap"] == 0.0
        assert report["per_fraction"]["1"]["loss"] == pytest.approx(report["teacher_loss"], rel=1e-9)
    # The teacher's own test loss (evaluate's windows over the stream) is Q's cross-entropy up to context.
    assert prediction["token"]["teacher_loss"] == pytest.approx(teacher["metrics"]["test"]["loss"], rel=0.01)
    assert 0 < prediction["document"]["per_fraction"]["0.5"]["gap"] < prediction["token"]["per_fraction"]["0.5"]["gap"]

    kept = path.read_bytes()
    rc, _, err = cli(capsys, "floor", run_dir)
    assert rc == 0 and path.read_bytes() == kept and "kept" in err
    earlier = json.loads(kept)
    earlier["teacher"]["fingerprint"] = "0" * 64  # as if made for a teacher since retrained
    path.write_text(json.dumps(earlier))
    rc, _, err = cli(capsys, "floor", run_dir)
    assert rc == 0, err
    aside = [p.name for p in _floor_dir(tmp_path).iterdir() if p.name != "prediction.json"]
    assert len(aside) == 1 and aside[0].startswith("prediction-000000000000-")
    assert json.loads((_floor_dir(tmp_path) / aside[0]).read_text()) == earlier
    assert json.loads(path.read_text())["teacher"]["fingerprint"] == teacher["fingerprint"]
