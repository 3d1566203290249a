"""How well the first-order estimate ranks token swaps: its agreement with the exact loss change.

The gradient-guided attacks rank candidate swaps by grad[v] - grad[current] (monollm.attacks.
gradients) and score only the best-ranked ones exactly. Where that ranking barely predicts the
exact change, the search is little better than random candidates of the same count. These
functions measure it: on a uniform random sample of allowed single-token swaps, the Spearman rank
correlation between the first-order estimate and the exact change in continuation loss. A
sample, not the attack's own top candidates, so that the number describes the whole ranking the
gradient gives, not only its head. Both functions leave the model's parameters as they were
(requires_grad flags included) and take gradients w.r.t. the one-hot input only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from monollm.attacks.common import continuation_nll, prepend
from monollm.attacks.gradients import flip_scores, onehot_grad, score_triggers, with_flips


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x (n,), ties given the average of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each group of equal values
    return (last - (counts - 1) / 2.0)[inverse.ravel()]


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences (ties: average ranks).

    NaN when there are fewer than 3 pairs, either side is constant, or any value is not finite.
    """
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if len(a) != len(b):
        raise ValueError(f"spearman needs equal lengths, got {len(a)} and {len(b)}")
    if len(a) < 3 or not (np.isfinite(a).all() and np.isfinite(b).all()) or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    ra, rb = _ranks(a) - (len(a) + 1) / 2.0, _ranks(b) - (len(b) + 1) / 2.0
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


@dataclass
class Agreement:
    """Agreement of the first-order estimate with the exact loss change on sampled swaps."""
    spearman: float
    """Flips: mean over examples of the per-example Spearman (examples where it is NaN left
    out; NaN if all are). Triggers: the one Spearman over the sampled trigger swaps."""
    n: int
    """Swaps scored exactly (summed over examples)."""
    forward_passes: int
    """Sequences through the model: gradient passes, the clean (or current-trigger) scoring and
    every swapped sequence."""
    swaps: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))
    """(n, 3) int64, one sampled swap a row: (example, position, token). For triggers, example
    is -1 (the swap applies to every example) and position is within the trigger."""
    estimate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """(n,) float64: first-order estimate of each swap's loss change."""
    exact: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """(n,) float64: exact loss change of each swap (swapped minus unswapped mean continuation NLL)."""


def _sample(scores: torch.Tensor, sample: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of up to `sample` distinct finite entries of scores (P, V), uniformly, without
    replacement: the allowed swaps (flip_scores marks the rest -inf)."""
    finite = np.flatnonzero(torch.isfinite(scores).flatten().cpu().numpy())
    return np.sort(rng.choice(finite, size=min(sample, len(finite)), replace=False))


MIN_SWAPS = 3
"""Fewest swaps an example is measured on: a Spearman needs three pairs."""


def spread(total: int, n: int) -> np.ndarray:
    """Swaps per example (n,) int: `total` spread as evenly as possible over the first
    min(n, total // MIN_SWAPS) examples (the first ones get the remainder), 0 on the rest, so that
    every example measured has a Spearman and a small total is not spread too thin to give any."""
    used = min(n, total // MIN_SWAPS)
    out = np.zeros(n, dtype=np.int64)
    if used:
        out[:used] = total // used
        out[:total % used] += 1
    return out


@torch.no_grad()
def flip_agreement(model, ids: torch.Tensor, context_len: int, n_cont: int, allowed: torch.Tensor, sample: int,
                   rng: np.random.Generator, batch_size: int) -> Agreement:
    """Gradient guidance of in-context flips (HotFlip's ranking) on the examples ids (B, T) long.

    Held fixed: the examples (context `context_len` tokens, the last `n_cont` scored), the model,
    and per example the one-hot gradient over its whole context at the clean input. Sampled:
    `sample` (position, token) swaps in all, spread over the examples (`spread`: the first
    examples only when there are too few for every one to get MIN_SWAPS), per example uniformly
    without replacement among the context positions and the allowed tokens (allowed (V,) bool)
    other than the token already there. Estimate: flip_scores (grad[v] - grad[current]). Exact:
    continuation NLL of the input with that one swap minus that of the clean input. Returns the
    mean of the per-example Spearman correlations (NaN examples left out) with every swap,
    estimate and exact change; examples without swaps cost nothing.
    """
    V, counts = len(allowed), spread(sample, len(ids))
    ids = ids[:int((counts > 0).sum())]  # the measured examples: a prefix
    if not len(ids):
        return Agreement(spearman=float("nan"), n=0, forward_passes=0)
    clean = continuation_nll(model, ids, n_cont, batch_size).numpy().astype(np.float64)
    swaps, estimate = [], []
    for start, chunk in zip(range(0, len(ids), batch_size), ids.split(batch_size)):
        _, grad = onehot_grad(model, chunk, 0, context_len, n_cont, batch_size)  # (b, C, V) one chunk at a time
        scores = flip_scores(grad, chunk[:, :context_len], allowed)
        for i, row in enumerate(scores):
            flat = _sample(row, int(counts[start + i]), rng)
            swaps.append(np.stack([np.full(len(flat), start + i), flat // V, flat % V], axis=1))
            estimate.append(row.flatten()[torch.as_tensor(flat, device=row.device)].double().cpu().numpy())
    swaps, estimate = np.concatenate(swaps).astype(np.int64), np.concatenate(estimate)
    s = torch.as_tensor(swaps, device=ids.device)
    exact = continuation_nll(model, with_flips(ids, s[:, 0], s[:, 1], s[:, 2]), n_cont, batch_size).numpy() \
        if len(swaps) else np.zeros(0)
    exact = exact.astype(np.float64) - clean[swaps[:, 0]]
    per_example = [spearman(estimate[swaps[:, 0] == e], exact[swaps[:, 0] == e]) for e in range(len(ids))]
    kept = [r for r in per_example if not np.isnan(r)]
    return Agreement(spearman=float(np.mean(kept)) if kept else float("nan"), n=len(swaps),
                     forward_passes=2 * len(ids) + len(swaps), swaps=swaps, estimate=estimate, exact=exact)


@torch.no_grad()
def trigger_agreement(model, trigger: torch.Tensor, opt: torch.Tensor, n_cont: int, allowed: torch.Tensor,
                      sample: int, rng: np.random.Generator, batch_size: int) -> Agreement:
    """Gradient guidance of a universal trigger's swaps: trigger (L,) long before every row of opt (B, T).

    Held fixed: the trigger, the examples, the model, and the one-hot gradient of the summed loss
    w.r.t. the trigger shared by every example (divided by B: the gradient of the mean loss, the
    trigger attacks' objective). Sampled: `sample` single-token swaps of the trigger, uniformly
    without replacement among its positions and the allowed tokens other than the one there.
    Estimate: flip_scores on that gradient. Exact: the mean continuation NLL over the examples with
    the swapped trigger (score_triggers) minus that with the current trigger. One Spearman over
    the sample.
    """
    L, V, B = len(trigger), len(allowed), len(opt)
    _, grad = onehot_grad(model, prepend(trigger, opt), 0, L, n_cont, batch_size, shared=True)  # (L, V)
    scores = flip_scores(grad / B, trigger, allowed)
    flat = _sample(scores, sample, rng)
    estimate = scores.flatten()[torch.as_tensor(flat, device=scores.device)].double().cpu().numpy()
    pos, tok = torch.as_tensor(flat // V, device=opt.device), torch.as_tensor(flat % V, device=opt.device)
    cands = with_flips(trigger[None], torch.zeros_like(pos), pos, tok)  # (m, L)
    current = float(score_triggers(model, trigger[None], opt, n_cont, batch_size).double().mean())
    exact = score_triggers(model, cands, opt, n_cont, batch_size).double().mean(dim=1).numpy() - current
    swaps = np.stack([np.full(len(flat), -1), flat // V, flat % V], axis=1).astype(np.int64)
    return Agreement(spearman=spearman(estimate, exact), n=len(flat), forward_passes=(2 + len(flat)) * B,
                     swaps=swaps, estimate=estimate, exact=exact)
