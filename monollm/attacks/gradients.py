"""First-order machinery of the gradient-guided attacks: one-hot input gradients and
batched exact re-scoring of candidates.

The gradient is taken w.r.t. a one-hot encoding of the tokens an attack may change
(inputs_embeds = onehot @ E), never w.r.t. the parameters: inside `input_grad_only`
no parameter requires grad, so backward builds no parameter graph and leaves every
`.grad` untouched. For a candidate token v at a position whose current token is c,
grad[v] - grad[c] is the first-order estimate of the change in loss from swapping c
for v (HotFlip; the UAT's top-k rule).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from monollm.attacks.common import continuation_nll, row_nll


@contextmanager
def input_grad_only(model):
    """Within the block no parameter of `model` requires grad; the old flags come back after."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def onehot_grad(model, ids: torch.Tensor, start: int, stop: int, n_cont: int, batch_size: int,
                shared: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the continuation loss w.r.t. the one-hot tokens ids[:, start:stop].

    ids: (B, T) long on the model's device; the last `n_cont` tokens are the scored targets.
    Each row's loss is its mean NLL per continuation token; the gradient is of their sum,
    so row b's gradient is that of its own loss. Returns (loss (B,) float32 CPU, grad) with
    grad (B, stop - start, V) float32 on the device, or (stop - start, V) summed over rows when
    `shared` (a universal trigger: the same tokens in every row, one one-hot for all).
    """
    assert 0 <= start < stop <= ids.shape[1] - n_cont, "only context or trigger tokens may be changed"
    assert not model.training, "attacks run on models in eval mode (no dropout in scores or gradients)"
    if shared:
        assert bool((ids[:, start:stop] == ids[:1, start:stop]).all()), "shared one-hot needs equal tokens"
    embed = model.get_input_embeddings()
    losses, grads = [], []
    with input_grad_only(model), torch.enable_grad():
        for chunk in ids.split(batch_size):
            span = chunk[:1, start:stop] if shared else chunk[:, start:stop]
            onehot = torch.nn.functional.one_hot(span, embed.weight.shape[0]).to(embed.weight.dtype)
            onehot.requires_grad_(True)
            inserted = (onehot @ embed.weight).expand(chunk.shape[0], -1, -1)
            embeds = torch.cat([embed(chunk[:, :start]), inserted, embed(chunk[:, stop:])], dim=1)
            loss = row_nll(model, chunk[:, -n_cont:], inputs_embeds=embeds)
            (grad,) = torch.autograd.grad(loss.sum(), onehot)
            losses.append(loss.detach().cpu())
            grads.append(grad.float())
    grad = torch.cat(grads)
    return torch.cat(losses), (grad.sum(dim=0) if shared else grad)


def flip_scores(grad: torch.Tensor, current: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """First-order gain of every swap: grad[..., v] - grad[..., current], -inf where not allowed.

    grad: (..., P, V) float; current: (..., P) long, the tokens now there; allowed: (V,) bool.
    Keeping the current token is not a candidate (-inf as well).
    """
    score = grad - grad.gather(-1, current.unsqueeze(-1))
    score = score.masked_fill(~allowed.to(score.device), float("-inf"))
    return score.scatter(-1, current.unsqueeze(-1), float("-inf"))


@torch.no_grad()
def score_triggers(model, triggers: torch.Tensor, examples: torch.Tensor, n_cont: int,
                   batch_size: int) -> torch.Tensor:
    """Exact loss of every candidate trigger before every example, in batches of rows.

    triggers: (M, L) long; examples: (B, T) long, both on the model's device.
    Returns (M, B) float32 on CPU: mean continuation NLL of trigger m before example b.
    Rows are built chunk by chunk, so memory does not grow with M * B.
    """
    n, (m, b) = 0, (len(triggers), len(examples))
    out = torch.empty(m * b)
    for flat in torch.arange(m * b, device=examples.device).split(batch_size):
        rows = torch.cat([triggers[flat // b], examples[flat % b]], dim=1)
        out[n:n + len(flat)] = continuation_nll(model, rows, n_cont, batch_size)
        n += len(flat)
    return out.view(m, b)


def with_flips(ids: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Candidate inputs: ids[rows[i]] with position pos[i] set to tokens[i]. ids: (B, T); others (M,).

    Returns (M, T) long.
    """
    out = ids[rows].clone()
    out[torch.arange(len(rows), device=ids.device), pos] = tokens
    return out
