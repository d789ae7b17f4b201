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

The NLL is summed in float64 over all predicted tokens; loss = sum / tokens (never a mean of batch means);
bits per byte = sum / ln 2 / bytes, where bytes are those of the predicted tokens from the tokenizer's
token -> byte-length table (`pipeline.data.tokenizer.token_byte_lengths`; EOS and other special tokens
stand for 0 bytes but their prediction is paid for). The pooled numbers are computed by the shipped
`evaluate` module `pipeline/lm/metrics/summed_nll_perplexity`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

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


@torch.no_grad()
def summed_nll(model, windows: Windows, batch_size: int, device: torch.device, precision: str = "fp32",
               progress: bool = False, desc: str = "eval") -> tuple[float, int]:
    """(sum of NLL in nats over every target, number of targets) of `windows` under `model`."""
    from pipeline.lm.progress import progress_bar

    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    starts = range(0, len(windows.inputs), batch_size)
    for start in progress_bar(starts, show=progress, desc=desc, unit="batch", leave=False, dynamic_ncols=True):
        inputs = windows.inputs[start:start + batch_size].to(device, non_blocking=True)
        targets = windows.targets[start:start + batch_size].to(device, non_blocking=True)
        with autocast_context(device, precision):
            logits = window_logits(model, inputs)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                              ignore_index=IGNORE, reduction="sum")
        total += nll.double()
        count += int((targets != IGNORE).sum())
    model.train(was_training)
    return float(total), count


def target_bytes(ids: np.ndarray, byte_lengths: np.ndarray) -> int:
    """UTF-8 bytes the predicted tokens stand for (every token of the stream is predicted once)."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) and ids.max() >= len(byte_lengths):
        raise ValueError(f"token id {int(ids.max())} is outside the tokenizer's byte table ({len(byte_lengths)} ids)")
    return int(np.asarray(byte_lengths, dtype=np.int64)[ids].sum())


def evaluate_stream(model, ids: np.ndarray, *, window: int, eos_id: int, byte_lengths: np.ndarray | None,
                    batch_size: int, device: torch.device, precision: str = "fp32", metric: Any = None,
                    progress: bool = True, desc: str = "eval") -> dict[str, Any]:
    """Loss (nats/token), perplexity and bits per byte of `model` on the token stream `ids`.

    `metric`: a loaded `summed_nll_perplexity` module (loaded by path if not given). The model's
    context must hold `window` tokens.
    """
    from pipeline.lm.metrics import load_metric

    windows = stream_windows(ids, window, eos_id)
    nll, tokens = summed_nll(model, windows, batch_size, device, precision, progress=progress, desc=desc)
    if tokens != len(ids):
        raise AssertionError(f"evaluation predicted {tokens} tokens of a {len(ids)}-token stream")
    n_bytes = target_bytes(ids, byte_lengths) if byte_lengths is not None else 0
    metric = metric or load_metric("summed_nll_perplexity")
    return metric.compute(nll_sums=[nll], token_counts=[tokens], byte_counts=[n_bytes])
