"""Named model sizes, and the one place a model's dimensions are resolved. No torch import, so config
validation and planning stay fast.

Shapes, not weights: `pipeline.lm.models` turns a family + preset (+ explicit overrides) into a
transformers config. The CPU presets are what the demo trains in seconds; the large ones are the
Strong Model Collapse students (GPT-2 small at 12/18/24 layers) and Llama-style models for clusters.
"""

from typing import Any

from pipeline.errors import UserError

# n_layer, n_embd (hidden size), n_head; llama also n_kv_head and intermediate_size (SwiGLU width).
PRESETS: dict[str, dict[str, dict[str, int]]] = {
    "gpt2": {
        "nano": dict(n_layer=1, n_embd=64, n_head=2),          # tests
        "tiny": dict(n_layer=2, n_embd=128, n_head=2),         # ~0.9M with vocab 4096: the demo
        "mini": dict(n_layer=4, n_embd=192, n_head=4),         # ~2.6M
        "small": dict(n_layer=6, n_embd=384, n_head=6),        # ~12M
        "124M": dict(n_layer=12, n_embd=768, n_head=12),       # GPT-2 small
        "12L": dict(n_layer=12, n_embd=768, n_head=12),        # paper students: depth varies, width fixed
        "18L": dict(n_layer=18, n_embd=768, n_head=12),
        "24L": dict(n_layer=24, n_embd=768, n_head=12),
        "355M": dict(n_layer=24, n_embd=1024, n_head=16),      # GPT-2 medium
    },
    "llama": {
        "nano": dict(n_layer=1, n_embd=64, n_head=2, n_kv_head=2, intermediate_size=176),
        "tiny": dict(n_layer=2, n_embd=128, n_head=2, n_kv_head=2, intermediate_size=352),
        "mini": dict(n_layer=4, n_embd=192, n_head=4, n_kv_head=2, intermediate_size=512),
        "160M": dict(n_layer=12, n_embd=768, n_head=12, n_kv_head=12, intermediate_size=2048),
        "410M": dict(n_layer=24, n_embd=1024, n_head=16, n_kv_head=16, intermediate_size=2816),
        "1B": dict(n_layer=16, n_embd=2048, n_head=32, n_kv_head=8, intermediate_size=8192),
    },
}


def model_dims(model_cfg) -> dict[str, int]:
    """The family's preset for `model_cfg.size`, overridden by any explicit dimension in the config."""
    family = model_cfg.family
    dims: dict[str, Any] = dict(PRESETS[family].get(model_cfg.size, {})) if model_cfg.size else {}
    for key in ("n_layer", "n_embd", "n_head", "n_kv_head", "intermediate_size"):
        value = getattr(model_cfg, key, None)
        if value is not None:
            dims[key] = value
    required = ("n_layer", "n_embd", "n_head") + (("intermediate_size",) if family == "llama" else ())
    missing = [key for key in required if key not in dims]
    if missing:
        raise UserError(f"model {model_cfg.label}: size is not set and {', '.join(missing)} are missing; "
                        f"give size (one of {', '.join(PRESETS[family])}) or every dimension")
    if dims["n_embd"] % dims["n_head"]:
        raise UserError(f"model {model_cfg.label}: n_embd {dims['n_embd']} is not divisible by n_head {dims['n_head']}")
    if family == "llama":
        dims.setdefault("n_kv_head", dims["n_head"])
        if dims["n_head"] % dims["n_kv_head"]:
            raise UserError(f"model {model_cfg.label}: n_head {dims['n_head']} is not divisible by "
                            f"n_kv_head {dims['n_kv_head']}")
    return dims
