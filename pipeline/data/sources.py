"""Human text from a `corpus.source` string, as a list of documents.

Schemes:
  hf:NAME[:CONFIG]              `datasets.load_dataset(NAME, CONFIG, split=...)`; NAME may be a local
                                folder of data files (parquet/json/csv/txt) or a `save_to_disk` folder
  files:GLOB                    .txt, .jsonl and .parquet files (sorted by path)
  builtin:wikipedia             the Wikipedia sample shipped in the gensim wheel (see wikipedia.py)
  builtin:reference-language    a generated language with exact probabilities (see reference.py)

Every document keeps its text as is; empty (whitespace-only) documents are dropped. `min_chars`
applies to builtin:wikipedia only, where articles are cut into paragraph groups of at least that
many characters: other sources define their own documents, and neither joining nor dropping them
by length would be what their authors meant.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import UserError

REFERENCE_LANGUAGE = "builtin:reference-language"
SCHEMES = ("hf:", "files:", "builtin:wikipedia", REFERENCE_LANGUAGE)
TxtMode = Literal["blocks", "file"]


def load_documents(
    source: str,
    *,
    text_field: str = "text",
    split: str = "train",
    max_documents: int | None = None,
    streaming: bool = False,
    min_chars: int = 0,
    reference: Any = None,
    txt_mode: TxtMode = "blocks",
) -> list[str]:
    """The documents of `source` (at most `max_documents`, in source order).

    txt_mode: for files:*.txt, "blocks" makes every blank-line-separated block a document (default),
    "file" makes every file one document. `reference`: the `corpus.reference` parameters (a mapping
    or an object with those attributes) for builtin:reference-language.
    """
    if max_documents is not None and max_documents <= 0:
        raise UserError(f"corpus.max_documents: {max_documents} is not valid; give a positive count or leave it unset")
    if source.startswith("hf:") and len(source) > 3:
        docs = _load_hf(source[3:], text_field, split, max_documents, streaming)
    elif source.startswith("files:") and len(source) > 6:
        docs = _load_files(source[6:], text_field, txt_mode, max_documents)
    elif source == "builtin:wikipedia":
        from pipeline.data.wikipedia import load_wikipedia

        docs = load_wikipedia(min_chars)
    elif source == REFERENCE_LANGUAGE:
        docs = _load_reference(reference)
    else:
        raise UserError(f"corpus.source: unknown source {source!r}; valid: hf:NAME[:CONFIG], files:GLOB, "
                        "builtin:wikipedia, builtin:reference-language")
    docs = docs[:max_documents] if max_documents is not None else docs
    if not docs:
        hint = " or lower corpus.min_chars" if source == "builtin:wikipedia" else ""
        raise UserError(f"corpus.source: {source} yielded no documents; point it at non-empty text{hint}")
    return docs


def _non_empty(texts: Iterable[str]) -> Iterable[str]:
    return (text for text in texts if text.strip())


# ---------------------------------------------------------------- hf


def _load_hf(spec: str, text_field: str, split: str, max_documents: int | None, streaming: bool) -> list[str]:
    # A local path wins over NAME:CONFIG parsing, so paths are never cut at a colon.
    name, config = (spec, None) if os.path.exists(spec) else _split_name_config(spec)
    if Path(name, "state.json").is_file() or Path(name, "dataset_dict.json").is_file():
        dataset = _load_saved(name, split)
    else:
        dataset = _load_builder(spec, name, config, split, streaming)
    columns = dataset.column_names
    if columns is not None and text_field not in columns:
        raise UserError(f"corpus.text_field: {text_field!r} is not a column of hf:{spec}; columns: {', '.join(columns)}")
    if streaming and hasattr(dataset, "to_iterable_dataset"):
        dataset = dataset.to_iterable_dataset()
    if not streaming:
        dataset = dataset.select_columns([text_field])
    rows = (_field(row, text_field, f"hf:{spec}") for row in dataset)
    return list(itertools.islice(_non_empty(rows), max_documents))


def _split_name_config(spec: str) -> tuple[str, str | None]:
    name, _, config = spec.partition(":")
    return name, (config or None)


def _load_saved(path: str, split: str):
    """A `save_to_disk` folder: a Dataset as is, or the `split` of a DatasetDict."""
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(path)
    if isinstance(loaded, DatasetDict):
        if split not in loaded:
            raise UserError(f"corpus.split: {split!r} is not a split of {path}; splits: {', '.join(loaded)}")
        return loaded[split]
    return loaded


def _load_builder(spec: str, name: str, config: str | None, split: str, streaming: bool):
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split, streaming=streaming)
    except ValueError as exc:
        # datasets reports an unknown split as ValueError('Unknown split "x". Should be one of [...]').
        if "split" in str(exc).lower():
            raise UserError(f"corpus.split: {split!r} for hf:{spec}: {_one_line(exc)}") from None
        raise UserError(f"corpus.source: hf:{spec}: {_one_line(exc)}") from None
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError, ConnectionError) as exc:
        raise UserError(f"corpus.source: hf:{spec} could not be loaded ({_one_line(exc)}); "
                        "give a local dataset folder or a hub dataset available offline in the HF cache") from None
    except datasets.exceptions.DatasetGenerationError as exc:  # a data file it could not parse
        raise _unreadable_data(spec, name, exc) from None


def _unreadable_data(spec: str, name: str, exc: BaseException) -> UserError:
    """One line naming the file `datasets` choked on: it only says "An error occurred while generating"."""
    cause = exc.__cause__ or exc.__context__ or exc
    if isinstance(cause, UnicodeDecodeError) and os.path.isdir(name):
        for path in sorted(p for p in Path(name).rglob("*") if p.is_file() and p.suffix.lower() in _TEXT_SUFFIXES):
            offset = _first_invalid_utf8(path)
            if offset is not None:
                return UserError(f"corpus.source: hf:{spec}: {path} is not UTF-8 text (invalid byte "
                                 f"0x{offset[1]:02x} at byte offset {offset[0]}); convert it to UTF-8")
    return UserError(f"corpus.source: hf:{spec} could not be read ({type(cause).__name__}: {_one_line(cause)}); "
                     "fix the data file, or give its folder as files:GLOB, which names the file and line at fault")


_TEXT_SUFFIXES = (".txt", ".json", ".jsonl", ".csv", ".tsv")


def _first_invalid_utf8(path: Path, chunk_bytes: int = 1 << 20) -> tuple[int, int] | None:
    """(byte offset, byte) of the first invalid UTF-8 byte of `path`, read in chunks; None if it is UTF-8."""
    import codecs

    decoder, done = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(chunk_bytes)
            pending = len(decoder.getstate()[0])  # bytes of an unfinished character from the last chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:  # exc.object is those pending bytes + this chunk
                return done - pending + exc.start, exc.object[exc.start]
            if not chunk:
                return None
            done += len(chunk)


def _field(row: dict, text_field: str, where: str) -> str:
    if text_field not in row:
        raise UserError(f"corpus.text_field: {text_field!r} is not a field of {where}; fields: {', '.join(row)}")
    value = row[text_field]
    if value is None:  # a null cell is an empty document, dropped like one
        return ""
    if not isinstance(value, str):
        raise UserError(f"corpus.text_field: {text_field!r} of {where} holds {type(value).__name__}, not text")
    return _encodable(value, where)


def _encodable(text: str, where: str) -> str:
    """`text` if it can be written as UTF-8: a JSON escape like "\\udcff" decodes to a lone surrogate,
    which every later step (tokenising, counting bytes) would fail on far from here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"corpus.source: {where} holds {text[exc.start]!r} at character {exc.start}, a lone UTF-16 "
                        "surrogate that is not valid Unicode text; fix or drop that document") from None
    return text


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


# ---------------------------------------------------------------- files


def corpus_files(pattern: str) -> list[str]:
    """The files a `files:` glob matches (sorted); a UserError when it matches none."""
    paths = [p for p in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)) if os.path.isfile(p)]
    if not paths:
        raise UserError(f"corpus.source: files:{pattern} matches no files; give a glob of .txt, .jsonl or .parquet files")
    return paths


def _load_files(pattern: str, text_field: str, txt_mode: TxtMode, max_documents: int | None) -> list[str]:
    paths = corpus_files(pattern)
    readers = {".txt": lambda p: _read_txt(p, txt_mode), ".jsonl": lambda p: _read_jsonl(p, text_field),
               ".parquet": lambda p: _read_parquet(p, text_field)}
    for path in paths:
        if Path(path).suffix.lower() not in readers:
            raise UserError(f"corpus.source: {path} has extension {Path(path).suffix or '(none)'!r}; "
                            "valid: .txt, .jsonl, .parquet")
    texts = (text for path in paths for text in readers[Path(path).suffix.lower()](path))
    return list(itertools.islice(_non_empty(texts), max_documents))


def _read_utf8(path: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"corpus.source: {path} cannot be read ({exc.strerror or exc}); "
                        "check that it exists and is readable") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"corpus.source: {path} is not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at byte offset "
                        f"{exc.start}); convert it to UTF-8") from None


def _read_txt(path: str, txt_mode: TxtMode) -> list[str]:
    text = _read_utf8(path).replace("\r\n", "\n")
    if txt_mode == "file":
        return [text.strip()]
    if txt_mode != "blocks":
        raise UserError(f"txt_mode: {txt_mode!r} is not valid; valid: blocks, file")
    blocks, current = [], []
    for line in text.split("\n"):
        if line.strip():
            current.append(line.rstrip())
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return blocks


def _read_jsonl(path: str, text_field: str) -> list[str]:
    texts = []
    for number, line in enumerate(_read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"corpus.source: {path}:{number} is not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(row, dict):
            raise UserError(f"corpus.source: {path}:{number} is a JSON {type(row).__name__}; each line must be an object")
        texts.append(_field(row, text_field, f"{path}:{number}"))
    return texts


def _read_parquet(path: str, text_field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"corpus.source: {path} is not a readable parquet file ({_one_line(exc)})") from None
    if text_field not in schema.names:
        raise UserError(f"corpus.text_field: {text_field!r} is not a column of {path}; columns: {', '.join(schema.names)}")
    if not (pa.types.is_string(schema.field(text_field).type) or pa.types.is_large_string(schema.field(text_field).type)):
        raise UserError(f"corpus.text_field: {text_field!r} of {path} has type {schema.field(text_field).type}, not string")
    column = pq.read_table(path, columns=[text_field]).column(text_field)
    return [text for text in column.to_pylist() if text is not None]


# ---------------------------------------------------------------- reference language


def _load_reference(reference: Any) -> list[str]:
    from pipeline.data.reference import ReferenceLanguage

    if reference is None:
        raise UserError("corpus.reference: builtin:reference-language needs its parameters "
                        "(beta, lexicon_size, documents, seed, mean_sentence_words, mean_document_sentences)")
    params = reference if isinstance(reference, dict) else (
        reference.model_dump() if hasattr(reference, "model_dump") else vars(reference))
    language = ReferenceLanguage.from_params(params)
    return language.sample_documents(int(params.get("documents", 0)), seed=int(params.get("seed", 0)))
