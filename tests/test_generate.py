"""Sampling (pipeline/lm/sampling.py) and the generate stage.

Most checks use a GPT-2 whose next-token distribution is KNOWN: the final layer norm is zeroed with
bias e_0 and column 0 of the (tied) embedding holds log p, so the logits are log p at every position
whatever the context. Temperature, top-k, top-p, EOS and the length limits then have exact expected
effects. Runtime on 2 CPU cores shared with other jobs (load average ~4): ~2 min for the sampling tests,
~1.5 min for the stage tests through the runner; a fraction of that on an idle machine.
"""

from __future__ import annotations

import copy
import filecmp
import json
import shutil
import threading
from collections import Counter

import numpy as np
import pytest
import torch

from generate_helpers import EOS, known_distribution, run_pipeline, unigram_model
from pipeline.lm import diagnostics as D
from pipeline.lm import sampling as S
from pipeline.lm import sampling_device as SD


@pytest.fixture(scope="module")
def p():
    return known_distribution()


@pytest.fixture(scope="module")
def model(p):
    return unigram_model(p)


def sample(model, target=10_000, batch_size=256, seed=0, **settings):
    settings.setdefault("max_new_tokens", 64)
    return S.sample_documents(model, S.SamplingSettings(**settings), S.PromptSampler(EOS), target_tokens=target,
                              eos_id=EOS, pad_id=EOS, seed=seed, batch_size=batch_size, progress=False)


def token_counts(result) -> np.ndarray:
    return np.bincount(np.concatenate([np.asarray(d) for d in result.documents]), minlength=200)


# ---------------------------------------------------------------- the distribution sampled


def test_samples_follow_the_model_distribution_and_stop_at_eos(model, p):
    result = sample(model, target=30_000)
    freq = token_counts(result) / result.kept_tokens
    assert freq[EOS] == 0, "EOS ends a document and is never kept"
    assert np.abs(freq[1:] - p[1:] / p[1:].sum()).max() < 0.008
    # Length until EOS is geometric, cut at max_new_tokens=64; empty documents (EOS first) are dropped.
    e, k = p[EOS], np.arange(1, 65)
    length_probability = np.where(k < 64, (1 - e) ** k * e, (1 - e) ** 64)
    expected_length = (k * length_probability).sum() / length_probability.sum()
    assert np.mean([len(d) for d in result.documents]) == pytest.approx(expected_length, rel=0.05)
    assert result.kept_tokens >= 30_000 and result.kept_tokens - len(result.documents[-1]) < 30_000


def test_temperature_raises_the_zipf_exponent_to_s_over_t(model):
    result = sample(model, target=40_000, temperature=0.7)
    assert D.zipf_exponent(token_counts(result)[1:]) == pytest.approx(1.1 / 0.7, abs=0.06)


def _head(p: np.ndarray, top_k: int = 0, top_p: float = 1.0) -> set[int]:
    """The non-EOS ids top-k then top-p keep (transformers' rule: top-p renormalises what top-k left and
    drops the ascending prefix with mass <= 1 - top_p)."""
    kept = np.argsort(p)[::-1][:top_k] if top_k else np.arange(len(p))
    if top_p < 1:
        ascending = np.sort(p[kept] / p[kept].sum())
        cutoff = ascending[np.cumsum(ascending) > 1 - top_p][0]
        kept = [t for t in kept if p[t] / p[kept].sum() >= cutoff]
    return {int(t) for t in kept} - {EOS}


@pytest.mark.parametrize("knobs", [{"top_k": 12}, {"top_p": 0.6}, {"top_k": 40, "top_p": 0.8}])
def test_top_k_and_top_p_keep_exactly_the_head(model, p, knobs):
    result = sample(model, **knobs)
    assert set(np.flatnonzero(token_counts(result)).tolist()) == _head(p, **knobs)


def test_a_checkpoint_default_of_top_k_50_does_not_leak_in(p):
    from transformers import GenerationConfig

    model = unigram_model(p)
    model.generation_config = GenerationConfig(do_sample=True, top_k=50, top_p=0.5, temperature=0.3)
    assert np.count_nonzero(token_counts(sample(model))) > 150  # all 199 non-EOS ids are likely
    assert model.generation_config.top_k == 50, "the model's own config is back after sampling"


def test_min_and_max_new_tokens_bound_every_document(model):
    lengths = [len(d) for d in sample(model, target=5_000, min_new_tokens=5, max_new_tokens=12).documents]
    assert min(lengths) == 5 and max(lengths) == 12


def test_repetition_penalty_reduces_repeats_within_documents(model):
    def repeats(result):
        return np.mean([1 - len(set(d)) / len(d) for d in result.documents if len(d) >= 10])

    assert repeats(sample(model, target=10_000, repetition_penalty=3.0)) < 0.5 * repeats(sample(model, target=10_000))


def test_top_p_and_temperature_thin_the_tail(model, p):
    """The direction the experiment relies on: fewer types and less mass beyond rank 20 than at T=1, p=1."""
    ranks = {t: r for r, t in enumerate(np.argsort(p[1:])[::-1] + 1, start=1)}
    plain, thinned = sample(model, target=20_000), sample(model, target=20_000, temperature=0.8, top_p=0.9)
    plain_tail, _ = D.tail_mass(Counter(dict(enumerate(token_counts(plain)))), ranks, tail_rank=20)
    thin_tail, _ = D.tail_mass(Counter(dict(enumerate(token_counts(thinned)))), ranks, tail_rank=20)
    exact_tail = p[21:].sum() / p[1:].sum()
    assert plain_tail == pytest.approx(exact_tail, abs=0.015)
    assert thin_tail < 0.6 * plain_tail
    assert np.count_nonzero(token_counts(thinned)) < np.count_nonzero(token_counts(plain)) - 50


# ---------------------------------------------------------------- the knobs reach generate


def test_generate_receives_every_sampling_setting(p, monkeypatch):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    model = unigram_model(p)
    calls = []
    real_generate = model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        return real_generate(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    sample(model, target=500, temperature=0.7, top_k=5, top_p=0.9, max_new_tokens=33, min_new_tokens=3,
           repetition_penalty=1.3)
    config = calls[0]["generation_config"]
    assert (config.max_new_tokens, config.min_new_tokens, config.repetition_penalty) == (33, 3, 1.3)
    assert config.do_sample is False and config.cache_implementation == "static"  # our sampler draws
    (sampler,) = calls[0]["logits_processor"]
    assert [type(w) for w in sampler.chain] == [TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper]
    assert (sampler.chain[0].temperature, sampler.chain[1].top_k, sampler.chain[2].top_p) == (0.7, 5, 0.9)
    assert calls[0]["input_ids"].shape[1] == 1 and (calls[0]["input_ids"] == EOS).all()


def test_tiny_temperature_is_greedy(model):
    docs = sample(model, target=2_000, temperature=1e-4).documents
    assert {t for d in docs for t in d} == {1}  # the most likely token, every time (EOS at 0.02 never wins)


# ---------------------------------------------------------------- determinism


def test_same_documents_for_any_batch_size_and_different_for_another_seed(model):
    small, large = sample(model, target=3_000, batch_size=24), sample(model, target=3_000, batch_size=128)
    assert small.documents == large.documents and small.kept_tokens == large.kept_tokens
    assert sample(model, target=3_000, batch_size=128, seed=1).documents != large.documents


def test_two_processes_give_the_documents_of_one(model):
    """world=2 with a thread standing in for each process (gather = a barrier-synchronised exchange)."""
    slots: list = [None, None]
    barrier = threading.Barrier(2)

    def gather_for(rank):
        def gather(items):
            slots[rank] = items
            barrier.wait()
            merged = [x for slot in slots for x in slot]
            barrier.wait()  # both have read before the next round overwrites
            return merged
        return gather

    results: list = [None, None]

    def worker(rank):
        replica = copy.deepcopy(model)  # each "process" has its own model (and static cache)
        results[rank] = S.sample_documents(replica, S.SamplingSettings(max_new_tokens=64), S.PromptSampler(EOS),
                                           target_tokens=3_000, eos_id=EOS, pad_id=EOS, seed=0, batch_size=16,
                                           rank=rank, world=2, gather=gather_for(rank), progress=False)

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    single = sample(model, target=3_000, batch_size=16)
    assert results[0].documents == results[1].documents == single.documents


# ---------------------------------------------------------------- pieces


def test_cut_at_eos_and_left_pad():
    rows = torch.tensor([[5, 6, EOS, 7], [EOS, 1, 1, 1], [3, 3, 3, 3]])
    assert S.cut_at_eos(rows, EOS) == [[5, 6], [], [3, 3, 3, 3]]
    ids, mask = S.left_pad([[1], [2, 3, 4]], pad_id=9)
    assert ids.tolist() == [[9, 9, 1], [2, 3, 4]] and mask.tolist() == [[0, 0, 1], [1, 1, 1]]


def test_auto_batch_size_fills_memory_in_powers_of_two_under_the_cap(model, monkeypatch):
    per_sequence = 129 * SD.kv_cache_bytes_per_token(model.config, torch.float32) + 6 * 4 * model.config.vocab_size
    for free, expected in ((per_sequence * 2 * 100, 64), (per_sequence * 2 * 3, 2), (1, 1), (1 << 50, SD.CPU_BATCH_CAP)):
        monkeypatch.setattr(SD, "free_memory_bytes", lambda device, free=free: free)
        assert SD.auto_batch_size(model, 129, torch.device("cpu")) == expected


def test_human_prompts_are_prefixes_of_long_enough_documents_chosen_by_sequence_index():
    docs = ["abcdefgh", "xy", "klmnopqr", "z"]

    def encode(texts):
        return [[ord(c) for c in t] for t in texts]

    sampler = S.PromptSampler(EOS, docs, encode, prompt_tokens=3, seed=4)
    prompts = sampler.prompts(np.arange(40, dtype=np.uint64))
    assert {tuple(pr) for pr in prompts} <= {(EOS, *map(ord, "abc")), (EOS, *map(ord, "klm"))}
    assert len({tuple(pr) for pr in prompts}) == 2
    again = S.PromptSampler(EOS, docs, encode, prompt_tokens=3, seed=4)
    assert again.prompts(np.arange(20, 40, dtype=np.uint64)) == prompts[20:]  # by index, not by call order
    with pytest.raises(ValueError, match="prompt_tokens"):
        S.PromptSampler(EOS, ["ab", "c"], encode, prompt_tokens=3).prompts(np.arange(2, dtype=np.uint64))


# ---------------------------------------------------------------- the stage, through the runner


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return run_pipeline(tmp_path_factory.mktemp("generate") / "runs")[0]


def test_corpus_unit_packs_blocks_and_heldout_and_writes_diagnostics(generated):
    from pipeline.data.packing import load_blocks

    corpus = generated / "generate" / "g0"
    rows = [json.loads(line) for line in (corpus / "text.jsonl").read_text().splitlines()]
    shard_rows = [json.loads(line) for k in range(3)
                  for line in (generated / "generate" / f"g0-s{k:03d}" / "text.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [r["text"] for r in shard_rows], "shards concatenated in shard order"
    assert sum(r["tokens"] for r in shard_rows) >= 3000
    metrics = json.loads((corpus / "manifest.json").read_text())["metrics"]
    assert metrics["heldout_documents"] == sum(r["heldout"] for r in rows) == round(0.05 * len(rows))
    blocks, heldout = load_blocks(corpus / "blocks"), load_blocks(corpus / "heldout")
    assert len(blocks[0]["input_ids"]) == 64 and len(heldout) == metrics["heldout"]["blocks"]
    diagnostics = json.loads((corpus / "diagnostics.json").read_text())
    synthetic = diagnostics["synthetic"]
    assert synthetic["documents"] == len(rows) and synthetic["teacher_test_ppl"] > 1
    assert len(synthetic["word_rank_frequency"]) == synthetic["word_types"]
    assert metrics["diagnostics"]["synthetic"]["zipf_word"] == synthetic["zipf_word"]


def test_killed_shard_is_regenerated_byte_identical(generated, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(generated.parent, runs)
    run_dir = runs / generated.name
    reference = tmp_path / "reference"
    shutil.copytree(run_dir / "generate", reference)
    shutil.rmtree(run_dir / "generate" / "g0-s001")  # as if killed before it finished
    shutil.rmtree(run_dir / "generate" / "g0")
    _, status = run_pipeline(runs)
    assert status["generate/g0-s001"] == "ran" and status["generate/g0"] == "ran"
    assert status["generate/g0-s000"] == status["generate/g0-s002"] == "done"
    for unit in ("g0-s001", "g0"):
        comparison = filecmp.dircmp(reference / unit, run_dir / "generate" / unit, ignore=["manifest.json"])
        assert not comparison.diff_files and not comparison.left_only and not comparison.right_only, unit
        for name in ("text.jsonl",) + (("diagnostics.json",) if unit == "g0" else ()):
            assert (reference / unit / name).read_bytes() == (run_dir / "generate" / unit / name).read_bytes()
    for split in ("blocks", "heldout"):
        assert filecmp.cmpfiles(reference / "g0" / split, run_dir / "generate" / "g0" / split,
                                [p.name for p in (reference / "g0" / split).iterdir()], shallow=False)[1] == []


def test_human_prompts_come_from_train_documents_only(tmp_path):
    from pipeline.stages import artifacts

    run_dir, _ = run_pipeline(tmp_path / "runs", "generate.prompt=human", "generate.prompt_tokens=4",
                              "generate.shards=1", "generate.tokens=800")
    train = artifacts.documents(run_dir / "prepare", "train")
    rows = [json.loads(line) for line in (run_dir / "generate" / "g0-s000" / "text.jsonl").read_text().splitlines()]
    assert rows and all(any(doc.startswith(r["prompt"]) for doc in train) for r in rows)
