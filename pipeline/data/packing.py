"""Documents -> fixed-length token blocks on disk.

Every document is tokenised without special tokens and followed by EOS; the token streams are
concatenated in document order and cut into blocks of `block_size` (column `input_ids`, int32).
Tokenisation is the batched fast path through `datasets.Dataset.map(batched=True, num_proc=...)`;
the concatenation and cutting work on the Arrow buffers directly (no Python list per token).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.io import write_dir_atomic


def _tokenize_batch(batch: dict, backend, eos_id: int) -> dict:
    texts = batch["text"]
    # Set here, not only in `plain_backend`: the flag does not survive pickling into num_proc workers.
    backend.encode_special_tokens = True
    encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
    return {"input_ids": [encoding.ids + [eos_id] for encoding in encodings],
            "n_bytes": [text_bytes(text) for text in texts]}


def text_bytes(text: str) -> int:
    """The bytes a document counts for in bits per byte, everywhere: its UTF-8 text. Not the bytes its
    tokens spell, which a tokenizer may change (a SentencePiece "▁" before every document, a normaliser);
    for a byte-level BPE the two agree. EOS after a document counts 0 bytes (its prediction is paid for)."""
    return len(text.encode("utf-8"))


def plain_backend(tokenizer):
    """The tokenizer's `tokenizers` backend, set to read special-token strings in text as plain text.

    A document that happens to contain "<|endoftext|>" must not gain a document boundary: EOS is
    only ever the id we append, and every byte of the text stays accounted for.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"tokenizer: {type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer; "
                        "use a tokenizer.json-based tokenizer")
    backend = copy.deepcopy(backend)
    backend.encode_special_tokens = True
    backend.no_truncation()
    backend.no_padding()
    return backend


def tokenize_documents(texts: list[str], tokenizer, *, num_proc: int = 1, batch_size: int = 1000):
    """A `datasets.Dataset` with `input_ids` (document tokens + EOS, int32) and `n_bytes` per document."""
    from datasets import Dataset, Features, List, Value

    if tokenizer.eos_token_id is None:
        raise UserError("tokenizer: no EOS token; documents could not be separated in packed blocks")
    if not texts:
        raise UserError("packing: no documents to tokenise; the split is empty")
    features = Features({"input_ids": List(Value("int32")), "n_bytes": Value("int64")})
    documents = Dataset.from_dict({"text": list(texts)})
    return documents.map(
        _tokenize_batch, batched=True, batch_size=batch_size, num_proc=num_proc if num_proc > 1 else None,
        fn_kwargs={"backend": plain_backend(tokenizer), "eos_id": int(tokenizer.eos_token_id)},
        remove_columns=["text"], features=features, desc="tokenize", load_from_cache_file=False,
    )


def concatenated_ids(tokenized) -> np.ndarray:
    """All token ids of a tokenised dataset, in order, as one int32 array (read from Arrow buffers)."""
    column = tokenized.data.column("input_ids")
    if tokenized._indices is not None:  # a selected/shuffled view: materialise the order first
        column = tokenized.flatten_indices().data.column("input_ids")
    parts = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
    return np.concatenate(parts).astype(np.int32, copy=False) if parts else np.zeros(0, np.int32)


def blocks_dataset(ids: np.ndarray, block_size: int, keep_remainder: bool):
    """A `datasets.Dataset` of consecutive `block_size` slices of `ids` (plus the partial tail if kept).

    Built as one Arrow list array over the ids buffer: offsets 0, b, 2b, ..., no per-block copies.
    """
    import pyarrow as pa
    from datasets import Dataset

    n_kept = kept_tokens(len(ids), block_size, keep_remainder)
    offsets = np.append(np.arange(0, n_kept, block_size), n_kept) if n_kept else np.zeros(1, np.int64)
    values = pa.array(ids[:n_kept], type=pa.int32())
    if n_kept < 2**31:  # Arrow list offsets are int32; beyond that a large_list is needed
        column = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
    else:
        column = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)
    return Dataset(pa.table({"input_ids": column}))  # features (List(Value("int32"))) follow the schema


def kept_tokens(n_tokens: int, block_size: int, keep_remainder: bool) -> int:
    return n_tokens if keep_remainder else n_tokens - n_tokens % block_size


def pack_documents(texts: list[str], tokenizer, block_size: int, out_dir: str | Path, *, num_proc: int = 1,
                   batch_size: int = 1000, keep_remainder: bool = False) -> dict:
    """Tokenise, append EOS, concatenate, cut into blocks, `save_to_disk(out_dir)`; return the accounting.

    keep_remainder=False drops the final partial block (training wants equal lengths);
    keep_remainder=True keeps it (evaluation must not lose tokens).
    Returns {documents, tokens, bytes, blocks, block_size, dropped_tokens}; `tokens` counts one EOS
    per document and includes dropped tokens, `bytes` is the UTF-8 size of the texts.
    """
    if block_size < 1:
        raise UserError(f"packing.block_size: {block_size} is not valid; valid: a positive number of tokens")
    tokenized = tokenize_documents(texts, tokenizer, num_proc=num_proc, batch_size=batch_size)
    ids = concatenated_ids(tokenized)
    blocks = blocks_dataset(ids, block_size, keep_remainder)
    save_dataset(blocks, Path(out_dir))
    kept = kept_tokens(len(ids), block_size, keep_remainder)
    return {"documents": len(texts), "tokens": len(ids), "bytes": int(np.sum(tokenized["n_bytes"])),
            "blocks": len(blocks), "block_size": block_size, "dropped_tokens": int(len(ids) - kept)}


def save_dataset(dataset, out_dir: Path) -> None:
    """`save_to_disk` under a temporary sibling name, then rename: a half-written dataset never exists."""
    write_dir_atomic(Path(out_dir), lambda tmp: dataset.save_to_disk(str(tmp)))


def load_blocks(path: str | Path, *, torch_format: bool = True):
    """A packed block dataset written by `pack_documents` (torch tensors unless told otherwise)."""
    from datasets import Dataset

    path = Path(path)
    if not (path / "state.json").is_file():
        raise UserError(f"blocks: {path} is not a packed block dataset (no state.json); run the stage that writes it")
    dataset = Dataset.load_from_disk(str(path))
    if "input_ids" not in dataset.column_names:
        raise UserError(f"blocks: {path} has no input_ids column; columns: {', '.join(dataset.column_names)}")
    return dataset.with_format("torch") if torch_format else dataset
