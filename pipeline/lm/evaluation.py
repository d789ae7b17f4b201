"""Held-out loss from the summed NLL of EVERY token of a split.

How every token gets predicted. The packed split (blocks of T tokens, the last one partial) is one token
stream: documents each followed by EOS. We prepend one EOS, the document separator the model saw in
training, so even the first token of the split is predicted "at the start of a document". The stream is
cut into windows of T tokens that overlap by ONE token (stride T - 1): window w holds stream positions
[w(T-1), w(T-1) + T) and predicts its last T - 1 tokens, so each token of the split is a target exactly
once. Context therefore restarts every T - 1 tokens, as in training, where each block predicts T - 1
tokens with 0..T-2 tokens of context: the held-out loss measures the same quantity training optimises
(a longer-context sliding window would give a lower number that is not comparable to the training loss).
The last window is padded with EOS and its padded targets masked out.

The NLL of every predicted token is kept and the stream's total summed once in float64, in stream
order (`stream_nll`): the batch size cannot change the result. loss = sum / tokens (never a mean of batch
means); bits per byte = sum / ln 2 / bytes, where bytes are the UTF-8 bytes of the text the tokens encode
(`pipeline.data.packing.text_bytes`: what the text is, not what a tokenizer adds to it, such as a
SentencePiece "▁" before every document). The pooled numbers are computed by the shipped
`evaluate` module `pipeline/lm/metrics/summed_nll_perplexity`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass
class Windows:
    """Overlapping windows over [EOS] + stream: inputs (W, T) and targets (W, T-1), IGNORE where padded."""

    inputs: torch.Tensor
    targets: torch.Tensor

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE).sum())

    def shard(self, rank: int, world: int) -> "Windows":
        """Windows rank, rank + world, ...; padded with empty windows so every rank gets the same count
        (collective-based wrappers such as FSDP need every process to run the same number of forwards)."""
        n = len(self.inputs)
        padded = -(-n // world) * world
        inputs, targets = self.inputs, self.targets
        if padded > n:
            fill = padded - n
            inputs = torch.cat([inputs, inputs[:1].expand(fill, -1)])
            targets = torch.cat([targets, torch.full((fill, targets.shape[1]), IGNORE, dtype=targets.dtype)])
        return Windows(inputs[rank::world], targets[rank::world])


def token_stream(dataset) -> np.ndarray:
    """All token ids of a block dataset in order (the partial last block included), int64."""
    from pipeline.data.packing import concatenated_ids

    return concatenated_ids(dataset.with_format(None)).astype(np.int64)


def stream_windows(ids: np.ndarray, window: int, eos_id: int) -> Windows:
    """Windows of `window` tokens over [eos_id] + ids with stride window - 1 (see the module docstring)."""
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    ids = np.asarray(ids, dtype=np.int64)
    n, stride = len(ids), window - 1
    n_windows = max(1, -(-n // stride))
    stream = np.full(n_windows * stride + 1, eos_id, dtype=np.int64)
    stream[1:n + 1] = ids
    inputs = torch.from_numpy(stream).unfold(0, window, stride).contiguous()
    targets = inputs[:, 1:].clone()
    target_index = torch.arange(n_windows * stride).view(n_windows, stride)
    targets[target_index >= n] = IGNORE
    return Windows(inputs, targets)


def autocast_context(device: torch.device, precision: str):
    """Autocast for bf16/fp16 evaluation; fp32 runs plain."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def window_logits(model, inputs: torch.Tensor) -> torch.Tensor:
    """Logits of positions 0..T-2 (the ones with a target): the last position's projection is skipped."""
    keep = torch.arange(inputs.shape[1] - 1, device=inputs.device)
    try:
        return model(input_ids=inputs, logits_to_keep=keep, use_cache=False).logits
    except TypeError:  # a custom (remote-code) model without logits_to_keep
        return model(input_ids=inputs, use_cache=False).logits[:, :-1]


def _batches(model, windows: Windows, batch_size: int, device: torch.device, precision: str, progress: bool,
             desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits as float32, targets) of consecutive batches of `batch_size` windows, in window order."""
    from pipeline.lm.progress import progress_bar

    starts = range(0, len(windows.inputs), batch_size)
    for start in progress_bar(starts, show=progress, desc=desc, unit="batch", leave=False, dynamic_ncols=True):
        inputs = windows.inputs[start:start + batch_size].to(device, non_blocking=True)
        targets = windows.targets[start:start + batch_size].to(device, non_blocking=True)
        with autocast_context(device, precision):
            logits = window_logits(model, inputs)
        yield logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1)


@torch.no_grad()
def summed_nll(model, windows: Windows, batch_size: int, device: torch.device, precision: str = "fp32",
               progress: bool = False, desc: str = "eval") -> tuple[float, int]:
    """(sum of NLL in nats over every target, number of targets) of `windows` under `model`.

    Each batch's NLL is summed in float32, so the last digits depend on `batch_size`: what training's
    validation uses (its numbers choose the checkpoint kept, and must stay those of finished runs).
    Held-out evaluation uses `stream_nll`, which does not depend on the batch size.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for logits, targets in _batches(model, windows, batch_size, device, precision, progress, desc):
        total += F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum").double()
        count += int((targets != IGNORE).sum())
    model.train(was_training)
    return float(total), count


@torch.no_grad()
def stream_nll(model, windows: Windows, batch_size: int, device: torch.device, precision: str = "fp32",
               progress: bool = False, desc: str = "eval") -> tuple[float, int]:
    """(sum of NLL in nats over every target, number of targets), the same whatever `batch_size`.

    Every target's NLL is kept (float32, in stream order) and the whole stream is summed once, in float64
    and in one fixed order: no per-batch partial sum whose rounding would depend on where batches end.
    (A token's own NLL does not depend on the batch on CPU; on a GPU, kernels chosen by batch shape may
    change its last bits.)
    """
    was_training = model.training
    model.eval()
    per_token = []
    for logits, targets in _batches(model, windows, batch_size, device, precision, progress, desc):
        nll = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="none")
        per_token.append(nll[targets != IGNORE].cpu())
    model.train(was_training)
    values = torch.cat(per_token).numpy().astype(np.float64) if per_token else np.zeros(0)
    return float(values.sum()), len(values)


def evaluate_stream(model, ids: np.ndarray, *, window: int, eos_id: int, n_bytes: int | None,
                    batch_size: int, device: torch.device, precision: str = "fp32", metric: Any = None,
                    progress: bool = True, desc: str = "eval") -> dict[str, Any]:
    """Loss (nats/token), perplexity and bits per byte of `model` on the token stream `ids`.

    `n_bytes`: the UTF-8 bytes of the text `ids` encode (`pipeline.data.packing.text_bytes`), the
    denominator of bits per byte (None: not known, no bits per byte). `metric`: a loaded
    `summed_nll_perplexity` module (loaded by path if not given). The model's context must hold `window` tokens.
    """
    from pipeline.lm.metrics import load_metric

    windows = stream_windows(ids, window, eos_id)
    nll, tokens = stream_nll(model, windows, batch_size, device, precision, progress=progress, desc=desc)
    if tokens != len(ids):
        raise AssertionError(f"evaluation predicted {tokens} tokens of a {len(ids)}-token stream")
    metric = metric or load_metric("summed_nll_perplexity")
    return metric.compute(nll_sums=[nll], token_counts=[tokens], byte_counts=[n_bytes or 0])
