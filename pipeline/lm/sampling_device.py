"""How `sample_documents` (pipeline/lm/sampling.py) runs on each device: the decode plan, the batch
size that fits in memory, and the dtype.

On CPU, decode is eager: transformers' generate would compile the forward again for every new batch
shape, and the CPU text must stay exactly what it was (the synthetic corpora are fingerprinted).

On CUDA, eager decode is bound by per-step Python and kernel-launch overhead, not by the GPU (GPT-2
124M at batch 4096: 153k tokens/s eager). There the plan lets `generate` compile the decode forward
(the static KV cache keeps its shapes fixed; transformers' CompileConfig, mode "reduce-overhead" =
CUDA graphs: one graph replay per step instead of hundreds of launches). A CUDA graph serves one
batch shape only, and `sample_documents` shrinks its last batches to what is still missing, so the
rows of a batch are padded up to a BUCKET: the batch size or one of its halvings (powers of two for
the automatic batch size). Padding rows copy the last real row (prompt and random stream); their
output is dropped before anything is counted or kept, and since every row's random numbers come from
its own sequence index, the kept rows' draws do not depend on the padding.

`decode_plan` is the one place that decides this per device; a DecodePlan can also be given to
`sample_documents` directly (tests run the bucketed path on CPU that way).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

CPU_BATCH_CAP = 1024  # beyond this the CPU is saturated: larger batches only add memory
GPU_BATCH_CAP = 4096
MEMORY_FRACTION = 0.5  # share of free memory the batch may use (the rest: weights, fragmentation, others)

# Buckets: batch_size >> j for j = 0..MAX_HALVINGS, so at most 7 graphs per batch size, under torch
# dynamo's default of 8 compilations per function. At batch/64 a GPU decode step is overhead-bound
# already (expected, not measured here), so smaller buckets would not run faster.
MAX_HALVINGS = 6
# Compilations allowed while sampling: 7 buckets per model object, and a process (the in-process
# launcher) may sample several shards, each with its own model object. Past the limit dynamo would
# silently run the forward eagerly: slower, and with other floating-point rounding than the graphs.
RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class DecodePlan:
    """How the decode steps run: compiled (CUDA graphs) or eager, and whether batches are padded to buckets."""

    compile: bool = False  # let generate compile the forward (needs cache_implementation="static")
    fullgraph: bool = False  # the forward as one graph: an error instead of a silent graph break
    bucket: bool = False  # pad each batch's rows up to bucket_size(rows, batch_size)

    def compile_config(self):
        """transformers' CompileConfig for generate, or None (then generate must get disable_compile=True)."""
        if not self.compile:
            return None
        from transformers import CompileConfig

        # dynamic=False: one static graph per bucket. With the default (None) torch would turn the batch
        # dimension symbolic at the second shape and compile a shape-generic graph.
        config = CompileConfig(fullgraph=self.fullgraph, dynamic=False, mode="reduce-overhead")
        # generate only auto-compiles on accelerators; this flag lets a test compile on CPU too (no
        # CUDA graphs there). Not a dataclass field: CompileConfig.to_dict leaves it out of torch.compile.
        config._compile_all_devices = True
        return config

    def rows_to_run(self, rows: int, batch_size: int) -> int:
        """Rows the generate call runs for `rows` real rows: their bucket, or exactly `rows` without bucketing."""
        return bucket_size(rows, batch_size) if self.bucket else rows

    def scope(self):
        """Settings held while sampling with this plan (compiled plans only; a no-op otherwise)."""
        return compile_settings() if self.compile else contextlib.nullcontext()


def decode_plan(model, device) -> DecodePlan:
    """The plan per device: CUDA compiles the decode forward into CUDA graphs over bucketed batch shapes;
    every other device (CPU) decodes eagerly and unpadded: nothing to compile for, so no padding to pay."""
    if getattr(device, "type", device) == "cuda":
        # transformers marks the models whose forward compiles without graph breaks (GPT-2, Llama, ...).
        return DecodePlan(compile=True, fullgraph=bool(getattr(model, "_can_compile_fullgraph", False)), bucket=True)
    return DecodePlan()


def bucket_size(rows: int, batch_size: int, halvings: int = MAX_HALVINGS) -> int:
    """The smallest of batch_size, batch_size // 2, ..., batch_size >> halvings (those >= 1) that holds `rows`.

    A power-of-two batch size gives power-of-two buckets (auto_batch_size always picks one); another
    batch size gives its halvings (48: 48, 24, 12, 6, 3, 1).
    """
    if not 1 <= rows <= batch_size:
        raise ValueError(f"rows {rows} must lie in 1..batch_size ({batch_size})")
    for shift in range(min(halvings, batch_size.bit_length() - 1), -1, -1):
        if batch_size >> shift >= rows:
            return batch_size >> shift
    raise AssertionError("unreachable: batch_size >> 0 holds every valid rows")


def pad_rows(prompts: list[list[int]], keys: np.ndarray, total: int) -> tuple[list[list[int]], np.ndarray]:
    """Prompts and random-stream keys padded to `total` rows with copies of the last real row.

    Copies, not new sequences: the prompt width (left padding) stays that of the real rows, and a copy
    draws what its original draws, so it stops at the same EOS and does not make generate run longer.
    """
    extra = total - len(prompts)
    if extra < 0:
        raise ValueError(f"cannot pad {len(prompts)} rows down to {total}")
    return prompts + [prompts[-1]] * extra, np.concatenate([keys, np.repeat(keys[-1:], extra)])


def generated_columns(new_tokens, eos_id: int) -> int:
    """Columns up to and including the last row's first EOS (the full width if some row has no EOS).

    Without padding rows this is the width generate returns (it stops when every row has stopped); with
    them, the real rows' part of the output is cut back to this, so padding never adds computed tokens.
    """
    is_eos = new_tokens == eos_id
    if not is_eos.any(dim=1).all():
        return int(new_tokens.shape[1])
    return int(is_eos.int().argmax(dim=1).max()) + 1


@contextlib.contextmanager
def compile_settings():
    """torch settings for compiled sampling, restored afterwards.

    - inductor's deterministic mode: no on-device benchmarking that picks kernels by timing where the
      choice changes the numerics (reduction configurations); otherwise two runs of the same shard, or a
      resumed one, could compile different kernels and round differently.
    - a higher dynamo recompile limit (RECOMPILE_LIMIT), so buckets never fall back to eager.
    Each setting is applied only if the installed torch has it.
    """
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    with contextlib.ExitStack() as stack:
        if hasattr(inductor_config, "deterministic"):
            stack.enter_context(inductor_config.patch(deterministic=True))
        for name in ("recompile_limit", "cache_size_limit"):  # the name since torch 2.6, and before
            if hasattr(dynamo_config, name):
                limit = max(RECOMPILE_LIMIT, getattr(dynamo_config, name))
                stack.enter_context(dynamo_config.patch(**{name: limit}))
                break
        yield


# ---------------------------------------------------------------- memory and batch size


def kv_cache_bytes_per_token(model_config, dtype: torch.dtype) -> int:
    """Bytes of keys + values one token adds to the cache, over all layers."""
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    n_layer = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
    n_head = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
    n_kv_head = getattr(cfg, "num_key_value_heads", None) or n_head
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_head
    return 2 * n_layer * n_kv_head * head_dim * torch.empty((), dtype=dtype).element_size()


def free_memory_bytes(device: torch.device) -> int:
    """Free accelerator memory or available RAM (psutil).

    On CUDA: what the driver reports free plus what torch's caching allocator holds unused. The driver
    alone counts the cache of an earlier sampling call as used, so a second call in the same process
    would pick a smaller automatic batch, and with it other buckets and other (bf16) text.
    """
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0] + cached)
    import psutil

    return int(psutil.virtual_memory().available)


def auto_batch_size(model, sequence_length: int, device: torch.device, cap: int | None = None) -> int:
    """Sequences per batch that fit in MEMORY_FRACTION of free memory, as a power of two <= cap.

    Per sequence: the static KV cache of `sequence_length` tokens plus the logits and the sampling
    buffers over the vocabulary. (On CPU the batch size does not change what is sampled, only how fast;
    on CUDA it does beyond ties, see sampling.py's docstring, and free memory varies: pin it there.)
    """
    dtype = next(model.parameters()).dtype
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    vocabulary_buffers = 6 * 4 * cfg.vocab_size  # logits, fp32 copy, exp/cdf, the -inf output, slack
    per_sequence = sequence_length * kv_cache_bytes_per_token(model.config, dtype) + vocabulary_buffers
    cap = cap or (GPU_BATCH_CAP if device.type == "cuda" else CPU_BATCH_CAP)
    fitting = int(free_memory_bytes(device) * MEMORY_FRACTION // per_sequence)
    return max(1, min(cap, 2 ** int(math.log2(max(1, fitting)))))


def sampling_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
