"""The prepare and mix stages through the real runner (a stand-in generate stage supplies synthetic blocks)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach a hub

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.data.packing import load_blocks, pack_documents
from pipeline.data.reference import ReferenceLanguage
from pipeline.errors import UserError
from pipeline.orchestration.executor import Executor
from pipeline.orchestration.sweep import run_units
from pipeline.orchestration.launchers.local import LocalLauncher
from pipeline.orchestration.runner import plan_run
from pipeline.stages import artifacts
from pipeline.stages import mix, prepare
from pipeline.unit import Unit

TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"


def _plan_generate(cfg, planned):
    params = {"tokens": cfg.generate.tokens, "reference": cfg.corpus.reference.model_dump(),
              "block_size": cfg.packing.block_size}
    return [Unit("generate", f"g{g}", {"generation": g, **params}, (artifacts.PREPARE_KEY,))
            for g in range(cfg.generate.generations)]


def _run_generate(ctx):
    """Stand-in for the teacher: text from the same language with another seed, packed like the real stage."""
    reference = ctx.params["reference"]
    language = ReferenceLanguage(reference["beta"], reference["lexicon_size"], reference["mean_sentence_words"],
                                 reference["mean_document_sentences"], seed=reference["seed"])
    texts = language.sample_documents(150, seed=1000 + ctx.params["generation"])
    tokenizer = artifacts.tokenizer(ctx.inputs[artifacts.PREPARE_KEY])
    return pack_documents(texts, tokenizer, ctx.params["block_size"], ctx.out / "blocks")


GENERATE = SimpleNamespace(NAME="generate", VERSION=1, plan=_plan_generate, run=_run_generate)
STAGES = {"prepare": prepare, "generate": GENERATE, "mix": mix}


# Pinned here so that the expected block counts below do not depend on edits to tiny.yaml.
PINNED = ["corpus.source=builtin:reference-language", "corpus.reference.documents=300", "tokenizer.kind=bpe",
          "tokenizer.vocab_size=512", "packing.block_size=64", "generate.generations=1", "mix.generations=[0]",
          "mix.mode=replace", "mix.synthetic_fractions=[0.0,0.5,1.0]", "mix.token_budgets=[3000,6000]"]


def _executor(tmp_path: Path, *overrides: str) -> Executor:
    cfg = load_config(TINY, [f"runs_dir={tmp_path / 'runs'}", *PINNED, *overrides])
    return Executor(cfg=cfg, stages=STAGES, planned=plan_run(cfg, STAGES))


def _run(executor: Executor):
    return run_units(executor, list(executor.planned), LocalLauncher(), progress=False)


def test_prepare_and_mix_units_through_the_runner(tmp_path):
    executor = _executor(tmp_path)
    mix_ids = [u.id for u in executor.planned.units("mix")]
    assert mix_ids == [f"g0-p{p}-n{n}" for p in ("0", "0.5", "1") for n in (3000, 6000)]
    assert executor.planned.get("mix/g0-p0-n3000").inputs == ("prepare/prepare",)
    assert executor.planned.get("mix/g0-p0.5-n3000").inputs == ("prepare/prepare", "generate/g0")
    outcomes = _run(executor)
    assert [o.status for o in outcomes] == ["ran"] * (1 + 1 + 6)

    root = tmp_path / "runs" / "tiny"
    manifest = json.loads((root / "prepare" / "manifest.json").read_text())
    metrics = manifest["metrics"]
    splits = metrics["splits"]
    assert sum(s["documents"] for s in splits.values()) + metrics["duplicates_removed"] == metrics["documents_read"] == 300
    for name in ("validation", "test"):
        assert splits[name]["token_bytes"] == splits[name]["bytes"], "bits per byte can be exact"
        assert splits[name]["dropped_tokens"] == 0
    test_docs = artifacts.documents(root / "prepare", "test")
    language = ReferenceLanguage.from_params(executor.cfg.corpus.reference.model_dump())
    nats = -sum(language.log_prob(d) for d in test_docs)
    entropy = metrics["reference"]["test"]
    assert entropy["bits_per_byte"] == pytest.approx(nats / math.log(2) / sum(len(d.encode()) for d in test_docs))
    assert entropy["nats_per_token"] == pytest.approx(nats / splits["test"]["tokens"])
    assert len(artifacts.tokenizer(root / "prepare")) == 512
    assert len(artifacts.blocks(root / "prepare", "train")) == splits["train"]["blocks"]

    for unit_id, human, synthetic in (("g0-p0-n3000", 47, 0), ("g0-p0.5-n6000", 47, 47), ("g0-p1-n6000", 0, 94)):
        stats = json.loads((root / "mix" / unit_id / "manifest.json").read_text())["metrics"]
        assert (stats["human_blocks"], stats["synthetic_blocks"]) == (human, synthetic)
        blocks = load_blocks(root / "mix" / unit_id / "blocks", torch_format=False)
        assert len(blocks) == human + synthetic and int(np.sum(blocks["source"])) == synthetic
    pairs = lambda unit_id: set(zip(*load_blocks(root / "mix" / unit_id / "blocks", torch_format=False)
                                     .select_columns(["source", "block"]).to_dict().values()))
    assert pairs("g0-p0.5-n3000") <= pairs("g0-p0.5-n6000")

    assert {o.status for o in _run(_executor(tmp_path))} == {"done"}, "a finished run does nothing the second time"
    rerun = _run(_executor(tmp_path, "mix.seed=1"))
    assert sorted(o.unit.stage for o in rerun if o.status == "ran") == ["mix"] * 6


def test_mix_budget_beyond_the_corpus_fails_naming_the_key(tmp_path):
    executor = _executor(tmp_path, "mix.token_budgets=[100000000]", "mix.synthetic_fractions=[0.0]")
    with pytest.raises(UserError, match=r"^mix.token_budgets: 100000000 at synthetic fraction 0 needs 100000000 human "
                                        r"tokens \(1562500 blocks of 64\) but the human train split has \d+"):
        _run(executor)


def test_add_mode_plans_one_budget_per_fraction(tmp_path):
    executor = _executor(tmp_path, "mix.mode=add", "mix.human_budget=2000", "mix.synthetic_fractions=[0.0,0.5]")
    assert [u.id for u in executor.planned.units("mix")] == ["g0-p0-n2000", "g0-p0.5-n2000"]
