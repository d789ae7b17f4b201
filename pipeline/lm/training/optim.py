"""AdamW (decay on matrices only), linear warmup + cosine decay to a floor, the precision and compile choices."""

from __future__ import annotations

import contextlib
import math

import torch


def resolve_precision(precision: str, device_type: str) -> str:
    """Accelerate's mixed_precision for a config value: auto = bf16 on GPU (fp16 if no bf16), fp32 on CPU."""
    if precision == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def resolve_compile(setting: str, device_type: str) -> bool:
    """Whether to torch.compile the model: auto = on CUDA only (on CPU compiling costs more than it saves
    at the demo's sizes, and needs a C++ toolchain)."""
    if setting == "auto":
        return device_type == "cuda"
    return setting == "on"


def compile_in_place(module: torch.nn.Module) -> None:
    """torch.compile the module's call in place: the same object and state-dict keys (checkpoints of
    compiled and eager runs are interchangeable), static shapes (one graph; the loop pads short
    micro-batches rather than recompile)."""
    import torch._inductor.config as inductor_config

    if hasattr(inductor_config, "deterministic"):
        # Exact resume: a resumed process must pick the kernels of the first one, and autotuning by
        # timing does not (a different reduction order rounds differently).
        inductor_config.deterministic = True
    module.compile(dynamic=False)


def uncompile(module: torch.nn.Module | None) -> None:
    """Back to eager calls (the caller's model after training, which samples with other shapes)."""
    if module is not None:
        module._compiled_call_impl = None


@contextlib.contextmanager
def eager(module: torch.nn.Module | None):
    """Calls of a module compiled in place run eagerly inside (validation: other shapes, eval mode, so a
    compile there would cost more than it saves)."""
    saved = getattr(module, "_compiled_call_impl", None) if module is not None else None
    uncompile(module)
    try:
        yield
    finally:
        if module is not None:
            module._compiled_call_impl = saved


def compute_dtype(mixed_precision: str) -> torch.dtype:
    return {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear and embedding weights), none on biases and norm gains."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, training, device_type: str, sharded: bool = False) -> torch.optim.AdamW:
    """AdamW; the fused kernel where torch has one for the device (not for FSDP's sharded tensors)."""
    fused = device_type in ("cuda", "cpu") and not sharded
    return torch.optim.AdamW(param_groups(model, training.weight_decay), lr=training.lr,
                             betas=(training.beta1, training.beta2), fused=fused or None)


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based): linear warmup, then cosine to min_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, training, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(round(training.warmup_fraction * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, warmup, training.min_lr_ratio))
