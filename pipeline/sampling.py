"""Batched sampling from a causal LM: the fast path that writes the synthetic corpora.

One `model.generate` call samples a whole batch with the KV cache; prompts are left-padded so every
row's next token sits in the last column. Each row stops at its first EOS (`generate` fills the rest
with padding), and only the tokens before that EOS are kept and counted. Batches run until the kept
tokens reach the target; the last batch is shrunk to what is still missing, so little is wasted.

Determinism: batch b is sampled after `torch.manual_seed(derive_seed(seed, b))`, and prompts come
from a generator seeded by `seed` too, so the same (seed, batch size) always gives the same tokens.
The automatic batch size is a power of two under a cap, so it rarely changes between runs; the
batch size actually used is reported so that a rerun can pin it (`generate.batch_size`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

CPU_BATCH_CAP = 1024  # beyond this the CPU is saturated: larger batches only add memory
GPU_BATCH_CAP = 4096
MEMORY_FRACTION = 0.5  # share of free memory the batch may use (the rest: weights, fragmentation, others)


@dataclass(frozen=True)
class SamplingSettings:
    """The knobs of `generate.*` that change what is sampled."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off (transformers would otherwise apply top_k=50 by default)
    top_p: float = 1.0
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0

    @classmethod
    def from_config(cls, generate_cfg) -> "SamplingSettings":
        return cls(**{name: getattr(generate_cfg, name) for name in cls.__dataclass_fields__})

    def generation_config(self, eos_id: int, pad_id: int):
        """The GenerationConfig for `generate`: greedy over the scores our sampler leaves (see InverseCdfSampler).

        Every field that could change the output is explicit, so no checkpoint default (a
        generation_config.json with top_k=50, min_p, ...) leaks in. Repetition penalty and the minimum
        length stay transformers' own processors; they run before the sampler, as in do_sample mode.
        """
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=False, max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens or None,
            repetition_penalty=self.repetition_penalty, no_repeat_ngram_size=0, num_beams=1,
            num_return_sequences=1, eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None, use_cache=True,
            # A preallocated cache: no torch.cat of the whole cache every step (~20% faster on CPU).
            # No torch.compile: every new batch shape would recompile.
            cache_implementation="static", disable_compile=True,
            return_dict_in_generate=False, output_scores=False,
        )

    def warpers(self) -> list:
        """transformers' own temperature / top-k / top-p warpers, in the order do_sample applies them."""
        from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                            TopPLogitsWarper)

        chain = []
        if self.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k > 0:
            chain.append(TopKLogitsWarper(top_k=self.top_k))
        if self.top_p < 1.0:
            chain.append(TopPLogitsWarper(top_p=self.top_p))
        return chain


class InverseCdfSampler:
    """A logits processor that draws the next token and leaves it as the row's only finite score.

    `generate(do_sample=True)` draws with torch.multinomial, which on CPU makes one exponential
    random number per vocabulary entry per row (~1/3 of all sampling time for a small model). Here
    the warped scores become an unnormalised CDF (exp, cumsum) and ONE uniform per row is located in
    it (searchsorted): the same distribution, one random number per row. generate's greedy step then
    picks the drawn token. fp32 cumsum: tokens below ~1e-7 of the mass are drawn with small error.
    """

    def __init__(self, settings: SamplingSettings) -> None:
        self.settings = settings
        self.chain = settings.warpers()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for warper in self.chain:
            scores = warper(input_ids, scores)
        cdf = torch.exp(scores - scores.amax(dim=-1, keepdim=True)).cumsum_(dim=-1)
        total = cdf[:, -1:]
        # u in [0, total): right=True finds the first entry with cdf > u, which never is a zero-mass token.
        u = torch.minimum(torch.rand_like(total) * total, torch.nextafter(total, torch.zeros_like(total)))
        drawn = torch.searchsorted(cdf, u, right=True).clamp_(max=scores.shape[-1] - 1)
        only_drawn = torch.full_like(scores, float("-inf"))
        return only_drawn.scatter_(1, drawn, 0.0)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, generation, shard, rank, batch): independent streams per tuple."""
    words = []
    for part in parts:  # each part as two 32-bit words, so 63-bit derived seeds can be parts again
        value = int(part) % (1 << 64)
        words += [value & 0xFFFFFFFF, value >> 32]
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def start_token_id(tokenizer) -> int:
    """The token an unconditional sample starts from: BOS if the tokenizer has one, else EOS."""
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("tokenizer defines neither BOS nor EOS; cannot start an unconditional sample")
    return int(token_id)


# ---------------------------------------------------------------- prompts


class PromptSampler:
    """Prompts for successive rows: the start token alone, or start + the first tokens of a human document."""

    def __init__(self, start_id: int, prefixes: Sequence[Sequence[int]] | None = None, seed: int = 0) -> None:
        self.start_id = start_id
        self.prefixes = [list(p) for p in prefixes] if prefixes is not None else None
        if self.prefixes is not None and not self.prefixes:
            raise ValueError("no human document is long enough to give a prompt")
        self.rng = np.random.default_rng(seed)

    @property
    def max_length(self) -> int:
        return 1 + (max(len(p) for p in self.prefixes) if self.prefixes is not None else 0)

    def take(self, n: int) -> list[list[int]]:
        if self.prefixes is None:
            return [[self.start_id] for _ in range(n)]
        picks = self.rng.integers(0, len(self.prefixes), size=n)
        return [[self.start_id, *self.prefixes[i]] for i in picks]


def human_prefixes(token_docs: Sequence[Sequence[int]], prompt_tokens: int) -> list[list[int]]:
    """The first `prompt_tokens` tokens of every document that has more than that many."""
    return [list(doc[:prompt_tokens]) for doc in token_docs if len(doc) > prompt_tokens]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask with padding on the LEFT (the next token is always the last column)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    return input_ids, attention_mask


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
    """Free accelerator memory (torch.cuda.mem_get_info) or available RAM (psutil)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def auto_batch_size(model, sequence_length: int, device: torch.device, cap: int | None = None) -> int:
    """Sequences per batch that fit in MEMORY_FRACTION of free memory, as a power of two <= cap.

    Per sequence: the KV cache of `sequence_length` tokens plus fp32 logits and the sampling buffers
    over the vocabulary. A power of two keeps the choice stable when free memory wobbles between runs.
    """
    dtype = next(model.parameters()).dtype
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    # A dynamic cache would need 2x (concatenation); the static cache we use is allocated once.
    vocabulary_buffers = 6 * 4 * cfg.vocab_size  # logits, fp32 copy, exp/cdf, the -inf output, slack
    per_sequence = sequence_length * kv_cache_bytes_per_token(model.config, dtype) + vocabulary_buffers
    cap = cap or (GPU_BATCH_CAP if device.type == "cuda" else CPU_BATCH_CAP)
    fitting = int(free_memory_bytes(device) * MEMORY_FRACTION // per_sequence)
    return max(1, min(cap, 2 ** int(math.log2(max(1, fitting)))))


def sampling_device_and_dtype(device: torch.device | str | None = None) -> tuple[torch.device, torch.dtype]:
    """bf16 on a GPU that supports it, fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return device, torch.bfloat16
    return device, torch.float32


# ---------------------------------------------------------------- sampling


@dataclass
class SampleResult:
    """Documents (token ids before the first EOS) and how fast they came."""

    documents: list[list[int]] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)
    kept_tokens: int = 0  # tokens in `documents`
    computed_tokens: int = 0  # rows x generated columns: kept + EOS + padding after early stops
    batches: int = 0
    batch_size: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.kept_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def wasted_fraction(self) -> float:
        return 1.0 - self.kept_tokens / self.computed_tokens if self.computed_tokens else 0.0


def cut_at_eos(new_tokens: torch.Tensor, eos_id: int) -> list[list[int]]:
    """Each row's tokens before its first EOS (rows without EOS ran to max_new_tokens: kept whole)."""
    is_eos = new_tokens == eos_id
    has_eos = is_eos.any(dim=1)
    lengths = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, new_tokens.shape[1], dtype=torch.long))
    rows = new_tokens.tolist()
    return [row[:n] for row, n in zip(rows, lengths.tolist())]


@torch.inference_mode()
def sample_documents(model, settings: SamplingSettings, prompts: PromptSampler, *, target_tokens: int, eos_id: int,
                     pad_id: int, seed: int, batch_size: int | None = None, progress: bool = True,
                     desc: str = "sample") -> SampleResult:
    """Sample documents until their tokens reach `target_tokens` (the last document may overshoot).

    The model must already be on its device in eval mode. Empty documents (EOS first) are dropped.
    """
    from tqdm.auto import tqdm
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    generation_config = settings.generation_config(eos_id, pad_id)
    model.generation_config = generation_config  # no checkpoint default (top_k=50, min_p, ...) may leak in
    sampler = LogitsProcessorList([InverseCdfSampler(settings)])
    if batch_size is None:
        batch_size = auto_batch_size(model, prompts.max_length + settings.max_new_tokens, device)
    result = SampleResult(batch_size=batch_size)
    bar = tqdm(total=target_tokens, desc=desc, unit="tok", disable=not progress, dynamic_ncols=True, leave=False)
    started = time.perf_counter()
    while result.kept_tokens < target_tokens:
        rows = _rows_for_remaining(target_tokens - result.kept_tokens, result, batch_size, settings.max_new_tokens)
        batch_prompts = prompts.take(rows)
        input_ids, attention_mask = left_pad(batch_prompts, pad_id)
        torch.manual_seed(derive_seed(seed, result.batches))
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                generation_config=generation_config, logits_processor=sampler)
        new_tokens = output[:, input_ids.shape[1]:].cpu()
        result.computed_tokens += new_tokens.numel()
        result.batches += 1
        before = result.kept_tokens
        for prompt, doc in zip(batch_prompts, cut_at_eos(new_tokens, eos_id)):
            if not doc:
                continue
            result.documents.append(doc)
            result.prompts.append(prompt)
            result.kept_tokens += len(doc)
            if result.kept_tokens >= target_tokens:
                break
        bar.update(min(result.kept_tokens, target_tokens) - min(before, target_tokens))
    bar.close()
    result.seconds = time.perf_counter() - started
    return result


def _rows_for_remaining(remaining: int, so_far: SampleResult, batch_size: int, max_new_tokens: int) -> int:
    """Rows for the next batch: the full batch, or ~what the remaining tokens need (+10%) near the end."""
    mean_length = so_far.kept_tokens / len(so_far.documents) if so_far.documents else max_new_tokens
    needed = math.ceil(1.1 * remaining / max(1.0, mean_length)) + 1
    return max(1, min(batch_size, needed))
