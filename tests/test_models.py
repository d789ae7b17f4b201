"""Models: presets of both families build, parameter counts and the FLOPs estimate agree with the built
model, pretrained checkpoints load (and a wrong vocabulary is a one-line UserError), LoRA applies,
trains through the one loop and merges into a plain model. Runtime ~15 s."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from pipeline.config import LoraConfig, ModelConfig
from pipeline.errors import UserError
from pipeline.lm.models import (
    LORA_TARGETS,
    apply_lora,
    check_vocab,
    count_parameters,
    flops_per_token,
    matmul_parameters,
    merge_lora,
)
from pipeline.lm.loading import build_model, load_model
from pipeline.lm.presets import PRESETS


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("size", ["nano", "tiny", "mini"])
def test_presets_build_with_the_run_vocabulary_and_context(family, size):
    model = build_model(ModelConfig(family=family, size=size), vocab_size=512, block_size=64, bos_token_id=0,
                        eos_token_id=0)
    config = model.config
    preset = PRESETS[family][size]
    assert config.vocab_size == 512 and config.eos_token_id == 0 and config._attn_implementation == "sdpa"
    assert (config.num_hidden_layers, config.hidden_size) == (preset["n_layer"], preset["n_embd"])
    assert getattr(config, "n_positions", getattr(config, "max_position_embeddings", None)) == 64
    counts = count_parameters(model)
    total = sum(p.numel() for p in model.parameters())
    embeddings = 512 * preset["n_embd"] + (64 * preset["n_embd"] if family == "gpt2" else 0)
    assert counts["total"] == counts["trainable"] == total
    assert counts["non_embedding"] == total - embeddings
    # N of 6N: every weight that multiplies (the tied vocabulary projection counts, lookups do not).
    lookups = 64 * preset["n_embd"] if family == "gpt2" else 0
    assert matmul_parameters(config) == total - lookups
    d, layers = preset["n_embd"], preset["n_layer"]
    assert flops_per_token(config, 64) == 6 * (total - lookups) + 12 * layers * d * 64


def test_explicit_dimensions_override_the_preset_and_dropout_applies():
    cfg = ModelConfig(family="gpt2", size="tiny", n_layer=3, dropout=0.1)
    model = build_model(cfg, 300, 32)
    assert model.config.n_layer == 3 and model.config.n_embd == 128 and model.config.resid_pdrop == 0.1
    with pytest.raises(UserError, match="n_layer, n_embd, n_head"):
        build_model(ModelConfig(family="gpt2", size=None), 300, 32)
    with pytest.raises(UserError, match="not divisible"):
        build_model(ModelConfig(family="llama", size="nano", n_kv_head=3), 300, 32)


def test_pretrained_loads_and_checks_the_vocabulary(tmp_path):
    torch.manual_seed(0)
    original = build_model(ModelConfig(family="llama", size="nano"), 300, 32, 0, 0)
    original.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    loaded = build_model(ModelConfig(pretrained=str(tmp_path / "ckpt")), 300, 32)
    ids = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(loaded(ids).logits, original(ids).logits)
    check_vocab(250, loaded)  # fewer tokenizer ids than embedding rows: fine
    with pytest.raises(UserError, match="tokenizer has 301 tokens but the model's embedding has 300 rows"):
        build_model(ModelConfig(pretrained=str(tmp_path / "ckpt")), 301, 32)
    with pytest.raises(UserError, match="packing.block_size: 64 tokens exceed the context"):
        build_model(ModelConfig(pretrained=str(tmp_path / "ckpt")), 300, 64)
    with pytest.raises(UserError, match="pretrained: .* is not a loadable causal LM"):
        load_model(str(tmp_path / "missing"))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_lora_trains_only_adapters_and_merges_into_a_plain_model(family, tmp_path):
    from transformers import AutoModelForCausalLM

    from train_helpers import token_blocks, training_config
    from pipeline.lm.training.loop import train_model

    torch.manual_seed(0)
    base = build_model(ModelConfig(family=family, size="nano"), 96, 32, 0, 0)
    base.save_pretrained(tmp_path / "base")
    cfg = ModelConfig(pretrained=str(tmp_path / "base"), finetune="lora", lora=LoraConfig(r=4, alpha=8.0))
    model = build_model(cfg, 96, 32)
    counts = count_parameters(model)
    assert 0 < counts["trainable"] < counts["total"] // 10

    metrics = train_model(model, token_blocks(16), token_blocks(2, seed=1), training_config(epochs=2.0, lr=1e-2,
                          checkpoint_every=0), tmp_path / "run", seed=0, block_size=32)
    assert metrics["trainable_parameters"] == counts["trainable"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert not any("lora" in n for n, _ in merged.named_parameters()), "saved as a plain model"
    targets = LORA_TARGETS[family]
    base_weights, merged_weights = base.state_dict(), merged.state_dict()
    changed = {n for n in base_weights if not torch.equal(base_weights[n], merged_weights[n])}
    assert changed, "the trained adapters are merged into the saved weights"
    assert all(any(f".{t}." in n for t in targets) and n.endswith("weight") for n in changed), \
        f"only adapted projections change, not {sorted(changed)}"


def test_merge_lora_matches_the_adapter_model():
    torch.manual_seed(0)
    model = apply_lora(build_model(ModelConfig(family="gpt2", size="nano"), 96, 32), LoraConfig(r=2))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)  # a non-trivial adapter
    ids = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        plain = merge_lora(model)
        assert type(plain).__name__ == "GPT2LMHeadModel"
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="lora.target_modules"):
        apply_lora(build_model(ModelConfig(family="gpt2", size="nano"), 96, 32), LoraConfig(target_modules=["nope"]))


def test_every_model_is_built_or_loaded_after_the_vector_math_is_settled(tmp_path, monkeypatch):
    """build_model and load_model make the process's first MKL vector-math call on one thread (see
    `loading.settle_vector_math`; the property itself: tests/test_determinism.py)."""
    from pipeline.lm import loading

    calls = []
    monkeypatch.setattr(loading, "settle_vector_math", lambda: calls.append("settled"))
    model = build_model(ModelConfig(family="gpt2", size="nano"), 300, 32)
    model.save_pretrained(tmp_path / "ckpt")
    load_model(str(tmp_path / "ckpt"))
    assert calls == ["settled", "settled"]
