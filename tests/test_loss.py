"""The training loss's fast paths (pipeline/lm/training/loss.py, data.pad_rows) against the stock formulas.

The chunked loss runs on CUDA in the training loop; here it is checked on CPU in fp32, where it must give
the stock cross entropy and the same gradients, with chunks forced small so that several are walked.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train_helpers import BLOCK, VOCAB, tiny_model


def stock_loss_and_grads(hidden, weight, targets):
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    loss = F.cross_entropy((hidden @ weight.t()).reshape(-1, weight.shape[0]), targets.reshape(-1),
                           ignore_index=-100)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


@pytest.mark.parametrize("chunk_elements", [50 * 40, 50 * 7, 1 << 27])  # exact chunks, a ragged last one, one chunk
def test_chunked_loss_matches_cross_entropy_and_its_gradients(monkeypatch, chunk_elements):
    from pipeline.lm.training import loss as loss_module

    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    hidden = torch.randn(4, 30, 16).requires_grad_()
    weight = torch.randn(50, 16).requires_grad_()
    targets = torch.randint(0, 50, (4, 30))
    ours = loss_module.linear_next_token_nll(hidden, weight, targets)
    (ours * 2.5).backward()  # an upstream scale reaches both gradients
    stock, hidden_grad, weight_grad = stock_loss_and_grads(hidden, weight, targets)
    torch.testing.assert_close(ours.detach(), stock, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hidden.grad, hidden_grad * 2.5, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight.grad, weight_grad * 2.5, rtol=1e-5, atol=1e-7)


def test_padded_rows_carry_no_loss_and_no_gradient():
    from pipeline.lm.training.data import pad_rows
    from pipeline.lm.training.loss import IGNORE, linear_next_token_nll, next_token_nll

    batch = torch.randint(0, 50, (3, 9))
    padded, real = pad_rows(batch, 5)
    assert real == 3 and padded.shape == (5, 9) and torch.equal(padded[:3], batch)
    assert pad_rows(batch, 3) == (batch, 3)  # a full micro-batch is left alone
    torch.manual_seed(1)
    hidden = torch.randn(5, 8, 16).requires_grad_()
    weight = torch.randn(50, 16)
    targets = padded[:, 1:].clone()
    targets[real:] = IGNORE
    ours = linear_next_token_nll(hidden, weight, targets, valid=real * 8)
    ours.backward()
    stock, stock_grad, _ = stock_loss_and_grads(hidden[:real], weight, targets[:real])
    torch.testing.assert_close(ours.detach(), stock, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hidden.grad[:real], stock_grad, rtol=1e-5, atol=1e-7)
    assert not hidden.grad[real:].any()
    logits = (hidden.detach() @ weight.t()).requires_grad_()
    whole = next_token_nll(logits, targets, valid=real * 8)  # the whole-batch path masks the same rows
    torch.testing.assert_close(whole, stock, rtol=1e-6, atol=1e-6)


def test_output_head_loss_through_a_real_model_matches_the_whole_batch_loss():
    """GPT-2 ties its output projection to the input embedding: both gradient paths must arrive."""
    from pipeline.lm.training.loss import OutputHead, causal_lm_loss

    ids = torch.randint(1, VOCAB, (4, BLOCK))
    reference = tiny_model(seed=3)
    reference.train()
    expected = causal_lm_loss(reference, ids)
    expected.backward()
    model = tiny_model(seed=3)
    model.train()
    head = OutputHead.attach(model, ids[:1], torch.float32, compiled=False)
    assert head is not None
    ours = causal_lm_loss(model, ids, head)
    ours.backward()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    for (name, ours_param), (_, ref_param) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(ours_param.grad, ref_param.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert type(model.get_output_embeddings().forward).__name__ == "method"  # the bypass is undone


def test_a_model_that_post_processes_its_logits_keeps_the_whole_batch_loss():
    from pipeline.lm.training.loss import OutputHead

    model = tiny_model(seed=0).eval()
    inner = model.forward

    def capped(*args, **kwargs):  # logit soft-capping (Gemma-2 style), applied after the projection
        out = inner(*args, **kwargs)
        out.logits = torch.tanh(out.logits)
        return out

    model.forward = capped
    assert OutputHead.attach(model, torch.randint(1, VOCAB, (1, BLOCK)), torch.float32, compiled=False) is None


def test_unknown_or_missing_tracker_is_a_config_error():
    from pipeline.errors import UserError
    from pipeline.lm.training.logs import check_trackers, flat_config

    assert check_trackers(["tensorboard", "tensorboard"]) == ["tensorboard"]
    with pytest.raises(UserError, match=r"training\.trackers: unknown tracker 'tensorbord'; valid values: tensorboard"):
        check_trackers(["tensorbord"])
    assert flat_config({"a": {"b": 1, "c": None}, "d": [1, 2]}) == {"a.b": 1, "a.c": "null", "d": "[1, 2]"}
