"""`uat`: universal adversarial trigger (Wallace et al. 2019).

One prefix of L tokens for all inputs, found by coordinate ascent on `attack_opt` examples.
Each step proposes single-token swaps of the trigger, scores them exactly in batches, then
the combinations of the best improving swap at each position (also scored exactly), and
accepts the best of them if it raises the loss and survives decode -> encode on its own and
before every example it will be scored on. How the swaps are proposed is `ranking`:

* "gradient": the gradient of the mean continuation loss w.r.t. the one-hot trigger ranks
  every swap by its first-order gain; the top-k tokens per position are scored, then (when
  none helps) the next ranks under the same gradient;
* "random": the same counts, ranked at random (no gradient) -- what the gradient adds;
* "exact": every allowed token at one position per step, positions in turn, until a whole
  round of positions brings no gain (no gradient: nothing rests on the first-order estimate).

Restarts, selection, test scoring, transfer, the matched control, checkpoints and the
gradient guidance measurement are the trigger-attack skeleton's (monollm.attacks.trigger).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from monollm.attacks import trigger as skeleton
from monollm.attacks.common import AttackContext, AttackResult
from monollm.attacks.gradients import flip_scores, score_triggers
from monollm.attacks.trigger import Search, TriggerConfig, best_surviving, room, swap_scores

@dataclass(frozen=True)
class UATConfig(TriggerConfig):
    """Budget of the universal trigger search (and, from TriggerConfig, of its restarts and control)."""
    steps: int = 10
    """Scoring rounds per restart: one batched exact re-score each, after a new gradient (or a
    widening, below); a restart also ends early when no candidate raises the loss. At most 100000
    (STEP_CEILING)."""
    top_k: int = 8
    """Candidate tokens per trigger position from the first-order estimate (L * k re-scored per round)."""
    widen: int = 4
    """When no swap among the top k raises the loss, the next ranks are scored (k more, then
    doubling) under the same gradient, up to the top `k * widen`, before the ascent stops."""

    def check(self):
        skeleton.check_common("uat", self)
        for name in ("steps", "top_k", "widen"):
            if getattr(self, name) < 1:
                raise ValueError(f"attack.uat: {name} must be >= 1, got {getattr(self, name)}")

    def restart_passes(self, n_opt: int) -> int:
        """At most how many forward passes one restart spends on `n_opt` optimization examples (every
        step's gradient and candidates, the start and the guidance sample): what bounds the restarts
        a budget takes (monollm.checks refuses a budget that would need more than RESTART_CEILING)."""
        return (self.steps * n_opt * (1 + self.trigger_len * self.top_k * self.widen)
            + n_opt * (1 + self.guidance_sample))


def propose(grad: torch.Tensor, trigger: torch.Tensor, allowed: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Single-token swaps of `trigger` (L,) long: at every position the tokens ranked lo..hi-1 by the
    first-order gain, best gain first overall. grad: (L, V) one-hot gradient; allowed: (V,) bool.

    Returns (M, L) long, M <= L * (hi - lo).
    """
    L = len(trigger)
    gain, tokens = flip_scores(grad, trigger, allowed).topk(min(hi, int(allowed.sum())), dim=-1)
    gain, tokens = gain[:, lo:], tokens[:, lo:]
    pos = torch.arange(L, device=trigger.device).unsqueeze(1).expand_as(tokens)
    gain, pos, tokens = gain.flatten(), pos.flatten(), tokens.flatten()
    order = gain.argsort(descending=True)
    order = order[gain[order] > float("-inf")]
    cands = trigger.repeat(len(order), 1)
    cands[torch.arange(len(order), device=trigger.device), pos[order]] = tokens[order]
    return cands


class _Proposer:
    """The single-token swaps of the next step under `params.ranking` (module docstring)."""

    def __init__(self, model, opt_ids: torch.Tensor, allowed: torch.Tensor, params: UATConfig, n_cont: int,
                 batch_size: int, init: list[int]):
        self.model, self.opt_ids, self.allowed, self.params = model, opt_ids, allowed, params
        self.n_cont, self.batch_size = n_cont, batch_size
        self.rng = np.random.default_rng(init)  # "random": seeded by the restart's start
        self.depth, self.scores = 0, None  # ranks per position scored under the current scores
        self.position, self.misses = 0, 0  # "exact": next position, positions tried since a gain

    def accepted(self):
        self.depth, self.misses = 0, 0

    def next(self, trigger: torch.Tensor, s: Search) -> torch.Tensor | None:
        """(M, L) candidates, or None when this ranking has nothing left to try."""
        L, tokens = len(trigger), self.allowed.nonzero().flatten().to(trigger.device)
        if self.params.ranking == "exact":
            if self.misses >= L:
                return None
            p, self.position, self.misses = self.position % L, self.position + 1, self.misses + 1
            tokens = tokens[tokens != trigger[p]]
            cands = trigger.repeat(len(tokens), 1)
            cands[:, p] = tokens
            return cands
        if self.depth >= min(self.params.top_k * self.params.widen, len(tokens)):
            return None
        if self.depth == 0:
            self.scores, passes = swap_scores(self.model, trigger, self.opt_ids, self.allowed, self.params.ranking,
                                              self.n_cont, self.batch_size, self.rng)
            s.forward_passes += passes
        cands = propose(self.scores, trigger, self.allowed, self.depth, self.depth + (self.depth or self.params.top_k))
        self.depth += self.depth or self.params.top_k
        return cands


def ascend(model, tokenizer, opt_ids: torch.Tensor, allowed: torch.Tensor, init: list[int], params: UATConfig,
           n_cont: int, batch_size: int, target: float = float("inf"), max_evals: int = 0, max_passes: int = 0,
           survive: np.ndarray | None = None) -> Search:
    """Coordinate ascent from trigger `init` on the optimization examples opt_ids (B, T) long.

    A swap is accepted only if the trigger survives decode -> encode on its own and before every
    row of `survive` (N, T) (default: the optimization examples): give it every example the
    trigger will be scored on, so that the final choice can never fail after the search.

    Stops after `params.steps` steps, when the ranking has nothing left to propose (module
    docstring), when the objective reaches `target`, once `max_evals` candidates have been scored
    or once `max_passes` forward passes have been spent (each > 0 only; the step that reaches a
    limit scores only the candidates that fit it, at least one).
    """
    examples = opt_ids.cpu().numpy() if survive is None else survive
    B = len(opt_ids)
    s = skeleton.begin(model, opt_ids, init, n_cont, batch_size)
    trigger = torch.tensor(init, device=opt_ids.device)
    proposer = _Proposer(model, opt_ids, allowed, params, n_cont, batch_size, init)
    for _ in range(params.steps):
        left = room(s, B, max_evals, max_passes)
        cands = None if s.objective >= target or left == 0 else proposer.next(trigger, s)
        if cands is None:
            break
        left = room(s, B, max_evals, max_passes)  # after the gradient's passes
        left = max(1, left) if left is not None else None
        cands = cands[:left]
        loss = score_triggers(model, cands, opt_ids, n_cont, batch_size).mean(dim=1)
        combos = combine(trigger, cands, loss, s.objective)[:max(0, left - len(cands)) if left else None]
        if len(combos):
            cands = torch.cat([cands, combos])
            loss = torch.cat([loss, score_triggers(model, combos, opt_ids, n_cont, batch_size).mean(dim=1)])
        s.forward_passes += B * len(cands)
        s.candidate_evals += len(cands)
        accepted = best_surviving(tokenizer, cands, loss, s.objective, examples)
        if accepted is not None:
            trigger = cands[accepted]
            proposer.accepted()
            s.accept(trigger.tolist(), float(loss[accepted]))
    return s


def combine(trigger: torch.Tensor, cands: torch.Tensor, loss: torch.Tensor, current: float) -> torch.Tensor:
    """Triggers that apply several improving single swaps at once: (P - 1, L) long.

    trigger: (L,); cands: (M, L) single-token swaps of it with exact losses (M,). The best
    improving swap of each of the P positions that have one is taken, positions ordered by
    that loss; row j applies the first j + 2 of them. Swaps at different positions mostly
    add up, so one gradient step can move several positions (each combination is scored
    exactly before it can be accepted).
    """
    pos = (cands != trigger).float().argmax(dim=1)
    best: dict[int, int] = {}
    for i in loss.argsort(descending=True).tolist():
        if float(loss[i]) <= current:
            break
        best.setdefault(int(pos[i]), i)
    rows, out = trigger.clone(), []
    for p, i in best.items():
        rows = rows.clone()
        rows[p] = cands[i, p]
        out.append(rows)
    return torch.stack(out[1:]) if len(out) > 1 else trigger.new_zeros((0, len(trigger)))


def search(model, tokenizer, opt_ids: torch.Tensor, allowed: torch.Tensor, params: UATConfig,
           rng: np.random.Generator, n_cont: int, batch_size: int, **kw) -> list[Search]:
    """Ascents from random triggers, `params.restarts` or a `budget`'s worth (monollm.attacks.trigger.search
    with `ascend`)."""
    return skeleton.search(model, tokenizer, opt_ids, allowed, params, rng, n_cont, batch_size, ascend, **kw)


def run(ctx: AttackContext, params: UATConfig) -> list[AttackResult]:
    """A trigger searched on each model, scored on every model, plus its matched control
    (monollm.attacks.trigger.run)."""
    return skeleton.run(ctx, params, "uat", ascend)
