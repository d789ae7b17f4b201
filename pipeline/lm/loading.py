"""The one way a model is loaded: for training (`build_model`) or for inference (`load_model`).

`build_model(model_cfg, ...)` is what a training run starts from: a scratch transformer of the config's
family and size (pipeline/lm/models.py: `model_config`), or a pretrained checkpoint checked against the
run's tokenizer and context, wrapped in LoRA adapters when `finetune: lora`. `load_model(spec, ...)` reads
a saved checkpoint: a run's own `model/` directory (teacher, train), a hub id in the offline cache or a
GGUF spelling (converted once to safetensors, pipeline/lm/pretrained.py). Both go through the same
`AutoModelForCausalLM.from_pretrained` call, safetensors only, in fp32 unless a dtype is asked for; with a
device, the model is moved there in eval mode (inference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.lm.models import apply_lora, check_vocab, model_config
from pipeline.lm.pretrained import resolve

_vector_math_settled = False


def settle_vector_math() -> None:
    """One single-threaded call of MKL's vector math in this process before any model runs (idempotent).

    On CPU torch computes tanh, log, erf and others with MKL's vector-math functions, which choose their code path
    lazily, at the process's first call. When that first call is a model's forward pass it is made by several
    threads at once, and in about one fresh process in ten the threads did not compute alike: the GELU (tanh) of a
    GPT-2 block came out different at the 1e-6 level for the half of the batch one thread computed (measured on the
    2-core AMD EPYC with MKL_CBWR set: 8 of 94 fresh processes; tests/test_determinism.py failed about as often).
    One first call on a single thread (4,096 elements: below torch's grain for splitting work) settles it: 0 of 80
    differed, whether that call was tanh or log. Called by `load_model` and `build_model`, so before every forward.
    """
    global _vector_math_settled
    if not _vector_math_settled:
        import torch

        torch.log(torch.full((4096,), 2.0))
        _vector_math_settled = True


def load_model(spec: str | Path, *, trust_remote_code: bool = False, dtype: Any = None, device: Any = None):
    """AutoModelForCausalLM from a directory, a cached hub id or a GGUF spelling (converted first).

    dtype: fp32 when None ("auto" keeps the checkpoint's own). device: when given, the model is moved
    there and put in eval mode (for inference); otherwise it stays on the CPU as loaded.
    """
    import torch
    from transformers import AutoModelForCausalLM

    settle_vector_math()
    path = resolve(str(spec), trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32,
                                                     trust_remote_code=trust_remote_code, use_safetensors=True)
    except (OSError, ValueError) as exc:
        message = " ".join(str(exc).split())[:300]
        raise UserError(f"pretrained: {spec} is not a loadable causal LM ({message}); give a model directory "
                        "with safetensors weights, a hub id in the offline cache, or a .gguf file") from None
    return model if device is None else model.to(device).eval()


def build_model(model_cfg, vocab_size: int, block_size: int, bos_token_id: int | None = None,
                eos_token_id: int | None = None):
    """The model a training run starts from: freshly initialised (seed torch before calling for a
    reproducible init), or the pretrained one (fp32), checked and LoRA-wrapped as the config says."""
    if model_cfg.pretrained:
        return _pretrained_for_training(model_cfg, vocab_size, block_size)
    from transformers import AutoModelForCausalLM

    settle_vector_math()
    config = model_config(model_cfg, vocab_size, block_size, bos_token_id, eos_token_id)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def _pretrained_for_training(model_cfg, vocab_size: int, block_size: int):
    model = load_model(model_cfg.pretrained, trust_remote_code=model_cfg.trust_remote_code)
    check_vocab(vocab_size, model, key=f"model {model_cfg.label}")
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if context is not None and block_size > context:
        raise UserError(f"packing.block_size: {block_size} tokens exceed the context of {model_cfg.pretrained} "
                        f"({context}); use a block_size <= {context}")
    if model_cfg.finetune == "lora":
        model = apply_lora(model, model_cfg.lora)
    return model
