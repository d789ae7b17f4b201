"""Next-token loss with a lean backward, through the (possibly DDP/FSDP-wrapped) model's forward.

The model is asked for logits of positions 0..T-2 only (`logits_to_keep`), so every logit row has a
target and nothing is masked. Cross entropy is a custom autograd function: forward stores the fp32
log-softmax; backward turns that buffer into the gradient IN PLACE (exp -> softmax, subtract 1 at the
targets, scale). The stock path (log_softmax + nll_loss) allocates and zero-fills two more
(tokens x vocab) buffers per step, which at a 4096 vocabulary is most of the non-matmul time of a
small model on a CPU. Numerically it is the same loss and the same gradient (see tests).
"""

from __future__ import annotations

import torch

from pipeline.lm.evaluation import window_logits


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


def next_token_nll(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross entropy of logits (..., V) against targets (...), all positions valid; mean or sum."""
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1)
    scale = 1.0 / flat_targets.numel() if reduction == "mean" else 1.0
    return _NextTokenNLL.apply(flat_logits, flat_targets, scale)


def causal_lm_loss(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of full blocks: position t predicts token t + 1."""
    logits = window_logits(model, input_ids)
    return next_token_nll(logits, input_ids[:, 1:])
