"""prepare: human text -> deduplicated document split -> tokenizer -> packed blocks.

One unit, `prepare/prepare`, at runs/NAME/prepare/:
  tokenizer/                    transformers tokenizer dir (EOS = BOS = PAD)
  train/ validation/ test/      packed block datasets (`input_ids`); validation and test keep their
                                final partial block so evaluation sees every token
  docs/{train,validation,test}/ datasets with the raw `text` of each document (generation prompts,
                                diagnostics)
Later stages read these through pipeline/stages/artifacts.py (documents, tokenizer, blocks, block_size).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.packing import concatenated_ids, load_blocks, pack_documents, save_dataset
from pipeline.data.sources import REFERENCE_LANGUAGE, load_documents
from pipeline.data.splits import SPLITS, deduplicate, split_documents
from pipeline.data.tokenizer import (
    load_pretrained_tokenizer,
    save_tokenizer,
    token_byte_lengths,
    train_bpe_tokenizer,
)
from pipeline.errors import UserError
from pipeline.unit import Unit

NAME = "prepare"
VERSION = 1


def plan(cfg, planned) -> list[Unit]:
    settings = {"streaming": cfg.corpus.streaming, "num_proc": cfg.packing.num_proc}  # same output either way
    return [Unit(NAME, NAME, prepare_params(cfg), settings=settings)]


def prepare_params(cfg) -> dict[str, Any]:
    """The config slice that determines prepare's output (and nothing that does not: no num_proc)."""
    corpus = cfg.corpus
    source: dict[str, Any] = {"source": corpus.source, "max_documents": corpus.max_documents,
                              "validation_fraction": corpus.validation_fraction,
                              "test_fraction": corpus.test_fraction, "seed": corpus.seed}
    if corpus.source.startswith(("hf:", "files:")):
        source["text_field"] = corpus.text_field
    if corpus.source.startswith("hf:"):
        source["split"] = corpus.split
    if corpus.source.startswith("files:"):
        source["txt_mode"] = corpus.txt_mode
        source["content"] = files_identity(corpus.source.removeprefix("files:"))
    if corpus.source == "builtin:wikipedia":
        source["min_chars"] = corpus.min_chars
    if corpus.source == REFERENCE_LANGUAGE:
        source["reference"] = corpus.reference.model_dump(mode="json")
    tok = cfg.tokenizer
    if tok.kind == "bpe":
        tokenizer: dict[str, Any] = {"kind": "bpe", "vocab_size": tok.vocab_size}
    else:
        tokenizer = {"kind": "pretrained", "path": tok.path or cfg.teacher.model.pretrained,
                     "trust_remote_code": cfg.teacher.model.trust_remote_code}
    return {"corpus": source, "tokenizer": tokenizer, "block_size": cfg.packing.block_size}


def files_identity(pattern: str) -> dict[str, Any]:
    """The files a `files:` glob matches, by content (size + sha256, cached by size and mtime): an
    edited or added file changes prepare's fingerprint, so everything downstream reruns."""
    from pipeline.data.sources import corpus_files
    from pipeline.lm.pretrained import content_hashes

    return content_hashes([Path(p) for p in corpus_files(pattern)])


def run(ctx) -> dict[str, Any]:
    params, out = ctx.params, Path(ctx.out)
    corpus = params["corpus"]
    docs = load_documents(corpus["source"], text_field=corpus.get("text_field", "text"),
                          split=corpus.get("split", "train"), max_documents=corpus["max_documents"],
                          streaming=ctx.settings["streaming"], min_chars=corpus.get("min_chars", 0),
                          txt_mode=corpus.get("txt_mode", "blocks"),
                          reference=corpus.get("reference"))
    unique, duplicates = deduplicate(docs)
    splits = split_documents(unique, corpus["validation_fraction"], corpus["test_fraction"], corpus["seed"])
    ctx.log.info("prepare: %d documents, %d exact duplicates removed, split %s", len(docs), duplicates,
                 {name: len(split) for name, split in splits.items()})
    for name in SPLITS:
        save_dataset(_text_dataset(splits[name]), out / "docs" / name)

    tokenizer = _make_tokenizer(params["tokenizer"], splits["train"], out / "tokenizer")
    byte_lengths = token_byte_lengths(tokenizer)
    metrics: dict[str, Any] = {"documents_read": len(docs), "duplicates_removed": duplicates,
                               "vocab_size": len(tokenizer), "block_size": params["block_size"], "splits": {}}
    for name in SPLITS:
        stats = pack_documents(splits[name], tokenizer, params["block_size"], out / name,
                               num_proc=ctx.settings["num_proc"], keep_remainder=name != "train")
        stats["token_bytes"] = _token_bytes(out / name, byte_lengths)
        if stats["token_bytes"] != stats["bytes"] and name != "train":
            # Only exact for byte-level vocabularies; a normalising tokenizer changes the text it encodes.
            ctx.log.warning("prepare: %s tokens decode to %d bytes, the text has %d: bits per byte will use "
                            "the text's bytes", name, stats["token_bytes"], stats["bytes"])
        metrics["splits"][name] = stats
    if corpus["source"] == REFERENCE_LANGUAGE:
        metrics["reference"] = _reference_entropies(corpus["reference"], splits, metrics["splits"])
    return metrics


def _text_dataset(texts: list[str]):
    from datasets import Dataset

    return Dataset.from_dict({"text": texts})


def _make_tokenizer(spec: dict[str, Any], train_texts: list[str], out_dir: Path):
    if spec["kind"] == "bpe":
        return train_bpe_tokenizer(train_texts, spec["vocab_size"], out_dir)
    if not spec.get("path"):
        raise UserError("tokenizer.path: tokenizer.kind: pretrained needs tokenizer.path or teacher.model.pretrained")
    from pipeline.lm.pretrained import resolve  # gguf:... spellings become the converted checkpoint dir

    path = resolve(spec["path"], trust_remote_code=spec["trust_remote_code"])
    tokenizer = load_pretrained_tokenizer(path, trust_remote_code=spec["trust_remote_code"])
    save_tokenizer(tokenizer, out_dir)  # later stages read every tokenizer from the same place
    return tokenizer


def _token_bytes(blocks_dir: Path, byte_lengths: np.ndarray) -> int:
    ids = concatenated_ids(load_blocks(blocks_dir, torch_format=False))
    return int(byte_lengths[ids].sum())


def _reference_entropies(reference: dict[str, Any], splits: dict[str, list[str]],
                         packed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The floor a perfect model reaches on each held-out split: exact, from the known distribution."""
    from pipeline.data.reference import ReferenceLanguage

    language = ReferenceLanguage.from_params(reference)
    result: dict[str, Any] = {"expected_bits_per_byte": language.expected_bits_per_byte()}
    for name in ("validation", "test"):
        nats = language.total_nats(splits[name])
        result[name] = {"bits_per_byte": nats / math.log(2) / packed[name]["bytes"],
                        # Per token, EOS included: a model predicts every EOS, and the true
                        # distribution's document-length term pays for those predictions.
                        "nats_per_token": nats / packed[name]["tokens"], "nats": nats}
    return result
