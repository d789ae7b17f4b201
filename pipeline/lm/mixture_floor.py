"""The loss floor of a student that learns the mixture (1 - p)·P + p·Q, from P and Q alone.

On `builtin:reference-language` the source P is known exactly and the teacher Q is a model we hold, so
the cross-entropy on human test text of a learner that has learnt the mixture perfectly can be
computed before any student trains. Two learners, two levels at which the mixture is taken:

- document level, the Bayes-optimal learner with unlimited context: it models the mixture of the two
  document distributions, loss = -Σ_docs ln((1 - p)·P(x) + p·Q(x)) / Σ tokens, with ln P(x) exact and
  ln Q(x) the teacher's summed token log-probabilities (log-space throughout, no underflow). It infers
  from the text which source wrote a document, so on human text its gap stays below -ln(1 - p) per
  document: a lower bound for any student.
- token level (`level="token"`), a learner that mixes next-token distributions with fixed weights
  without inferring the source, closer to what a small student represents: loss =
  -Σ_t ln((1 - p)·P(x_t | x_<t) + p·Q(x_t | x_<t)) / Σ tokens, with P's exact token conditionals
  (pipeline/data/reference_tokens.py).

Both are averaged over every token of the human test documents, EOS included (as evaluate and
prepare's exact entropy count them); p = 0 gives the exact entropy H of the test split at both
levels. Gaps are computed as -ln((1 - p) + p·Q/P) per token (or document), not as a difference of two
losses, so small gaps keep their digits.

Small-p expansion (token level): per context, E_P[-ln(1 + p(Q/P - 1))] = p·m + p²·χ²/2 + O(p³), where
χ² = Σ_{v: P(v)>0} (Q(v) - P(v))²/P(v) is χ²(Q‖P) on P's support and m is Q's mass outside P's
support (non-words, other tokenisations: a linear term the linear theory has no analogue of).
`chi2_approx_gap` is p²·χ²/2, the analogue of the linear theory's p²c²; `approx_gap` adds p·m.
Both average the exact per-context χ² and m over the test contexts, and are compared with
`expected_gap`: the same expectation over the next token computed exactly at each test context
(free of the noise of which token the test text happened to contain), next to `gap` on the text itself.

Q is the distribution the synthetic corpus was drawn from: the teacher's next-token distribution
after the sampling warpers (temperature, top-k, top-p; pipeline/lm/sampling.py), given the document so
far from the start token, in windows of `window` tokens as evaluate cuts them. Not modelled: the cut at
generate.max_new_tokens, the repetition penalty and min_new_tokens, and other tokenisations of the
same text (the corpus is decoded and re-tokenised before students see it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.data.reference import ReferenceLanguage
from pipeline.data.reference_tokens import ReferenceTokenModel
from pipeline.errors import UserError
from pipeline.lm.evaluation import IGNORE, stream_windows, window_logits
from pipeline.lm.sampling import SamplingSettings, start_token_id

LEVELS = ("token", "document")


@dataclass
class FloorScores:
    """Everything the floor needs, per test token (N) and document (D); sums are over the test split."""

    fractions: tuple[float, ...]
    entropy_nats: float                     # -Σ ln P(doc), exact
    doc_offsets: np.ndarray                 # (D + 1,): document d's tokens are [offsets[d], offsets[d + 1])
    log_p_docs: np.ndarray                  # (D,) ln P(doc), exact
    log_q: np.ndarray                       # (N,) ln Q(x_t | x_<t)
    log_p: np.ndarray | None = None         # (N,) ln P(x_t | x_<t); None: document level only
    chi2: np.ndarray | None = None          # (N,) χ²(Q‖P) on P's support, per context
    outside_mass: np.ndarray | None = None  # (N,) Q's mass where P is 0, per context
    expected_gap: dict[float, float] = field(default_factory=dict)  # p -> Σ_contexts E_P[-ln((1-p) + pQ/P)]

    @property
    def tokens(self) -> int:
        return int(self.doc_offsets[-1])


def predicted_floor(language: ReferenceLanguage, documents: Sequence[str], model, tokenizer,
                    fractions: Sequence[float], *, level: str = "token", window: int,
                    sampling: SamplingSettings | None = None, batch_size: int = 16, device=None) -> dict[str, Any]:
    """The mixture's cross-entropy on `documents` for every p in `fractions`, and its gap over H (JSON-able).

    {"level", "entropy", "tokens", "documents", "teacher_loss", ["chi2", "outside_mass",]
     "per_fraction": {"0.5": {"loss", "gap"[, "expected_gap", "chi2_approx_gap", "approx_gap"]}}}
    (the bracketed keys at the token level). `window`: the teacher's context (the run's block size).
    """
    scores = score_documents(language, documents, model, tokenizer, fractions, token_level=level == "token",
                             window=window, sampling=sampling, batch_size=batch_size, device=device)
    return floor_report(scores, level)


def score_documents(language: ReferenceLanguage, documents: Sequence[str], model, tokenizer,
                    fractions: Sequence[float], *, token_level: bool = True, window: int,
                    sampling: SamplingSettings | None = None, batch_size: int = 16, device=None) -> FloorScores:
    """One teacher pass over the test documents: what `floor_report` needs at either level."""
    from pipeline.data.packing import plain_backend

    fractions = _checked_fractions(fractions)
    if not documents:
        raise UserError("floor: the test split has no documents")
    eos = int(tokenizer.eos_token_id)
    backend = plain_backend(tokenizer)
    ids = [e.ids + [eos] for e in backend.encode_batch_fast(list(documents), add_special_tokens=False)]
    log_p_docs = np.array([language.log_prob(doc) for doc in documents])
    if not np.isfinite(log_p_docs).all():
        raise UserError("floor: a test document is not text of the reference language (ln P = -inf); "
                        "the test split must come from corpus.reference")
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])])
    log_p = supports = None
    if token_level:
        per_doc, per_doc_supports = ReferenceTokenModel.from_tokenizer(language, tokenizer).token_log_probs(ids)
        log_p = np.concatenate(per_doc)
        supports = [support for doc in per_doc_supports for support in doc]
        if not math.isclose(math.fsum(log_p), math.fsum(log_p_docs), rel_tol=1e-9):  # what `loss = H + gap` rests on
            raise AssertionError("P's token conditionals do not multiply to the documents' probabilities")
    scores = FloorScores(fractions, -math.fsum(log_p_docs), offsets, log_p_docs, np.zeros(0), log_p=log_p)
    _teacher_pass(scores, model, ids, supports, window=window, start_id=start_token_id(tokenizer),
                  sampling=sampling or SamplingSettings(), batch_size=batch_size, device=device)
    return scores


def floor_report(scores: FloorScores, level: str = "token") -> dict[str, Any]:
    """The prediction at one level (see the module docstring), as JSON-able numbers (None: infinite)."""
    if level not in LEVELS:
        raise UserError(f"floor level: {level!r} is not valid; valid: {', '.join(LEVELS)}")
    if level == "token" and scores.log_p is None:
        raise UserError("floor level: token needs P's token conditionals; score the documents with token_level=True")
    n_tokens = scores.tokens
    entropy = scores.entropy_nats / n_tokens
    report: dict[str, Any] = {"level": level, "entropy": entropy, "tokens": n_tokens,
                              "documents": len(scores.log_p_docs), "teacher_loss": _finite(-scores.log_q.sum() / n_tokens)}
    if level == "document":
        log_ratios = _doc_sums(scores) - scores.log_p_docs
        report["per_fraction"] = {f"{p:g}": _loss_and_gap(entropy, log_ratios, p, n_tokens) for p in scores.fractions}
        return report
    chi2, outside = float(scores.chi2.mean()), float(scores.outside_mass.mean())
    report.update(chi2=chi2, outside_mass=outside)
    per_fraction = {}
    for p in scores.fractions:
        row = _loss_and_gap(entropy, scores.log_q - scores.log_p, p, n_tokens)
        row.update(expected_gap=_finite(scores.expected_gap[p] / n_tokens), chi2_approx_gap=p * p * chi2 / 2,
                   approx_gap=p * outside + p * p * chi2 / 2)
        per_fraction[f"{p:g}"] = row
    report["per_fraction"] = per_fraction
    return report


def _loss_and_gap(entropy: float, log_ratios: np.ndarray, p: float, n_tokens: int) -> dict[str, float | None]:
    gap = mixture_gap_nats(log_ratios, p) / n_tokens
    return {"loss": _finite(entropy + gap), "gap": _finite(gap)}


def mixture_gap_nats(log_ratios: np.ndarray, p: float) -> float:
    """Σ -ln((1 - p) + p·r) over the entries, r = Q/P given as ln r: the mixture's loss above P's, in nats."""
    with np.errstate(divide="ignore"):
        terms = np.logaddexp(np.log1p(-p), np.log(p) + np.asarray(log_ratios, dtype=np.float64))
    return 0.0 - math.fsum(terms)  # 0.0 - x: a zero gap is 0.0, never -0.0


def _doc_sums(scores: FloorScores) -> np.ndarray:
    """ln Q(doc) per document: the teacher's token log-probabilities summed in float64."""
    return np.add.reduceat(scores.log_q, scores.doc_offsets[:-1])


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _checked_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    values = tuple(sorted({float(p) for p in fractions}))
    bad = [p for p in values if not 0.0 <= p <= 1.0]
    if not values or bad:
        raise UserError(f"floor fractions: {list(fractions)} is not valid; valid: synthetic fractions in [0, 1]")
    return values


# ---------------------------------------------------------------- the teacher


@torch.no_grad()
def _teacher_pass(scores: FloorScores, model, ids: list[list[int]], supports: list | None, *, window: int,
                  start_id: int, sampling: SamplingSettings, batch_size: int, device) -> None:
    """Fill ln Q of every test token (and the χ² terms against P's supports) from the teacher's logits."""
    windows = [stream_windows(np.asarray(x, dtype=np.int64), window, start_id) for x in ids]
    inputs = torch.cat([w.inputs for w in windows])
    targets = torch.cat([w.targets for w in windows])
    device = torch.device(device) if device is not None else next(model.parameters()).device
    warpers = sampling.warpers()
    log_q, chi2, outside = [], [], []
    expected = {p: 0.0 for p in scores.fractions}
    done = 0
    was_training = model.training
    model.eval()
    for start in range(0, len(inputs), batch_size):
        batch_targets = targets[start:start + batch_size]
        keep = batch_targets != IGNORE
        logits = window_logits(model, inputs[start:start + batch_size].to(device)).float()[keep.to(device)]
        for warper in warpers:  # temperature / top-k / top-p read only the scores
            logits = warper(None, logits)
        log_probs = torch.log_softmax(logits, dim=-1)
        batch_ids = batch_targets[keep].to(device)
        log_q.append(log_probs.gather(1, batch_ids[:, None])[:, 0].double().cpu().numpy())
        if supports is not None:
            terms = _support_terms(log_probs, supports[done:done + len(batch_ids)], scores.fractions)
            chi2.append(terms[0])
            outside.append(terms[1])
            for p, total in terms[2].items():
                expected[p] += total
        done += len(batch_ids)
    model.train(was_training)
    scores.log_q = np.concatenate(log_q)
    if supports is not None:
        scores.chi2, scores.outside_mass, scores.expected_gap = np.concatenate(chi2), np.concatenate(outside), expected


def _support_terms(log_q: torch.Tensor, supports: list[tuple[np.ndarray, np.ndarray]],
                   fractions: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, dict[float, float]]:
    """Per context: χ² on P's support, Q's mass off it, and Σ over contexts of E_P[-ln((1-p) + pQ/P)] per p."""
    width = max(len(ids) for ids, _ in supports)
    index = np.zeros((len(supports), width), dtype=np.int64)
    p_mat = np.ones((len(supports), width))  # padding: P = 1 with mask 0 keeps every ratio finite
    mask = np.zeros((len(supports), width), dtype=bool)
    for row, (ids, probs) in enumerate(supports):
        index[row, :] = ids[0]  # padding repeats a support id: masking it twice below changes nothing
        index[row, :len(ids)], p_mat[row, :len(ids)], mask[row, :len(ids)] = ids, probs, True
    index_t = torch.from_numpy(index).to(log_q.device)
    log_q_support = log_q.gather(1, index_t).double().cpu().numpy()
    off_support = log_q.scatter(1, index_t, float("-inf"))
    outside = torch.logsumexp(off_support.double(), dim=-1).exp().cpu().numpy()
    q_support = np.exp(log_q_support)
    chi2 = np.where(mask, (q_support - p_mat) ** 2 / p_mat, 0.0).sum(axis=1)
    expected = {}
    for p in fractions:
        with np.errstate(divide="ignore"):
            terms = np.logaddexp(np.log1p(-p), np.log(p) + log_q_support - np.log(p_mat))
        expected[p] = float(-np.where(mask, p_mat * terms, 0.0).sum())
    return chi2, outside, expected
