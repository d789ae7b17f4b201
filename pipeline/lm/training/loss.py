"""Next-token loss of the training loop: chunked over tokens, straight from the final hidden states.

The fast path (`OutputHead`) never holds the (tokens x vocabulary) fp32 logits of a whole micro-batch.
During the training forward the model's output projection is bypassed (its `forward` returns its input),
so the model hands back the final hidden states of positions 0..T-2 (`logits_to_keep`: every row has a
target). `linear_next_token_nll` then walks the tokens in chunks: logits of one chunk (hidden @ W^T in
the compute dtype, softmax in fp32), its NLL, and at once its gradients (softmax - one-hot) @ W for the
hidden states and accumulated (softmax - one-hot)^T @ hidden for W. Backward only scales the stored
gradients, so nothing is recomputed and the peak is one chunk of logits (CHUNK_ELEMENTS). The formulas
are those of the whole-batch path below (log_softmax, gather, exp in place, subtract 1 at the
targets, scale), so a CPU fp32 run that fits in one chunk computes the same numbers (see tests).

A model qualifies when its output embedding is a bias-free nn.Linear whose product IS the logits, which
`OutputHead.attach` checks numerically on one row (a model that caps or scales its logits fails it) and
not under FSDP (sharded weights are only whole inside the wrapped forward). Anything else takes the
whole-batch path, `next_token_nll` over the model's logits: a custom autograd function whose backward
turns the saved fp32 log-softmax into the gradient IN PLACE.

Rows padded onto a short micro-batch (compiled runs keep one shape) carry the target IGNORE and add
neither loss nor gradient.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch
import torch.nn.functional as F

from pipeline.lm.evaluation import IGNORE, window_logits  # IGNORE: the target of a padded position

CHUNK_ELEMENTS = 1 << 27  # logits per chunk (tokens x vocabulary): 512 MB in fp32
log = logging.getLogger("collapse")


# ---------------------------------------------------------------- whole-batch path (logits from the model)


class _NextTokenNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=-1)
        nll = -logp.gather(1, targets.unsqueeze(1)).sum()
        ctx.save_for_backward(logp, targets)
        ctx.scale, ctx.logits_dtype = scale, logits.dtype
        return nll * scale

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        logp, targets = ctx.saved_tensors
        grad = logp.exp_()  # softmax, reusing the saved buffer (no double backward through this op)
        grad.scatter_add_(1, targets.unsqueeze(1), torch.full_like(grad[:, :1], -1.0))
        grad.mul_(grad_output * ctx.scale)
        return grad.to(ctx.logits_dtype), None, None


def next_token_nll(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean",
                   valid: int | None = None) -> torch.Tensor:
    """Cross entropy of logits (..., V) against targets (...); mean or sum. `valid` counts the targets
    that are not IGNORE when some are (padded rows); None: all are."""
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1)
    count = flat_targets.numel() if valid is None else valid
    scale = 1.0 / max(count, 1) if reduction == "mean" else 1.0
    if valid is not None and valid < flat_targets.numel():  # padded rows (compiled runs only)
        return F.cross_entropy(flat_logits.float(), flat_targets, ignore_index=IGNORE, reduction="sum") * scale
    return _NextTokenNLL.apply(flat_logits, flat_targets, scale)


# ---------------------------------------------------------------- chunked path (hidden states x output weight)


def _chunk_nll_and_grads(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: float,
                         masked: bool, need_weight: bool):
    """One chunk: (summed NLL, d(scaled loss)/d hidden, d(scaled loss)/d weight or None).

    `hidden` and `weight` arrive in the compute dtype; the softmax is fp32 (as autocast would do it).
    """
    logp = torch.log_softmax((hidden @ weight.t()).float(), dim=-1)
    index = targets.clamp(min=0).unsqueeze(1) if masked else targets.unsqueeze(1)
    picked = logp.gather(1, index)
    valid = (targets != IGNORE).unsqueeze(1) if masked else None
    nll = -(picked * valid).sum() if masked else -picked.sum()
    grad = logp.exp_()  # softmax in place: the one (chunk x vocabulary) buffer is reused
    grad.scatter_add_(1, index, torch.full_like(grad[:, :1], -1.0))
    if masked:
        grad.mul_(valid)
    grad = grad.mul_(scale).to(hidden.dtype)
    grad_weight = grad.t() @ hidden if need_weight else None
    return nll, grad @ weight, grad_weight


_compiled_chunk: Callable | None = None


def _chunk_function(compiled: bool) -> Callable:
    """The chunk computation, compiled once per process when asked (fuses softmax, gather, scatter, casts)."""
    global _compiled_chunk
    if not compiled:
        return _chunk_nll_and_grads
    if _compiled_chunk is None:
        _compiled_chunk = torch.compile(_chunk_nll_and_grads, dynamic=False)
    return _compiled_chunk


def chunk_rows(tokens: int, vocabulary: int) -> int:
    """Tokens per chunk: about CHUNK_ELEMENTS logits, preferring a size that divides `tokens` evenly
    (equal chunks are one compiled shape)."""
    target = max(1, CHUNK_ELEMENTS // vocabulary)
    if tokens <= target:
        return tokens
    fewest = -(-tokens // target)
    for count in range(fewest, 2 * fewest + 1):
        if tokens % count == 0:
            return tokens // count
    return -(-tokens // fewest)


class _LinearNextTokenNLL(torch.autograd.Function):
    """Gradients are computed in forward, chunk by chunk; backward scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, scale: float, masked: bool, compute_dtype: torch.dtype,
                compiled: bool):
        rows = chunk_rows(hidden.shape[0], weight.shape[0])
        need_weight = weight.requires_grad
        chunk = _chunk_function(compiled)
        cast_weight = weight.to(compute_dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            part = slice(start, start + rows)
            nll, grad_h, grad_w = chunk(hidden[part].to(compute_dtype), cast_weight, targets[part], scale, masked,
                                        need_weight)
            total += nll
            grad_hidden[part] = grad_h
            if need_weight:
                grad_weight += grad_w
        ctx.save_for_backward(grad_hidden, grad_weight if need_weight else None)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def linear_next_token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          compute_dtype: torch.dtype = torch.float32, compiled: bool = False,
                          valid: int | None = None) -> torch.Tensor:
    """Mean next-token NLL of logits hidden @ weight^T (hidden (..., H), weight (V, H), targets (...))
    without materialising more than one chunk of logits. `valid` as in `next_token_nll` (a host integer:
    no device sync per step)."""
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    count = flat_targets.numel() if valid is None else valid
    masked = valid is not None and valid < flat_targets.numel()
    return _LinearNextTokenNLL.apply(flat_hidden, weight, flat_targets, 1.0 / max(count, 1), masked,
                                     compute_dtype, compiled)


# ---------------------------------------------------------------- the model's output head


def _passthrough(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


class OutputHead:
    """The output projection of a model whose logits are exactly hidden @ W^T: the chunked loss uses it."""

    def __init__(self, module: torch.nn.Module, compute_dtype: torch.dtype, compiled: bool) -> None:
        self.module, self.compute_dtype, self.compiled = module, compute_dtype, compiled

    @classmethod
    def attach(cls, model, sample_ids: torch.Tensor, compute_dtype: torch.dtype, compiled: bool,
               sharded: bool = False) -> "OutputHead | None":
        """The head of `model` (unwrapped, on its device) if the chunked loss computes its loss, else None."""
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if sharded or not isinstance(head, torch.nn.Linear) or head.bias is not None:
            return None
        candidate = cls(head, compute_dtype, compiled)
        if not candidate._reproduces_logits(model, sample_ids[:1]):
            log.info("train: %s post-processes its logits; using the whole-batch loss", type(model).__name__)
            return None
        return candidate

    @contextlib.contextmanager
    def bypassed(self):
        """The model returns the head's input (the final hidden states) instead of logits."""
        self.module.forward = _passthrough  # an instance attribute: the module, its weights and hooks stay
        try:
            yield
        finally:
            del self.module.forward

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, valid: int | None = None) -> torch.Tensor:
        return linear_next_token_nll(hidden, self.module.weight, targets, self.compute_dtype, self.compiled, valid)

    @torch.no_grad()
    def _reproduces_logits(self, model, ids: torch.Tensor) -> bool:
        was_training = model.training
        model.eval()
        try:
            logits = window_logits(model, ids).float()
            with self.bypassed():
                hidden = window_logits(model, ids)
        finally:
            model.train(was_training)
        if hidden.shape[-1] != self.module.in_features:
            return False
        weight = self.module.weight.to(hidden.dtype)
        ours = (hidden @ weight.t()).float()
        # bf16 autocast rounds both sides alike; a cap or a scale moves logits by far more than 1%.
        return bool((ours - logits).abs().max() <= 1e-2 * logits.abs().max() + 1e-4)


def causal_lm_loss(model, input_ids: torch.Tensor, head: OutputHead | None = None,
                   real_rows: int | None = None) -> torch.Tensor:
    """Mean next-token NLL of full blocks (position t predicts token t + 1) through the model's forward
    (DDP/FSDP hooks and autocast included). Rows from `real_rows` on are padding: no loss, no gradient."""
    targets, valid = input_ids[:, 1:], None
    if real_rows is not None and real_rows < input_ids.shape[0]:
        targets = targets.clone()
        targets[real_rows:] = IGNORE
        valid = real_rows * targets.shape[1]
    if head is None:
        return next_token_nll(window_logits(model, input_ids), targets, valid=valid)
    with head.bypassed():
        hidden = window_logits(model, input_ids)
    return head.loss(hidden, targets, valid)
