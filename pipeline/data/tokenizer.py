"""Tokenizers: train a byte-level BPE, load a pretrained model's, and count bytes per token exactly.

`token_byte_lengths` is what makes evaluation report exact bits per byte: summed over a text's
token ids it equals the text's UTF-8 length for byte-level vocabularies. SentencePiece-style
tokenizers (Llama, Mistral, T5 ...) put a "▁" dummy prefix in front of every document that is not in
its text; `stream_utf8_bytes` takes that off once per document. Where a tokenizer changes the text
itself (NFKC, collapsed whitespace), no token accounting can recover the text's length:
`docs_utf8_bytes` reads it from the documents.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.io import write_dir_atomic

EOS_TOKEN = "<|endoftext|>"
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece byte tokens


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by every byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path):
    """Train a byte-level BPE on `texts`; save a transformers tokenizer directory at `out_dir`; return it.

    `<|endoftext|>` (id 0) is the only special token and serves as EOS, BOS and PAD. The directory
    is written under a temporary name and renamed into place.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257:
        raise UserError(f"tokenizer.vocab_size: {vocab_size} is not valid; valid: >= 257 (256 byte tokens + {EOS_TOKEN})")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    if backend.get_vocab_size() <= 257:
        raise UserError("corpus: the train split is too small to learn any BPE merge; give more text")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                        pad_token=EOS_TOKEN, unk_token=None, model_max_length=1 << 30)
    save_tokenizer(tokenizer, Path(out_dir))
    return tokenizer


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """`save_pretrained` into a temporary sibling directory, then rename it to `out_dir`."""
    write_dir_atomic(Path(out_dir), lambda tmp: tokenizer.save_pretrained(str(tmp)))


def load_run_tokenizer(path: str | Path):
    """A tokenizer directory written by `train_bpe_tokenizer` (or any transformers tokenizer dir)."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise UserError(f"tokenizer: {path} is not a tokenizer directory; run the prepare stage first")
    return AutoTokenizer.from_pretrained(str(path))


def load_pretrained_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The tokenizer of a pretrained model (a directory, a hub id in the offline cache, or a .gguf file).

    Guarantees `eos_token_id` and `pad_token_id` (PAD falls back to EOS, the usual causal-LM choice).
    """
    from transformers import AutoTokenizer

    path = str(path)
    kwargs = {"trust_remote_code": trust_remote_code}
    if path.endswith(".gguf"):
        if not Path(path).is_file():
            raise UserError(f"tokenizer.path: {path} does not exist; give an existing .gguf file")
        path, kwargs["gguf_file"] = str(Path(path).parent), Path(path).name
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        message = " ".join(str(exc).split())[:300]
        raise UserError(f"tokenizer.path: {path} has no loadable tokenizer ({message}); "
                        "give a model directory, a .gguf file or a cached hub id") from None
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer.path: the tokenizer of {path} defines no EOS token; documents cannot be separated")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def token_byte_lengths(tokenizer) -> np.ndarray:
    """int64 array: UTF-8 bytes that token id i stands for (0 for special tokens).

    Byte-level BPE tokens are strings over GPT-2's byte alphabet, one character per byte.
    SentencePiece vocabularies ("▁" = space, "<0xNN>" byte fallback) are handled too. Added
    non-special tokens count the bytes of their text.
    """
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    lengths = np.zeros(size, dtype=np.int64)
    special_ids = set(tokenizer.all_special_ids)
    added = {token.content: token for token in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    byte_of_char = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab = tokenizer.get_vocab()
    byte_level = _is_byte_level(tokenizer)
    for token, token_id in vocab.items():
        if token_id in special_ids or (token in added and added[token].special):
            continue
        if token in added:
            lengths[token_id] = len(token.encode("utf-8"))
        elif byte_level:
            if any(char not in byte_of_char for char in token):
                raise UserError(f"tokenizer: token {token!r} (id {token_id}) is not in the byte-level alphabet")
            lengths[token_id] = len(token)
        else:
            match = _BYTE_FALLBACK.match(token)
            lengths[token_id] = 1 if match else len(token.replace("▁", " ").encode("utf-8"))
    return lengths


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    return "ByteLevel" in repr(backend.pre_tokenizer) or "ByteLevel" in repr(backend.decoder)


def dummy_prefix_bytes(tokenizer, byte_lengths: np.ndarray | None = None) -> int:
    """Bytes the tokenizer puts in front of every document that its text does not have.

    1 for SentencePiece-style tokenizers ("Hello" -> "▁Hello": the dummy prefix counts as a space in
    the byte table), 0 for byte-level BPE. Measured, not guessed from the class: a one-character text
    is encoded and its tokens' bytes compared with the text's.
    """
    from pipeline.data.packing import plain_backend

    table = token_byte_lengths(tokenizer) if byte_lengths is None else byte_lengths
    probe = "a"
    ids = plain_backend(tokenizer).encode(probe, add_special_tokens=False).ids
    return max(0, int(np.asarray(table)[ids].sum()) - len(probe.encode("utf-8")))


def stream_utf8_bytes(ids, tokenizer, byte_lengths: np.ndarray | None = None) -> int:
    """UTF-8 bytes of the documents a token stream encodes (documents + EOS each, from a document start).

    The byte table's sum, less the tokenizer's dummy prefix once per non-empty document (a document
    starts at position 0 and after every EOS). Exact whenever decoding gives the text back; a tokenizer
    that normalises the text (NFKC, whitespace) yields the normalised text's length: compare with
    `docs_utf8_bytes` and prefer that one where they differ.
    """
    table = np.asarray(token_byte_lengths(tokenizer) if byte_lengths is None else byte_lengths, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) and ids.max() >= len(table):
        raise ValueError(f"token id {int(ids.max())} is outside the tokenizer's byte table ({len(table)} ids)")
    total = int(table[ids].sum())
    prefix = dummy_prefix_bytes(tokenizer, table)
    if prefix and len(ids):
        eos = tokenizer.eos_token_id
        starts = np.flatnonzero(np.concatenate(([True], ids[:-1] == eos)))
        total -= prefix * int((ids[starts] != eos).sum())
    return total


def docs_utf8_bytes(docs_dir: str | Path, text_field: str = "text") -> int:
    """UTF-8 bytes of the texts of a saved documents dataset (prepare's docs/<split>): the true
    denominator of bits per byte whenever `stream_utf8_bytes` of its tokens differs from it."""
    import pyarrow.compute as pc
    from datasets import Dataset

    if not (Path(docs_dir) / "state.json").is_file():
        raise UserError(f"documents: {docs_dir} is not a saved documents dataset (no state.json); "
                        "run the prepare stage that writes it")
    dataset = Dataset.load_from_disk(str(docs_dir))
    if text_field not in dataset.column_names:
        raise UserError(f"documents: {docs_dir} has no {text_field!r} column; columns: {', '.join(dataset.column_names)}")
    column = dataset.flatten_indices(keep_in_memory=True) if dataset._indices is not None else dataset
    lengths = pc.binary_length(column.data.column(text_field))  # bytes, not characters
    return int(pc.sum(lengths).as_py() or 0)
