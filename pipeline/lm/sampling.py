"""Batched sampling from a causal LM: the fast path that writes the synthetic corpora.

One `model.generate` call samples a whole batch with a preallocated (static) KV cache; prompts are
left-padded so every row's next token sits in the last column. Each row stops at its first EOS
(`generate` pads the rest), and only the tokens before that EOS are kept and counted. Batches run
until the kept tokens reach the target; the last batch shrinks to what is still missing. How the
decode steps run per device (eager on CPU; compiled into CUDA graphs over bucketed batch shapes on
CUDA) is decided in one place, pipeline/lm/sampling_device.py (`decode_plan`).

Determinism that does not depend on how the work is cut up: sequence i of a shard draws its prompt
and, at generated position t, its one uniform random number from a counter-based hash of
(seed, i, t) (`InverseCdfSampler`). No global RNG state is involved, so the same sequences come out
whatever the batch size or the number of processes, and documents are accepted in sequence order up
to the target. (Floating point can differ in the last bits between batch shapes; a draw lands within
that distance of a CDF boundary with probability ~1e-7 per token.)

What that promises, precisely:
- CPU (fp32, eager): the same seed and shard give the same text bit for bit, whatever the batch size
  and process count, up to the floating-point ties above.
- CUDA (bf16, compiled decode): the text is a function of seed, shard, batch size and number of
  processes, on a given GPU model and software versions. Those alone fix the sequence of batches and
  the bucket each batch is padded to; each bucket shape runs its own graph, whose kernels are chosen
  without timing (sampling_device.compile_settings). So running a shard twice, or rerunning a killed
  one, gives the same text. A row's numbers depend on the shape of the batch it runs in, not on the
  other rows' contents, so padding rows never change the kept rows. Across batch sizes the text is
  equal only up to floating-point ties, as on CPU, but in bf16 the logits of different batch shapes
  (other matmul kernels) differ far more often than in fp32: another batch size gives other documents
  from the same distribution. The automatic batch size follows free GPU memory, so set
  generate.batch_size to reproduce a GPU corpus. CPU and GPU text differ.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from pipeline.lm.sampling_device import DecodePlan, auto_batch_size, decode_plan, generated_columns, pad_rows

PROMPT_ATTEMPTS = 64  # redraws for a sequence whose drawn human document is too short to give a prompt


@dataclass(frozen=True)
class SamplingSettings:
    """The knobs of `generate.*` that change what is sampled."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off (transformers' do_sample would otherwise apply top_k=50 by default)
    top_p: float = 1.0
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0

    @classmethod
    def from_config(cls, generate_cfg) -> "SamplingSettings":
        return cls(**{name: getattr(generate_cfg, name) for name in cls.__dataclass_fields__})

    def as_dict(self) -> dict:
        return asdict(self)

    def generation_config(self, eos_id: int, pad_id: int, compile_config=None):
        """The GenerationConfig for `generate`: greedy over the scores `InverseCdfSampler` leaves.

        Every field that could change the output is explicit, so no checkpoint default (a
        generation_config.json with top_k=50, min_p, ...) leaks in. Repetition penalty and the minimum
        length stay transformers' own processors; they run before the sampler, as in do_sample mode.
        `compile_config` (from sampling_device.DecodePlan): compile the decode forward; None: eager.
        """
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=False, max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens or None,
            repetition_penalty=self.repetition_penalty, no_repeat_ngram_size=0, num_beams=1,
            num_return_sequences=1, eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None, use_cache=True,
            # Preallocated cache: no torch.cat of the whole cache every step (~20% faster on CPU), and fixed
            # shapes, which compiled decode needs. Eager unless the decode plan compiles (CUDA: bucketed
            # batch shapes, so a few graphs serve every call).
            cache_implementation="static", disable_compile=compile_config is None, compile_config=compile_config,
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


# ---------------------------------------------------------------- counter-based random numbers


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, generation, shard): independent streams per tuple."""
    words = []
    for part in parts:  # each part as two 32-bit words, so derived seeds can be parts again
        value = int(part) % (1 << 64)
        words += [value & 0xFFFFFFFF, value >> 32]
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def counter_hash(key, counter) -> np.ndarray:
    """splitmix64 of `key` at position `counter` (uint64 arrays broadcast): a random-access random stream."""
    with np.errstate(over="ignore"):
        x = np.asarray(key, dtype=np.uint64) + (np.asarray(counter, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniforms(keys: np.ndarray, step) -> np.ndarray:
    """float64 in [0, 1): the 53 top bits of the hash of each row's key at `step` (arrays broadcast)."""
    return (counter_hash(keys, step) >> np.uint64(11)).astype(np.float64) * 2.0**-53


class InverseCdfSampler:
    """A logits processor that draws the next token and leaves it as the row's only finite score.

    `generate(do_sample=True)` draws with torch.multinomial (global RNG; on CPU one exponential random
    number per vocabulary entry per row, ~1/3 of all sampling time for a small model). Here the warped
    scores become an unnormalised CDF (exp, cumsum) and ONE uniform per row, from the row's own
    counter-based stream, is located in it (searchsorted): the same distribution, with random numbers
    that belong to the sequence, not to the batch. generate's greedy step then picks the drawn token.
    fp32 cumsum: tokens below ~1e-7 of the mass are drawn with small error.

    The uniforms of every row and position are computed once per batch (`start_batch`) and moved to the
    model's device once: no host->device copy (a synchronisation on CUDA) per decode step. They are the
    same float64 values the per-step hash gave, so CPU text is unchanged.
    """

    def __init__(self, settings: SamplingSettings) -> None:
        self.chain = settings.warpers()
        self.table = torch.zeros((0, 0), dtype=torch.float64)
        self.prompt_width = 0

    def start_batch(self, row_keys: np.ndarray, prompt_width: int, steps: int, device: torch.device) -> None:
        """Rows' stream keys, the (left-padded) prompt width, and how many tokens generate may add."""
        table = uniforms(np.asarray(row_keys, dtype=np.uint64)[:, None], np.arange(steps, dtype=np.uint64)[None, :])
        self.table, self.prompt_width = torch.from_numpy(table).to(device), prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for warper in self.chain:
            scores = warper(input_ids, scores)
        cdf = torch.exp(scores - scores.amax(dim=-1, keepdim=True)).cumsum_(dim=-1)
        total = cdf[:, -1:]
        step = input_ids.shape[1] - self.prompt_width
        u = self.table[:, step:step + 1]
        # u * total in [0, total): right=True finds the first entry with cdf > u, never a zero-mass token.
        target = torch.minimum((u * total.double()).to(cdf.dtype), torch.nextafter(total, torch.zeros_like(total)))
        drawn = torch.searchsorted(cdf, target, right=True).clamp_(max=scores.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, drawn, 0.0)


# ---------------------------------------------------------------- prompts


def start_token_id(tokenizer) -> int:
    """The token an unconditional sample starts from: BOS if the tokenizer has one, else EOS."""
    token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("tokenizer defines neither BOS nor EOS; cannot start an unconditional sample")
    return int(token_id)


class PromptSampler:
    """The prompt of sequence i: the start token alone, or start + the first tokens of a human document.

    Document for sequence i: hash(seed, i, attempt) mod n_documents, redrawn while the document has
    no more than `prompt_tokens` tokens. Only the documents drawn are ever tokenised.
    """

    def __init__(self, start_id: int, documents: Sequence[str] | None = None,
                 encode: Callable[[list[str]], list[list[int]]] | None = None, prompt_tokens: int = 0,
                 seed: int = 0) -> None:
        if documents is not None and (encode is None or prompt_tokens < 1 or not documents):
            raise ValueError("human prompts need documents, an encode function and prompt_tokens >= 1")
        self.start_id, self.documents, self.encode = start_id, documents, encode
        self.prompt_tokens, self.key = prompt_tokens, np.uint64(derive_seed(seed, 0x50524F4D))
        self._prefixes: dict[int, list[int] | None] = {}

    @property
    def max_length(self) -> int:
        return 1 + (self.prompt_tokens if self.documents is not None else 0)

    def prompts(self, indices: np.ndarray) -> list[list[int]]:
        if self.documents is None:
            return [[self.start_id] for _ in indices]
        chosen: list[list[int] | None] = [None] * len(indices)
        for attempt in range(PROMPT_ATTEMPTS):
            todo = [j for j, prefix in enumerate(chosen) if prefix is None]
            if not todo:
                return [[self.start_id, *prefix] for prefix in chosen]
            picks = counter_hash(counter_hash(self.key, indices[todo]), attempt) % np.uint64(len(self.documents))
            self._tokenize_missing(picks.tolist())
            for j, doc in zip(todo, picks.tolist()):
                chosen[j] = self._prefixes[doc]
        raise ValueError(f"no human train document found with more than {self.prompt_tokens} tokens "
                         f"in {PROMPT_ATTEMPTS} draws; lower generate.prompt_tokens")

    def _tokenize_missing(self, doc_ids: list[int]) -> None:
        missing = sorted({d for d in doc_ids if d not in self._prefixes})
        if not missing:
            return
        for doc, ids in zip(missing, self.encode([self.documents[d] for d in missing])):
            self._prefixes[doc] = list(ids[:self.prompt_tokens]) if len(ids) > self.prompt_tokens else None


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask with padding on the LEFT (the next token is always the last column)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    return input_ids, attention_mask


# ---------------------------------------------------------------- sampling


@dataclass
class SampleResult:
    """Documents (token ids before the first EOS, in sequence order) and how fast they came."""

    documents: list[list[int]] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)
    kept_tokens: int = 0  # tokens in `documents`
    computed_tokens: int = 0  # rows x generated columns, all processes: kept + EOS + padding after early stops
    sequences: int = 0  # sequences sampled (including empty and surplus ones)
    batch_size: int = 0
    rows: list[int] = field(default_factory=list)  # real rows of each generate call (this process)
    run_rows: list[int] = field(default_factory=list)  # rows generate ran: `rows` + bucket padding (never counted)
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
    lengths = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), new_tokens.shape[1])
    return [row[:n] for row, n in zip(new_tokens.tolist(), lengths.tolist())]


@torch.inference_mode()
def sample_documents(model, settings: SamplingSettings, prompts: PromptSampler, *, target_tokens: int, eos_id: int,
                     pad_id: int, seed: int, batch_size: int | None = None, rank: int = 0, world: int = 1,
                     gather: Callable[[list], list] | None = None, progress: bool = True,
                     desc: str = "sample", plan: DecodePlan | None = None) -> SampleResult:
    """Sample documents until their tokens reach `target_tokens` (the last document may overshoot).

    The model must be on its device in eval mode. Empty documents (EOS first) are dropped. With
    world > 1, each round process `rank` samples its contiguous chunk of sequence indices and `gather`
    (e.g. accelerate.utils.gather_object) collects every process's chunk in rank order, so all
    processes accept the same documents in sequence order and return the same result. `plan`: how the
    decode steps run (default: sampling_device.decode_plan for the model's device).
    """
    from pipeline.lm.progress import progress_bar

    device = next(model.parameters()).device
    plan = plan or decode_plan(model, device)
    generation_config = settings.generation_config(eos_id, pad_id, plan.compile_config())
    sampler = InverseCdfSampler(settings)
    if batch_size is None:
        batch_size = auto_batch_size(model, prompts.max_length + settings.max_new_tokens, device)
        if world > 1:  # every process must cut the same chunk sizes: the smallest memory decides
            batch_size = min(gather([batch_size]))
    sequence_keys = np.uint64(derive_seed(seed, 0x53455153))
    result = SampleResult(batch_size=batch_size)
    bar = progress_bar(total=target_tokens, show=progress, desc=desc, unit="tok", dynamic_ncols=True, leave=False)
    # No checkpoint default (a generation_config.json with top_k=50, min_p, ...) may leak in; restored after.
    original_config, model.generation_config = model.generation_config, generation_config
    started = time.perf_counter()
    try:
        with plan.scope():
            while result.kept_tokens < target_tokens:
                rows = _rows_for_remaining(target_tokens - result.kept_tokens, result, batch_size, world,
                                           settings.max_new_tokens)
                first = result.sequences + rank * rows
                result.rows.append(rows)
                result.run_rows.append(plan.rows_to_run(rows, batch_size))
                indices = np.arange(first, first + rows, dtype=np.uint64)
                batch_prompts = prompts.prompts(indices)
                chunk = (batch_prompts, *_sample_batch(model, generation_config, sampler, batch_prompts,
                                                       counter_hash(sequence_keys, indices), result.run_rows[-1],
                                                       eos_id, pad_id))
                chunks = gather([chunk]) if world > 1 else [chunk]
                result.sequences += rows * world
                before = result.kept_tokens
                _accept(result, chunks, target_tokens)
                bar.update(min(result.kept_tokens, target_tokens) - min(before, target_tokens))
    finally:
        model.generation_config = original_config
        bar.close()
    result.seconds = time.perf_counter() - started
    return result


def _sample_batch(model, generation_config, sampler: InverseCdfSampler, batch_prompts: list[list[int]],
                  keys: np.ndarray, run_rows: int, eos_id: int, pad_id: int) -> tuple[list[list[int]], int]:
    """One generate call on `run_rows` rows: the real rows' documents and computed tokens (padding dropped)."""
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    rows = len(batch_prompts)
    run_prompts, run_keys = pad_rows(batch_prompts, keys, run_rows)
    input_ids, attention_mask = left_pad(run_prompts, pad_id)
    sampler.start_batch(run_keys, input_ids.shape[1], generation_config.max_new_tokens, device)
    output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                            generation_config=generation_config, logits_processor=LogitsProcessorList([sampler]))
    new_tokens = output[:rows, input_ids.shape[1]:].cpu()  # padding rows never leave the device
    if run_rows > rows:  # had generate run on for the padding, the real rows' columns end earlier
        new_tokens = new_tokens[:, :generated_columns(new_tokens, eos_id)]
    return cut_at_eos(new_tokens, eos_id), new_tokens.numel()


def _accept(result: SampleResult, chunks: list, target_tokens: int) -> None:
    """Append non-empty documents in sequence order until the target is reached."""
    for batch_prompts, documents, computed in chunks:
        result.computed_tokens += computed
        for prompt, doc in zip(batch_prompts, documents):
            if doc and result.kept_tokens < target_tokens:
                result.documents.append(doc)
                result.prompts.append(prompt)
                result.kept_tokens += len(doc)


def _rows_for_remaining(remaining: int, so_far: SampleResult, batch_size: int, world: int, max_new_tokens: int) -> int:
    """Rows per process for the next round: a full batch, or ~what the remaining tokens need (+10%)."""
    mean_length = so_far.kept_tokens / len(so_far.documents) if so_far.documents else max_new_tokens
    needed = math.ceil(1.1 * remaining / max(1.0, mean_length) / world) + 1
    return max(1, min(batch_size, needed))
