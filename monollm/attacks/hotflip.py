"""`hotflip`: per-example token flips inside the context (Ebrahimi et al. 2018).

For every test example, up to F flips, one at a time: each round a set of candidate
(position, token) swaps is scored exactly in batches (all still-active examples together),
and the best one is accepted if it raises the loss and the flipped text survives
decode -> encode. An example stops at F flips or when no candidate raises its loss. Only
context tokens are ever flipped; the continuation is what is scored. With attack.edit_budget
the search is monollm.attacks.flip_budget's instead: the same rounds, at exactly that many
forward passes per example (an example that finds nothing better widens to further candidates,
and never changes more than F positions), with a budget curve. How the candidates are chosen
is `ranking`; acceptance is the same for every ranking:

* "gradient": the gradient of the example's continuation loss w.r.t. its one-hot context ranks
  every allowed swap by the first-order gain grad[v] - grad[current]; the top `candidates` are
  scored. The gradient is recomputed every round (one gradient pass per active example).
* "random": `candidates` swaps drawn uniformly among the allowed (position, token) swaps of the
  whole context, afresh every round. Holds fixed the examples, the candidate count, the exact
  scoring and the acceptance; only the gradient's choice is replaced by chance (no gradient pass).
* "exact": every allowed token at each of the last `exact_positions` context positions (those
  right before the continuation, where the gradient search's flips concentrate) is scored.
  Holds fixed the examples, the scoring and the acceptance; gives up the rest of the context
  for an exhaustive search where flips matter most (no gradient pass).

Before each model's search, the gradient's guidance is measured on the clean test examples
(monollm.attacks.guidance.flip_agreement: Spearman of the first-order estimate against the
exact loss change over `guidance_sample` random swaps in all, spread over the examples) and recorded on the
attack and transfer rows; it is a measurement, not attack compute, so its forward passes are
logged but not counted in the rows' `forward_passes`.

Two random controls per model the flips were found on (S), `controls` draws each (16 by
default: the per-input family's control needs at least 16), every draw scored on every model
(M), rows `source_model` S:

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
Transfer scores the inputs found on one model on every other model. `random_flips`
(monollm.attacks.random_flips) is this attack with ranking "random", under its own name.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from monollm import progress
from monollm.attacks.common import AttackContext, AttackResult, continuation_nll, curve_fractions, rows_survive
from monollm.attacks.flip_budget import Flips, accept, budgeted_search, curve_inputs, started
from monollm.attacks.gradients import flip_scores, onehot_grad, with_flips
from monollm.attacks.guidance import Agreement, flip_agreement

RANKINGS = ("gradient", "random", "exact")
"""How a round chooses the swaps it scores exactly (module docstring)."""
CANDIDATE_ELEMENTS = 1 << 22
"""Most token ids of candidate inputs held at once (rows * candidates * T): exact ranking makes
|allowed| * exact_positions candidates per row, so rows are taken in groups that fit."""


@dataclass(frozen=True)
class HotFlipConfig:
    """Budget of the flip search and of its random control."""
    max_flips: int = 5
    """Most flips per example (F)."""
    candidates: int = 16
    """(position, token) swaps re-scored exactly per example and flip: the top ones by first-order
    gain ("gradient" ranking) or random ones ("random"); unused by "exact"."""
    controls: int = 16
    """Draws of each random control per model searched (module docstring): random tokens at the
    attack's own positions (the primary control), and at as many random positions. At least 1; the
    family control (the per-example maximum over as many draws as there are distinct members) needs
    at least 16, so that an average over the draws no longer moves with the control sample."""
    max_tries: int = 100
    """Redraws of a random flip whose text does not survive decode -> encode."""
    ranking: str = "gradient"
    """Which swaps a round scores exactly: "gradient", "random" or "exact" (module docstring)."""
    exact_positions: int = 2
    """"exact" ranking: the last this many context positions are searched exhaustively (at most
    the context length)."""
    guidance_sample: int = 4096
    """Random swaps in all (spread over the test examples, at least 3 on each one measured:
    guidance.spread) on which the gradient's first-order estimate is compared with the exact loss
    change before each model's search (0: not measured). A total, not a number per example, so
    that the measurement's cost does not grow with attack.examples (64 examples: 64 each)."""

    TABLE: ClassVar[str] = "attack.hotflip"
    """The profile table the config comes from (named in check()'s messages)."""

    @property
    def prefix_len(self) -> int:
        """Tokens the attack prepends to a window: none (it flips tokens in place)."""
        return 0

    def check(self):
        for name in ("max_flips", "candidates", "controls", "max_tries", "exact_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{self.TABLE}: {name} must be >= 1, got {getattr(self, name)}")
        if self.guidance_sample < 0:
            raise ValueError(f"{self.TABLE}: guidance_sample must be >= 0 (0: not measured), "
                             f"got {self.guidance_sample}")
        if self.ranking not in RANKINGS:
            raise ValueError(f"{self.TABLE}.ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")


def flip_round(model, tokenizer, ids: torch.Tensor, loss: torch.Tensor, allowed: torch.Tensor, context_len: int,
               n_cont: int, params: HotFlipConfig, batch_size: int,
               rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """At most one accepted flip per row of ids (A, T) whose current loss is `loss` (A,).

    The candidates are `propose`'s (params.ranking); rows are taken in groups whose candidates
    fit CANDIDATE_ELEMENTS. Returns (new ids (A, T), new loss (A,), candidates scored per row (A,)
    int64, gradient passes per row: 1 or 0); a row with no improving, surviving candidate comes back unchanged (new loss == loss
    marks it as finished).
    """
    k = n_candidates(params, int(allowed.sum()), context_len)
    step = max(1, CANDIDATE_ELEMENTS // (k * ids.shape[1]))
    new_ids, new_loss, scored = ids.clone(), loss.clone(), []
    for start in range(0, len(ids), step):
        chunk, before = ids[start:start + step], loss[start:start + step]
        pos, tok, valid = propose(model, chunk, allowed, context_len, n_cont, params, batch_size, rng, k)
        rows = torch.arange(len(chunk), device=ids.device).repeat_interleave(k)
        cands = with_flips(chunk, rows, pos.flatten(), tok.flatten())
        cand_loss, keep = torch.full((len(cands),), float("-inf")), valid.flatten()
        if keep.any():  # a swap that is not allowed (or keeps the token) is neither scored nor counted
            cand_loss[keep] = continuation_nll(model, cands[keep.to(cands.device)], n_cont, batch_size)
        new_ids[start:start + step], new_loss[start:start + step] = accept(
            tokenizer, chunk, before, cands.view(len(chunk), k, -1), cand_loss.view(len(chunk), k))
        scored.append(keep.view(len(chunk), k).sum(dim=1).numpy())
    return new_ids, new_loss, np.concatenate(scored).astype(np.int64), int(params.ranking == "gradient")


def n_candidates(params: HotFlipConfig, n_allowed: int, context_len: int) -> int:
    """Candidates proposed per row and round (k): for "exact" every allowed token at each searched
    position (the current token among them, never scored); else `candidates`, capped by the swaps
    there are (for "random": the swaps every row has, whatever its tokens)."""
    if params.ranking == "exact":
        return params.exact_positions * n_allowed
    if params.ranking == "random":
        return min(params.candidates, (n_allowed - 1) * context_len)
    return min(params.candidates, n_allowed * context_len)


def propose(model, ids: torch.Tensor, allowed: torch.Tensor, context_len: int, n_cont: int, params: HotFlipConfig,
            batch_size: int, rng: np.random.Generator, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k candidate swaps per row of ids (b, T) under params.ranking: (positions (b, k) long,
    tokens (b, k) long, both on ids' device; valid (b, k) bool on CPU: worth scoring)."""
    V = len(allowed)
    if params.ranking == "gradient":
        tops = []
        for chunk in ids.split(batch_size):  # (b, C, V) gradients live one chunk at a time
            _, grad = onehot_grad(model, chunk, 0, context_len, n_cont, batch_size)
            tops.append(flip_scores(grad, chunk[:, :context_len], allowed).flatten(1).topk(k, dim=1))
        gain, flat = torch.cat([t.values for t in tops]), torch.cat([t.indices for t in tops])
        return flat // V, flat % V, torch.isfinite(gain).cpu()
    pool = allowed.nonzero().flatten().to(ids.device)
    if params.ranking == "exact":
        pos = torch.arange(context_len - params.exact_positions, context_len, device=ids.device)
        pos, tok = pos.repeat_interleave(len(pool)).expand(len(ids), -1), pool.repeat(params.exact_positions)
        return pos, tok.expand(len(ids), -1), (ids.gather(1, pos) != tok).cpu()
    current, n = ids[:, :context_len].cpu().numpy(), len(pool)
    pool_np = pool.cpu().numpy()
    # uniform over the (position, allowed token) pairs of each row, without replacement, current tokens excluded
    flat = np.stack([rng.choice(np.flatnonzero(pool_np[None, :] != row[:, None]), size=k, replace=False)
                     for row in current])
    flat = torch.as_tensor(flat, device=ids.device)
    return flat // n, pool[flat % n], torch.ones(flat.shape, dtype=torch.bool)


def search(model, tokenizer, ids: torch.Tensor, allowed: torch.Tensor, context_len: int, n_cont: int,
           params: HotFlipConfig, batch_size: int, log=None, rng: np.random.Generator | None = None) -> Flips:
    """Up to `params.max_flips` flips per example of ids (N, T) long, all examples batched together.
    `log`, if given, gets a progress line after every round of flips. "random" ranking draws its
    candidates from `rng` (default: a generator seeded 0)."""
    if params.ranking == "exact" and params.exact_positions > context_len:
        raise ValueError(f"attack.hotflip.exact_positions ({params.exact_positions}) must be at most the context "
                         f"length ({context_len} tokens, attack.context_len)")
    rng = np.random.default_rng(0) if rng is None else rng
    found, t0 = started(model, ids, n_cont, batch_size), time.time()
    active = torch.arange(len(ids))  # CPU indices of examples still being flipped
    for flip in range(params.max_flips):
        if not len(active):
            break
        on_device, before = active.to(ids.device), found.loss[active]
        new_ids, new_loss, scored, gradient = flip_round(model, tokenizer, found.ids[on_device], before,
                                                         allowed, context_len, n_cont, params, batch_size, rng)
        found.passes[active.numpy()] += gradient + scored
        found.forward_passes, found.candidate_evals = int(found.passes.sum()), found.candidate_evals + int(scored.sum())
        found.ids[on_device], found.loss[active] = new_ids, new_loss
        found.mark()
        active = active[new_loss > before]
        if log:
            log(progress.line("flip round", flip + 1, params.max_flips, t0)
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


def run(ctx: AttackContext, params: HotFlipConfig, name: str = "hotflip") -> list[AttackResult]:
    """Flips searched on each model, scored on every model (its own: "attack"; others: "transfer"),
    for each of them `params.controls` draws of both random controls (module docstring), each
    scored on every model with `source_model` the model the flips were found on, and, with
    ctx.edit_budget, the budget curve (`_curve`). Rows are the attack `name`'s.

    The "test" examples are attacked (per example). The search (and the guidance measurement
    before it) runs in the context's precision; every reported NLL is scored in fp32. Every row
    keeps its attacked inputs (`attacked_ids`); attack and transfer rows carry the ranking, the
    source model's gradient guidance and the budget, controls the defaults.
    """
    test, results, later, rng = ctx.test, [], [], np.random.default_rng([ctx.seed, 2])
    # own streams, so that the controls' draws do not depend on the ranking or the measurement
    guide_rng, search_rng = np.random.default_rng([ctx.seed, 3]), np.random.default_rng([ctx.seed, 4])
    for source, model in ctx.models.items():
        log = lambda msg, source=source: ctx.log(f"[{name}] {source}: {msg}")  # noqa: E731
        with ctx.searching():
            agree = _guidance(ctx, source, model, params, guide_rng, name)
            found = (budgeted_search(model, ctx.tokenizer, test, ctx.allowed, ctx.context_len, ctx.n_cont, params,
                                     ctx.batch_size, ctx.edit_budget, search_rng, log=log) if ctx.edit_budget else
                     search(model, ctx.tokenizer, test, ctx.allowed, ctx.context_len, ctx.n_cont, params,
                            ctx.batch_size, log=log, rng=search_rng))
        changed = (found.ids != test).sum(dim=1).cpu().numpy()  # only context positions ever change
        rows = ctx.score(name, found.ids, source=source, attacked_ids=found.ids.cpu().numpy(), n_changed=changed,
                         forward_passes=found.forward_passes, candidate_evals=found.candidate_evals,
                         ranking=params.ranking, guidance_spearman=agree.spearman, guidance_n=agree.n,
                         budget=ctx.edit_budget)
        log(f"{changed.mean():.2f} flips per example, {found.candidate_evals} candidates, "
            f"{found.forward_passes} forward passes ({found.passes.min()}-{found.passes.max()} per example); "
            + _summary(rows))
        results += rows + _controls(ctx, name, params, found.ids, source, rng)
        if ctx.edit_budget:
            later += _curve(ctx, name, found, rows, params.ranking)
    return results + later


def _controls(ctx: AttackContext, name: str, params: HotFlipConfig, attacked: torch.Tensor, source: str,
              rng: np.random.Generator) -> list[AttackResult]:
    """`params.controls` draws of both random controls matched to the inputs `attacked` (N, T) found
    on `source` (module docstring), each draw scored on every model (paired across models)."""
    test, out = ctx.test, []
    positions = attacked != test
    changed = positions.sum(dim=1).cpu().numpy()

    def score(inputs, **fields):
        return ctx.score(name, inputs, source=source, attacked_ids=inputs.cpu().numpy(), n_changed=changed, **fields)

    for trial in range(params.controls):
        out += score(random_tokens_at(rng, test, positions, ctx.allowed, ctx.tokenizer, params.max_tries),
                     kind="control", trial=trial)
        out += score(random_flips(rng, test, changed, ctx.allowed, ctx.context_len, ctx.tokenizer, params.max_tries),
                     kind="control_random_positions", trial=trial)
    ctx.log(f"[{name}] controls for {source}'s flips ({params.controls} draws each): "
            + _summary(out, mean_trials=True))
    return out


def _curve(ctx: AttackContext, name: str, found: Flips, own: list[AttackResult], ranking: str) -> list[AttackResult]:
    """The budget curve of a search (kind "budget", trial: the index in common.curve_fractions): per
    example its best input so far at each fraction of ctx.edit_budget (flip_budget.curve_inputs),
    scored on every model, `source_model` the searched one. Inputs already scored (the attack's own
    rows `own`, or an earlier point) are not scored again."""
    source, scored = own[0].source_model, {found.ids.cpu().numpy().tobytes(): own}
    fractions, out = curve_fractions(ctx.curve_points), []
    for i, (f, (inputs, passes)) in enumerate(zip(fractions, curve_inputs(found, fractions, ctx.edit_budget))):
        held = inputs.cpu().numpy()
        if held.tobytes() not in scored:
            scored[held.tobytes()] = ctx.score(name, inputs, source=source, attacked_ids=held, ranking=ranking,
                                               n_changed=(inputs != ctx.test).sum(dim=1).cpu().numpy())
        out += [dataclasses.replace(r, kind="budget", trial=i, budget_fraction=float(f), forward_passes=passes,
                                    candidate_evals=0, budget=ctx.edit_budget,
                                    guidance_spearman=float("nan"), guidance_n=0) for r in scored[held.tobytes()]]
    ctx.log(f"[{name}] {source}: budget curve " + ", ".join(
        f"{r.budget_fraction:g} {np.mean(r.attacked_nll - r.clean_nll):+.3f}" for r in out if r.model == source))
    return out


def _guidance(ctx: AttackContext, source: str, model, params: HotFlipConfig, rng: np.random.Generator,
              name: str) -> Agreement:
    """The gradient guidance of `source` on the clean test examples (flip_agreement), logged; a
    measurement, so its forward passes are logged and not counted as the search's."""
    if not params.guidance_sample:
        return Agreement(float("nan"), 0, 0)
    agree = flip_agreement(model, ctx.test, ctx.context_len, ctx.n_cont, ctx.allowed, params.guidance_sample, rng,
                           ctx.batch_size)
    ctx.log(f"[{name}] {source}: gradient guidance Spearman {agree.spearman:.2f} over {agree.n} swaps on "
            f"{len(np.unique(agree.swaps[:, 0]))} of {len(ctx.test)} examples ({agree.forward_passes} forward passes, "
            f"not attack compute)")
    return agree


def _summary(rows: list[AttackResult], mean_trials: bool = False) -> str:
    if not mean_trials:
        return ", ".join(f"{r.kind} {r.model} dNLL {np.mean(r.attacked_nll - r.clean_nll):+.3f}" for r in rows)
    groups: dict = {}
    for r in rows:
        groups.setdefault((r.kind, r.model), []).append(np.mean(r.attacked_nll - r.clean_nll))
    return ", ".join(f"{k} {m} dNLL {np.mean(v):+.3f}" for (k, m), v in groups.items())
