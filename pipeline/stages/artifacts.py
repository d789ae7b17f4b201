"""What stages know of each other: unit keys, and readers of another stage's outputs.

Stages are siblings: each imports this module and the libraries (data/, lm/, analysis/), never another
stage. A stage that needs what an earlier one wrote names it as an input (a key below) and reads it
through a function here, so the on-disk layout of every stage is known in exactly two places: the
writer's module docstring and this file.

Keys (`STAGE/ID`):
  prepare/prepare      tokenizer/, train|validation|test/ (packed blocks), docs/SPLIT/ (raw text)
  teacher/gG           model/ (safetensors + tokenizer)
  generate/gG-sKKK     a shard: text.jsonl
  generate/gG          a corpus: blocks/, heldout/, text.jsonl {"text", "heldout"}, diagnostics.json
  mix/gG-pP-nN         blocks/
With teacher.replicates > 1, teacher replicate r >= 1 and everything it wrote carry `-tR` after gG
(teacher/gG-tR, generate/gG-tR-sKKK, generate/gG-tR, mix/gG-tR-pP-nN); with mix.draws > 1, draw d >= 1
of a mixture ends in `-dD` (mix/gG-pP-nN-dD). Replicate 0 and draw 0 keep the plain ids, so a run
without replicates has the ids (and fingerprints) it always had.
  train/STUDENT-MIX-sS model/
  evaluate/<train id>  manifest only: its metrics are one results row
  fit/fit              fit.json
The key format itself (`STAGE/ID`) is the contract's (pipeline/unit.py: unit_key, Unit.inputs_from,
UnitContext.inputs_of); no stage builds or splits a key string but through these two modules.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.data.splits import SPLITS
from pipeline.errors import UserError
from pipeline.io import read_json_object, read_jsonl
from pipeline.unit import unit_key

PREPARE_KEY = unit_key("prepare", "prepare")
FIT_KEY = unit_key("fit", "fit")
_SHARD_ID = re.compile(r"^g\d+(-t\d+)?-s\d+$")

# Columns of the results table: evaluate writes rows with these (and more), `collapse status` and the
# report print them in this order. (key, header, format)
RESULT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("student", "student", "s"), ("parameters", "parameters", ",d"), ("generation", "g", "d"),
    ("teacher_replicate", "teacher", "d"), ("mix_draw", "draw", "d"),
    ("synthetic_fraction", "p", "g"), ("token_budget", "n", ",d"), ("seed", "seed", "d"), ("step", "step", "d"),
    ("loss", "loss", ".4f"), ("ppl", "ppl", ".2f"), ("bpb", "bpb", ".4f"), ("excess_loss", "excess", ".4f"),
    ("synthetic_loss", "synthetic loss", ".4f"),
)


def generation_id(generation: int, replicate: int = 0) -> str:
    """The unit id of generation g's teacher and of its corpus: gG (teacher replicate 0) or gG-tR."""
    return f"g{generation}" if replicate == 0 else f"g{generation}-t{replicate}"


def teacher_key(generation: int, replicate: int = 0) -> str:
    return unit_key("teacher", generation_id(generation, replicate))


def corpus_key(generation: int, replicate: int = 0) -> str:
    return unit_key("generate", generation_id(generation, replicate))


def shard_id(generation: int, shard: int, replicate: int = 0) -> str:
    return f"{generation_id(generation, replicate)}-s{shard:03d}"


def replicate_of(params: dict[str, Any]) -> int:
    """The teacher replicate a teacher, generate or mix unit belongs to (absent from replicate 0's params, so
    that its fingerprints are those of a run without replicates)."""
    return int(params.get("teacher_replicate", 0))


def replicate_params(replicate: int) -> dict[str, int]:
    """What a unit of teacher replicate r adds to its params: nothing for r = 0 (see `replicate_of`)."""
    return {"teacher_replicate": replicate} if replicate else {}


def is_shard(unit_id: str) -> bool:
    """Whether a generate unit id names a shard (gG-sKKK) rather than a corpus (gG)."""
    return bool(_SHARD_ID.match(unit_id))


def corpus_keys(planned) -> tuple[str, ...]:
    """Keys of every planned corpus unit (not the shards)."""
    return tuple(u.key for u in planned.units("generate") if not is_shard(u.id))


# ---------------------------------------------------------------- readers


def manifest(unit_dir: str | Path) -> dict[str, Any]:
    """A finished unit's manifest (the runner wrote it last, so it exists once the unit is done)."""
    path = Path(unit_dir) / "manifest.json"
    data = read_json_object(path)
    if data is None:
        raise UserError(f"{path}: missing or damaged; re-run the stage that writes it (collapse run)")
    return data


def block_size(prepare_dir: str | Path) -> int:
    """The run's block size: every stage reads it here, from what prepare packed with."""
    return int(manifest(prepare_dir)["metrics"]["block_size"])


def split_stats(prepare_dir: str | Path, split: str) -> dict[str, Any]:
    """What prepare packed of a split: blocks, tokens, bytes (its text's UTF-8 bytes), ..."""
    return manifest(prepare_dir)["metrics"]["splits"][split]


def reference_entropy(prepare_dir: str | Path, split: str) -> dict[str, Any] | None:
    """The exact entropy of a split of builtin:reference-language (nats_per_token, bits_per_byte, nats);
    None for any other corpus."""
    return (manifest(prepare_dir)["metrics"].get("reference") or {}).get(split)


def reference_parameters(prepare_dir: str | Path) -> dict[str, Any]:
    """The corpus.reference parameters prepare generated builtin:reference-language with."""
    return manifest(prepare_dir)["params"]["corpus"]["reference"]


def tokenizer(prepare_dir: str | Path):
    """The run's tokenizer (written by prepare)."""
    from pipeline.data.tokenizer import load_run_tokenizer

    return load_run_tokenizer(Path(prepare_dir) / "tokenizer")


def blocks(unit_dir: str | Path, name: str, *, torch_format: bool = False):
    """Packed blocks `name` of a unit: prepare's train/validation/test, a corpus's blocks/heldout, a mixture's blocks."""
    from pipeline.data.packing import load_blocks

    return load_blocks(Path(unit_dir) / name, torch_format=torch_format)


def has_blocks(unit_dir: str | Path, name: str) -> bool:
    return (Path(unit_dir) / name / "state.json").is_file()


def documents(prepare_dir: str | Path, split: str) -> list[str]:
    """The raw text of every human document of `split`, in split order."""
    from datasets import Dataset

    if split not in SPLITS:
        raise UserError(f"split: {split!r} is not valid; valid: {', '.join(SPLITS)}")
    path = Path(prepare_dir) / "docs" / split
    if not (path / "state.json").is_file():
        raise UserError(f"prepare: {path} is missing; re-run the prepare stage (collapse run --force prepare)")
    return Dataset.load_from_disk(str(path))["text"]


def shard_rows(shard_dir: str | Path) -> list[dict]:
    """A shard's documents: {"text", "tokens"[, "prompt"]} in sequence order."""
    return read_jsonl(Path(shard_dir) / "text.jsonl")


def corpus_documents(corpus_dir: str | Path, heldout: bool | None = None) -> list[str]:
    """Texts of a corpus unit (all, or only the held-out / only the training documents)."""
    rows = read_jsonl(Path(corpus_dir) / "text.jsonl")
    return [r["text"] for r in rows if heldout is None or r["heldout"] == heldout]


def teacher_model(teacher_dir: str | Path, device, trust_remote_code: bool):
    """(model, tokenizer) of a teacher unit's model/, in bf16 on a GPU (fp32 on CPU), in eval mode."""
    from transformers import AutoTokenizer

    from pipeline.lm.loading import load_model
    from pipeline.lm.sampling_device import sampling_dtype

    model_dir = str(Path(teacher_dir) / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    model = load_model(model_dir, trust_remote_code=trust_remote_code, dtype=sampling_dtype(device), device=device)
    return model, tokenizer


def corpus_bytes(corpus_dir: str | Path, heldout: bool | None = None) -> int:
    """UTF-8 bytes of a corpus unit's texts (as corpus_documents selects them), counted as every bits per
    byte counts them (pipeline.data.packing.text_bytes)."""
    from pipeline.data.packing import text_bytes

    return sum(text_bytes(text) for text in corpus_documents(corpus_dir, heldout))


def corpus_diagnostics(corpus_dir: str | Path) -> dict[str, Any]:
    return read_json_object(Path(corpus_dir) / "diagnostics.json") or {}


def result_row(evaluate_dir: str | Path) -> dict[str, Any]:
    """One results row: an evaluate unit's metrics, with its unit id."""
    row = dict(manifest(evaluate_dir)["metrics"])
    row.setdefault("unit", Path(evaluate_dir).name)
    return row


def result_rows(inputs: dict[str, Path]) -> list[dict[str, Any]]:
    """The rows of every evaluate unit among a unit's inputs, sorted like the results table."""
    rows = [result_row(path) for key, path in inputs.items() if key.startswith("evaluate/")]
    return sorted(rows, key=result_sort_key)


def fit_results(fit_dir: str | Path) -> dict[str, Any]:
    """What the fit stage concluded (its fit.json)."""
    data = read_json_object(Path(fit_dir) / "fit.json")
    if data is None:
        raise RuntimeError(f"{fit_dir}/fit.json is missing or damaged; re-run the fit stage")
    return data


def result_sort_key(row: dict[str, Any]) -> tuple:
    return (str(row.get("student")), row.get("generation", 0), row.get("synthetic_fraction", 0),
            row.get("token_budget", 0), row.get("seed", 0))


def format_cell(row: dict[str, Any], key: str, spec: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)
