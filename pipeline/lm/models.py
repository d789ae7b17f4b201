"""Causal language models: a family + size preset, explicit dimensions, or a pretrained checkpoint.

Scratch models are real transformers classes (GPT2LMHeadModel, LlamaForCausalLM) with SDPA attention,
the vocabulary of the run's tokenizer and the context length of its packing (`model_config`). Pretrained
checkpoints train fully or through LoRA adapters (peft), merged back into a plain model before saving.
Every model is built or loaded through pipeline/lm/loading.py (custom modelling code only when the
config says `trust_remote_code: true`).

FLOPs (`flops_per_token`) follow the PaLM appendix B / nanoGPT estimate used for MFU:

    training FLOPs per token = 6 * N + 12 * L * H * Q * T

N counts the parameters that take part in a matrix multiply per token (every weight of the blocks plus
the output projection onto the vocabulary; the input-embedding and position-embedding lookups are not
multiplies), L layers, H heads of size Q (H * Q = hidden size), T the sequence length. 6N is forward (2N)
plus backward (4N); 12*L*H*Q*T is the attention score and value products (QK^T and AV: 2 * 2 * T * d
per token per layer forward, times 3 for training). Causal masking is not discounted (as in PaLM).
A forward pass alone is a third of the estimate.
"""

from __future__ import annotations

import logging

from pipeline.errors import UserError
from pipeline.lm.presets import model_dims

log = logging.getLogger("collapse")

# LoRA defaults: the attention and MLP projections of each family.
LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


# ---------------------------------------------------------------- scratch models


def model_config(model_cfg, vocab_size: int, block_size: int, bos_token_id: int | None = None,
                 eos_token_id: int | None = None):
    """The transformers config of a scratch model (no weights)."""
    from transformers import GPT2Config, LlamaConfig

    dims = model_dims(model_cfg)
    dropout = model_cfg.dropout
    common = dict(vocab_size=vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    if model_cfg.family == "gpt2":
        config = GPT2Config(n_positions=block_size, n_embd=dims["n_embd"], n_layer=dims["n_layer"],
                            n_head=dims["n_head"], resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                            **common)
    else:
        # Llama has dropout only on attention probabilities; small Llamas tie input and output embeddings.
        config = LlamaConfig(hidden_size=dims["n_embd"], num_hidden_layers=dims["n_layer"],
                             num_attention_heads=dims["n_head"], num_key_value_heads=dims["n_kv_head"],
                             intermediate_size=dims["intermediate_size"], max_position_embeddings=block_size,
                             attention_dropout=dropout, tie_word_embeddings=True, **common)
    config.loss_type = "ForCausalLM"
    return config


# ---------------------------------------------------------------- vocabulary checks and LoRA


def check_vocab(tokenizer_vocab_size: int, model, key: str = "model") -> None:
    """Every id of the tokenizer must index the model's embeddings (extra, unused model rows are fine)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if tokenizer_vocab_size > rows:
        raise UserError(f"{key}: the tokenizer has {tokenizer_vocab_size} tokens but the model's embedding has "
                        f"{rows} rows; use the model's own tokenizer (tokenizer.kind: pretrained) or a larger model")


def lora_targets(model, lora_cfg) -> list[str] | None:
    """Configured target modules, else the family default; None lets peft use its own per-architecture map."""
    if lora_cfg.target_modules:
        return list(lora_cfg.target_modules)
    return LORA_TARGETS.get(getattr(model.config, "model_type", ""))


def apply_lora(model, lora_cfg):
    """Wrap `model` with LoRA adapters (only the adapters train)."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, lora_cfg)
    model_type = getattr(model.config, "model_type", "")
    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=targets, task_type="CAUSAL_LM",
                        # GPT-2's projections are Conv1D (weights stored input x output).
                        fan_in_fan_out=model_type == "gpt2")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"lora.target_modules: {targets} do not match modules of this {model_type or 'model'} "
                        f"({' '.join(str(exc).split())[:200]}); name its linear layers") from None


def merge_lora(model):
    """A plain transformers model: LoRA adapters merged into the weights (other models pass through)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


# ---------------------------------------------------------------- sizes and FLOPs


def count_parameters(model) -> dict[str, int]:
    """total, trainable and non-embedding parameters (Kaplan et al.: without token/position embeddings).

    An output projection tied to the input embedding is the same tensor and counted once; an untied one
    is an embedding matrix too and is left out of `non_embedding`.
    """
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    embedding_ids = {id(m.weight) for m in _embedding_modules(model)}
    embedding = sum(params[i].numel() for i in embedding_ids if i in params)
    return {"total": total, "trainable": trainable, "non_embedding": total - embedding}


def _embedding_modules(model) -> list:
    import torch.nn as nn

    found = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return found + ([output] if output is not None else [])


def matmul_parameters(config) -> int:
    """Parameters multiplied per token (N in 6N): the blocks' weights plus the vocabulary projection.

    Computed from the config's shapes (so it works before a model exists); biases and norms included.
    """
    d = _get(config, "hidden_size", "n_embd")
    layers = _get(config, "num_hidden_layers", "n_layer")
    heads = _get(config, "num_attention_heads", "n_head")
    vocab = config.vocab_size
    if getattr(config, "model_type", "") == "gpt2":
        inner = config.n_inner or 4 * d
        per_layer = (3 * d * d + 3 * d) + (d * d + d) + (2 * d * inner + inner + d) + 4 * d
        return layers * per_layer + 2 * d + vocab * d
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    inner = config.intermediate_size
    attention = d * heads * head_dim * 2 + 2 * d * kv_heads * head_dim
    mlp = 3 * d * inner  # gate, up, down (SwiGLU)
    return layers * (attention + mlp + 2 * d) + d + vocab * d


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token, 6N + 12*L*H*Q*T (see the module docstring); divide by 3 for a forward pass."""
    d = _get(config, "hidden_size", "n_embd")
    layers = _get(config, "num_hidden_layers", "n_layer")
    heads = _get(config, "num_attention_heads", "n_head")
    head_dim = getattr(config, "head_dim", None) or d // heads
    return 6.0 * matmul_parameters(config) + 12.0 * layers * heads * head_dim * seq_len


def _get(config, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise UserError(f"model config {type(config).__name__} has none of {', '.join(names)}; "
                    "cannot estimate its FLOPs")
