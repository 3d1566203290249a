"""Per-input flip searches at an equal number of forward passes per example (attack.edit_budget),
and the budget curve of any flip search.

With a budget of B passes per example and model, every example pays 1 pass for scoring its clean
input, 1 gradient pass each time its input changes ("gradient" ranking only; the ranking it gives
is kept until the input changes again) and 1 pass per candidate scored exactly. From each input the
search holds a queue of untried swaps in the ranking's order: the top ones by first-order gain
("gradient"), a uniformly random order ("random", drawn without replacement), or every allowed
token at the last `exact_positions` positions ("exact"). A round scores the next `candidates`
swaps of the queue ("exact": all of it) and accepts the best one that raises the loss and survives
decode -> encode, as the unbudgeted search does. Where none does, the example widens: its next
round scores the next swaps of the same queue instead of stopping. Once `max_flips` context
positions differ from the clean input, only swaps at those positions are queued, so that the
number of changed positions never exceeds `max_flips`. An example stops when its passes reach B
(the last round is cut to fit, so B is never exceeded) or when no untried allowed swap is left.
Two models searched under one budget thus get the same B passes on every example that does not
run out of swaps.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from monollm import progress
from monollm.attacks.common import continuation_nll, rows_survive
from monollm.attacks.gradients import flip_scores, onehot_grad, with_flips


@dataclass
class Flips:
    """What a flip search found on one model."""
    ids: torch.Tensor
    """(N, T) long: the attacked inputs (context flipped, continuation untouched)."""
    loss: torch.Tensor
    """(N,) float32: mean continuation NLL of each attacked input, as scored by the search."""
    history: list[torch.Tensor]
    """Loss (N,) before the first flip and after every round (never decreasing per example)."""
    forward_passes: int = 0
    candidate_evals: int = 0
    passes: np.ndarray | None = None
    """(N,) int64: forward passes each example has spent (they sum to `forward_passes`)."""
    trail: list[tuple[np.ndarray, torch.Tensor]] = field(default_factory=list)
    """(passes (N,), ids (N, T)) before the first flip and after every round, aligned with
    `history`: what each example had spent and held at that point (the budget curve's source)."""

    def mark(self):
        """Record the current losses, passes and inputs as the latest point of the search."""
        self.history.append(self.loss.clone())
        self.trail.append((self.passes.copy(), self.ids.clone()))


def started(model, ids: torch.Tensor, n_cont: int, batch_size: int) -> Flips:
    """A search's starting point: the clean inputs ids (N, T) scored, one pass per example."""
    loss = continuation_nll(model, ids, n_cont, batch_size)
    found = Flips(ids.clone(), loss.clone(), [], forward_passes=len(ids), passes=np.ones(len(ids), np.int64))
    found.mark()
    return found


def accept(tokenizer, ids, loss, cands, cand_loss):
    """Per row, the highest-loss candidate above the current loss whose text survives re-tokenization.

    ids (A, T), loss (A,), cands: (A, k, T); cand_loss: (A, k) (-inf: not a candidate). Survival is
    checked best-first, one batched tokenizer call per rank, only for rows still undecided. Returns
    the new (ids, loss); a row with nothing better comes back unchanged.
    """
    ids, loss = ids.clone(), loss.clone()
    order = cand_loss.argsort(dim=1, descending=True)
    undecided = torch.ones(len(ids), dtype=torch.bool)
    for rank in range(cands.shape[1]):
        pick = order[:, rank]
        better = undecided & (cand_loss.gather(1, pick[:, None]).squeeze(1) > loss)
        undecided &= better  # rows whose next best does not improve are done
        rows = better.nonzero().flatten()
        if not len(rows):
            break
        chosen = cands[rows.to(cands.device), pick[rows].to(cands.device)]
        ok = torch.from_numpy(rows_survive(tokenizer, chosen.tolist()))
        ids[rows[ok].to(ids.device)] = chosen[ok.to(chosen.device)]
        loss[rows[ok]] = cand_loss[rows[ok], pick[rows[ok]]]
        undecided[rows[ok]] = False
    return ids, loss


def open_positions(ids: torch.Tensor, clean: torch.Tensor, context_len: int, params) -> torch.Tensor:
    """(b, C) bool CPU: the context positions a swap may touch for rows ids (b, T) of clean inputs
    clean (b, T): every position, or only the changed ones once `max_flips` of them are changed;
    "exact" ranking: of those, only the last `exact_positions`."""
    changed = (ids[:, :context_len] != clean[:, :context_len]).cpu()
    full = changed.sum(dim=1, keepdim=True) >= params.max_flips
    out = torch.where(full, changed, torch.ones_like(changed))
    if params.ranking == "exact":
        out[:, :context_len - params.exact_positions] = False
    return out


def queues(model, ids: torch.Tensor, clean: torch.Tensor, allowed: torch.Tensor, context_len: int, n_cont: int,
           params, batch_size: int, rng: np.random.Generator, room: np.ndarray) -> list[torch.Tensor]:
    """Per row of ids (b, T), its untried swaps in ranking order as flat indices position * V + token
    (1-D long CPU), at most room[i] of them: every allowed swap at an open position (`open_positions`)
    that changes the token, ordered by params.ranking (module docstring)."""
    V, open_ = len(allowed), open_positions(ids, clean, context_len, params)
    if params.ranking == "gradient":
        out = []
        for start in range(0, len(ids), batch_size):
            chunk, rows = ids[start:start + batch_size], slice(start, start + batch_size)
            _, grad = onehot_grad(model, chunk, 0, context_len, n_cont, batch_size)
            gain = flip_scores(grad, chunk[:, :context_len], allowed).masked_fill(
                ~open_[rows].to(grad.device)[:, :, None], float("-inf")).flatten(1)
            top = gain.topk(int(min(room[rows].max(), gain.shape[1])), dim=1)
            out += [i[torch.isfinite(g)][:int(r)].cpu() for g, i, r in zip(top.values, top.indices, room[rows])]
        return out
    pool, current = allowed.nonzero().flatten(), ids[:, :context_len].cpu()
    return [_drawn(rng, row_open.nonzero().flatten(), pool, cur, r, params.ranking == "random", V)
            for row_open, cur, r in zip(open_, current, room)]


def _drawn(rng: np.random.Generator, positions: torch.Tensor, pool: torch.Tensor, current: torch.Tensor, room: int,
           shuffle: bool, V: int) -> torch.Tensor:
    """At most `room` swaps (flat position * V + token) of the grid positions x pool that change
    current (C,): in a uniformly random order (`shuffle`) or position by position, tokens in id order."""
    n = len(positions) * len(pool)
    # the grid holds at most one unchanged cell per position: room + positions draws leave room valid ones
    take = min(n, int(room) + len(positions))
    cells = torch.as_tensor(rng.choice(n, size=take, replace=False)) if shuffle else torch.arange(take)
    pos, tok = positions[cells // len(pool)], pool[cells % len(pool)]
    keep = tok != current[pos]
    return (pos[keep] * V + tok[keep])[:int(room)]


def budgeted_search(model, tokenizer, ids: torch.Tensor, allowed: torch.Tensor, context_len: int, n_cont: int,
                    params, batch_size: int, budget: int, rng: np.random.Generator, log=None) -> Flips:
    """The flip search on ids (N, T) with `budget` forward passes per example (module docstring);
    all examples still searching are scored together every round."""
    found, t0 = started(model, ids, n_cont, batch_size), time.time()
    pending: list = [None] * len(ids)  # per example: its queue of untried swaps; None: rank its input afresh
    V, per_round = len(allowed), params.candidates if params.ranking != "exact" else None
    active = np.flatnonzero(found.passes < budget)
    while len(active):
        fresh = np.array([i for i in active if pending[i] is None], dtype=np.int64)
        if len(fresh):
            if params.ranking == "gradient":
                found.passes[fresh] += 1  # the gradient pass that ranks a changed input
            got = queues(model, found.ids[torch.as_tensor(fresh, device=ids.device)], ids[torch.as_tensor(
                fresh, device=ids.device)], allowed, context_len, n_cont, params, batch_size, rng,
                budget - found.passes[fresh])
            for i, q in zip(fresh, got):
                pending[i] = q
        take = {i: pending[i][:min(per_round or len(pending[i]), budget - found.passes[i])] for i in active}
        active = np.array([i for i in active if len(take[i])], dtype=np.int64)
        if not len(active):
            break
        for i in active:
            pending[i] = pending[i][len(take[i]):]
        _score_round(model, tokenizer, found, active, [take[i] for i in active], V, n_cont, batch_size, pending)
        found.forward_passes = int(found.passes.sum())
        found.mark()
        active = np.array([i for i in active if found.passes[i] < budget], dtype=np.int64)
        if log:
            log(progress.line("forward pass", int(found.passes.mean()), budget, t0, unit="passes per example")
                + f"; {len(active)}/{len(ids)} examples still searching, {found.candidate_evals} candidates")
    return found


def _score_round(model, tokenizer, found: Flips, rows: np.ndarray, swaps: list[torch.Tensor], V: int, n_cont: int,
                 batch_size: int, pending: list):
    """Score swaps[j] (flat position * V + token) on example rows[j]'s current input, accept the best
    improving one per example (`accept`) and update `found` in place; an example whose input changed
    gets its queue dropped (pending[i] = None: ranked afresh)."""
    counts = torch.tensor([len(s) for s in swaps])
    k, dev = int(counts.max()), found.ids.device
    flat = torch.stack([torch.cat([s, s[-1:].expand(k - len(s))]) for s in swaps])  # (A, k), padded by repeats
    real = torch.arange(k)[None, :] < counts[:, None]
    current = found.ids[torch.as_tensor(rows, device=dev)]
    at = torch.arange(len(rows), device=dev).repeat_interleave(k)
    cands = with_flips(current, at, (flat // V).flatten().to(dev), (flat % V).flatten().to(dev))
    cand_loss = torch.full((len(cands),), float("-inf"))
    cand_loss[real.flatten()] = continuation_nll(model, cands[real.flatten().to(dev)], n_cont, batch_size)
    before = found.loss[torch.as_tensor(rows)]
    new_ids, new_loss = accept(tokenizer, current, before, cands.view(len(rows), k, -1), cand_loss.view(len(rows), k))
    found.ids[torch.as_tensor(rows, device=dev)], found.loss[torch.as_tensor(rows)] = new_ids, new_loss
    found.passes[rows] += counts.numpy()
    found.candidate_evals += int(counts.sum())
    for i in rows[(new_loss > before).numpy()]:
        pending[i] = None


def curve_inputs(found: Flips, fractions, budget: int = 0) -> list[tuple[torch.Tensor, int]]:
    """The budget curve's inputs: for each fraction f, per example the input it held at the last
    point of `found.trail` whose passes are within f x its total (the budget where one is set, else
    what it spent), as (ids (N, T), forward passes of the search at f: per example the lesser of
    f x total and what it spent, summed). At f = 1 these are the search's final inputs and passes."""
    spent = np.stack([p for p, _ in found.trail])  # (points, N), non-decreasing down each column
    total = np.full(spent.shape[1], budget) if budget else spent[-1]
    held = torch.stack([ids for _, ids in found.trail])  # (points, N, T)
    examples = torch.arange(spent.shape[1], device=held.device)
    out = []
    for f in fractions:
        limit = np.floor(f * total + 1e-9).astype(np.int64)
        point = np.maximum((spent <= limit).sum(axis=0) - 1, 0)  # the last point within it; at least the clean input
        out.append((held[torch.as_tensor(point, device=held.device), examples], int(np.minimum(limit, spent[-1]).sum())))
    return out
