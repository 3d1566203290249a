"""`hotflip`: per-example token flips inside the context (Ebrahimi et al. 2018).

For every test example, up to F flips, one at a time: the gradient of the example's
continuation loss w.r.t. its one-hot context ranks every allowed (position, token) swap by
the first-order gain grad[v] - grad[current]; the top candidates are re-scored exactly in
one batch (all still-active examples together) and the best one is accepted if it raises
the loss and the flipped text survives decode -> encode; the gradient is then recomputed.
An example stops at F flips or when no candidate raises its loss. Only context tokens are
ever flipped; the continuation is what is scored.

Two random controls per model the flips were found on (S), `controls` draws each, every draw
scored on every model (M), rows `source_model` S:

* "control" (primary): per example, exactly the positions the attack on S changed, each set
  to a random allowed token other than the clean one. Holds fixed the examples, the flip
  positions, their count and the scoring model; only which tokens land there is random.
  Where a flip lands matters as much as what it is (the search favours the last context
  tokens), so every "above control" number is against this control. Transfer rows (found
  on S, scored on M) are compared with it on M at S's positions.
* "control_random_positions": the same number of flips per example as the attack on S, at
  random distinct context positions with random tokens. Holds fixed the examples, the count
  and the scoring model; positions and tokens are random.

Every random draw is redrawn until its text survives decode -> encode, like the attack's.
Transfer scores the inputs found on one model on every other model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from monollm import progress
from monollm.attacks.common import AttackContext, AttackResult, continuation_nll, rows_survive
from monollm.attacks.gradients import flip_scores, onehot_grad, with_flips


@dataclass(frozen=True)
class HotFlipConfig:
    """Budget of the flip search and of its random control."""
    max_flips: int = 5
    """Most flips per example (F)."""
    candidates: int = 16
    """Top first-order (position, token) swaps re-scored exactly per example and flip."""
    controls: int = 4
    """Draws of each random control per model searched (module docstring): random tokens at the
    attack's own positions (the primary control), and at as many random positions."""
    max_tries: int = 100
    """Redraws of a random flip whose text does not survive decode -> encode."""

    @property
    def prefix_len(self) -> int:
        """Tokens the attack prepends to a window: none (it flips tokens in place)."""
        return 0

    def check(self):
        for name in ("max_flips", "candidates", "controls", "max_tries"):
            if getattr(self, name) < 1:
                raise ValueError(f"attack.hotflip: {name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Flips:
    """What the search found on one model."""
    ids: torch.Tensor
    """(N, T) long: the attacked inputs (context flipped, continuation untouched)."""
    loss: torch.Tensor
    """(N,) float32: mean continuation NLL of each attacked input, as scored by the search."""
    history: list[torch.Tensor]
    """Loss (N,) before the first flip and after every round (never decreasing per example)."""
    forward_passes: int = 0
    candidate_evals: int = 0


def flip_round(model, tokenizer, ids: torch.Tensor, loss: torch.Tensor, allowed: torch.Tensor, context_len: int,
               n_cont: int, params: HotFlipConfig, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """At most one accepted flip per row of ids (A, T) whose current loss is `loss` (A,).

    Returns (new ids (A, T), new loss (A,), candidates scored); a row with no improving,
    surviving candidate comes back unchanged (new loss == loss marks it as finished).
    """
    k, V = min(params.candidates, int(allowed.sum()) * context_len), len(allowed)
    tops = []
    for chunk in ids.split(batch_size):  # (b, C, V) gradients live one chunk at a time
        _, grad = onehot_grad(model, chunk, 0, context_len, n_cont, batch_size)
        tops.append(flip_scores(grad, chunk[:, :context_len], allowed).flatten(1).topk(k, dim=1))
    gain, flat = torch.cat([t.values for t in tops]), torch.cat([t.indices for t in tops])  # (A, k)
    rows = torch.arange(len(ids), device=ids.device).repeat_interleave(k)
    cands = with_flips(ids, rows, flat.flatten() // V, flat.flatten() % V)
    cand_loss = continuation_nll(model, cands, n_cont, batch_size).view(len(ids), k)
    cand_loss[~torch.isfinite(gain.cpu())] = float("-inf")  # a swap that is not allowed
    new_ids, new_loss = _accept(tokenizer, ids, loss, cands.view(len(ids), k, -1), cand_loss)
    return new_ids, new_loss, len(cands)


def _accept(tokenizer, ids, loss, cands, cand_loss):
    """Per row, the highest-loss candidate above the current loss whose text survives re-tokenization.

    cands: (A, k, T); cand_loss: (A, k). Survival is checked best-first, one batched
    tokenizer call per rank, only for rows still undecided.
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


def search(model, tokenizer, ids: torch.Tensor, allowed: torch.Tensor, context_len: int, n_cont: int,
           params: HotFlipConfig, batch_size: int, log=None) -> Flips:
    """Up to `params.max_flips` flips per example of ids (N, T) long, all examples batched together.
    `log`, if given, gets a progress line after every round of flips."""
    loss, started = continuation_nll(model, ids, n_cont, batch_size), time.time()
    found = Flips(ids.clone(), loss.clone(), [loss.clone()], forward_passes=len(ids))
    active = torch.arange(len(ids))  # CPU indices of examples still being flipped
    for flip in range(params.max_flips):
        if not len(active):
            break
        on_device, before = active.to(ids.device), found.loss[active]
        new_ids, new_loss, scored = flip_round(model, tokenizer, found.ids[on_device], before, allowed,
                                               context_len, n_cont, params, batch_size)
        found.forward_passes += len(active) + scored  # gradient passes, then the candidates
        found.candidate_evals += scored
        found.ids[on_device], found.loss[active] = new_ids, new_loss
        found.history.append(found.loss.clone())
        active = active[new_loss > before]
        if log:
            log(progress.line("flip round", flip + 1, params.max_flips, started)
                + f"; {len(active)}/{len(ids)} examples still gaining, {found.candidate_evals} candidates")
    return found


def random_flips(rng: np.random.Generator, ids: torch.Tensor, counts: np.ndarray, allowed: torch.Tensor,
                 context_len: int, tokenizer, max_tries: int) -> torch.Tensor:
    """ids (N, T) with counts[i] distinct random context positions of row i set to random allowed
    tokens (the count-matched control); a row whose text changes under decode -> encode is
    redrawn, positions included. Returns (N, T) long."""
    def draw(i):
        return _random_tokens(rng, ids[i], rng.choice(context_len, size=int(counts[i]), replace=False), allowed)
    return _until_survive(ids, np.flatnonzero(counts > 0), draw, tokenizer, max_tries)


def random_tokens_at(rng: np.random.Generator, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor,
                     tokenizer, max_tries: int) -> torch.Tensor:
    """ids (N, T) with exactly the positions marked in `positions` (N, T) bool set to random allowed
    tokens, each different from the token it replaces (the position-matched control); a row whose
    text changes under decode -> encode is redrawn at the same positions. Returns (N, T) long."""
    where = [row.nonzero().flatten().cpu().numpy() for row in positions]
    return _until_survive(ids, np.flatnonzero([len(w) for w in where]),
                          lambda i: _random_tokens(rng, ids[i], where[i], allowed), tokenizer, max_tries)


def _random_tokens(rng: np.random.Generator, row: torch.Tensor, positions: np.ndarray,
                   allowed: torch.Tensor) -> torch.Tensor:
    """A copy of row (T,) with every position in `positions` set to a random allowed token other than its own."""
    pool = allowed.nonzero().flatten().numpy()
    out = row.clone()
    for p in positions:
        out[int(p)] = int(rng.choice(pool[pool != int(row[int(p)])]))
    return out


def _until_survive(ids: torch.Tensor, todo: np.ndarray, draw, tokenizer, max_tries: int) -> torch.Tensor:
    """ids (N, T) with rows `todo` replaced by draw(i) (T,), redrawing rows whose text does not
    survive decode -> encode (one batched tokenizer call per round)."""
    out = ids.clone()
    for _ in range(max_tries):
        if not len(todo):
            return out
        drawn = [draw(i) for i in todo]
        ok = rows_survive(tokenizer, [r.tolist() for r in drawn])
        for i, row, good in zip(todo, drawn, ok):
            if good:
                out[i] = row
        todo = todo[~ok]
    raise RuntimeError(f"{len(todo)} examples got no random flips that survive decode -> encode in {max_tries} draws")


def run(ctx: AttackContext, params: HotFlipConfig) -> list[AttackResult]:
    """Flips searched on each model, scored on every model (its own: "attack"; others: "transfer"),
    and for each of them `params.controls` draws of both random controls (module docstring),
    each scored on every model with `source_model` the model the flips were found on.

    hotflip attacks the "test" examples (per example). The search runs in the context's precision;
    every reported NLL is scored in fp32. Every row keeps its attacked inputs (`attacked_ids`).
    """
    test, results, rng = ctx.test, [], np.random.default_rng([ctx.seed, 2])

    def score(attacked, source, **fields):
        return ctx.score("hotflip", attacked, source=source, attacked_ids=attacked.cpu().numpy(), **fields)

    for source, model in ctx.models.items():
        with ctx.searching():
            found = search(model, ctx.tokenizer, test, ctx.allowed, ctx.context_len, ctx.n_cont, params,
                           ctx.batch_size, log=lambda msg, source=source: ctx.log(f"[hotflip] {source}: {msg}"))
        positions = found.ids != test  # (N, T) bool: only context positions ever change
        changed = positions.sum(dim=1).cpu().numpy()
        rows = score(found.ids, source, n_changed=changed, forward_passes=found.forward_passes,
                     candidate_evals=found.candidate_evals)
        ctx.log(f"[hotflip] {source}: {changed.mean():.2f} flips per example, {found.candidate_evals} candidates; "
                + _summary(rows))
        for trial in range(params.controls):
            # the same draw on every model: controls are paired across models, like the attack's inputs
            at_positions = random_tokens_at(rng, test, positions, ctx.allowed, ctx.tokenizer, params.max_tries)
            rows += score(at_positions, source, kind="control", trial=trial, n_changed=changed)
            anywhere = random_flips(rng, test, changed, ctx.allowed, ctx.context_len, ctx.tokenizer, params.max_tries)
            rows += score(anywhere, source, kind="control_random_positions", trial=trial, n_changed=changed)
        ctx.log(f"[hotflip] controls for {source}'s flips ({params.controls} draws each): "
                + _summary([r for r in rows if r.kind != "attack" and r.kind != "transfer"], mean_trials=True))
        results += rows
    return results


def _summary(rows: list[AttackResult], mean_trials: bool = False) -> str:
    if not mean_trials:
        return ", ".join(f"{r.kind} {r.model} dNLL {np.mean(r.attacked_nll - r.clean_nll):+.3f}" for r in rows)
    groups: dict = {}
    for r in rows:
        groups.setdefault((r.kind, r.model), []).append(np.mean(r.attacked_nll - r.clean_nll))
    return ", ".join(f"{k} {m} dNLL {np.mean(v):+.3f}" for (k, m), v in groups.items())
