"""`gcg`: greedy coordinate gradient, a universal multi-example trigger (Zou et al. 2023).

One prefix of L tokens for all inputs, searched on a batch of `attack_opt` examples. Each
step takes the gradient of the mean continuation loss w.r.t. the one-hot trigger (summed over
the batch), keeps the top-k tokens per position by the first-order gain, samples `batch`
single-token swaps (a uniformly random position, then one of its top-k tokens), scores them
all exactly in one batched pass over the examples, and moves to the best one if it raises
the loss and the trigger survives decode -> encode on its own and before every example it will
be scored on. Unlike the original, which moves to the batch's best even when it is worse, a step
without gain keeps the trigger (and its gradient) and draws a new sample, so the objective
never decreases, as in `uat`.

`ranking = "random"` draws the k tokens per position uniformly instead of by gradient (no
gradient pass): the same search with the gradient's contribution removed.

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
class GCGConfig(TriggerConfig):
    """Budget of the greedy coordinate gradient search (and, from TriggerConfig, of its restarts
    and control). `ranking`: "gradient" (top-k by first-order gain) or "random" (k random tokens
    per position)."""
    steps: int = 16
    """Sampled batches per restart (each scored exactly in one batched pass); at most 100000 (STEP_CEILING)."""
    top_k: int = 32
    """Candidate tokens per trigger position from the first-order estimate."""
    batch: int = 64
    """Single-token swaps sampled and scored per step (duplicates are scored once)."""

    def check(self):
        skeleton.check_common("gcg", self, rankings=("gradient", "random"))
        for name in ("steps", "top_k", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"attack.gcg: {name} must be >= 1, got {getattr(self, name)}")

    def restart_passes(self, n_opt: int) -> int:
        """At most how many forward passes one restart spends on `n_opt` optimization examples (every
        step's gradient and candidates, the start and the guidance sample): what bounds the restarts
        a budget takes (monollm.checks refuses a budget that would need more than RESTART_CEILING)."""
        return (self.steps * n_opt * (1 + self.batch)
            + n_opt * (1 + self.guidance_sample))


def sample_swaps(scores: torch.Tensor, trigger: torch.Tensor, allowed: torch.Tensor, k: int, n: int,
                 rng: np.random.Generator) -> torch.Tensor:
    """`n` single-token swaps of `trigger` (L,): per swap a uniformly random position and one of
    that position's top-k tokens by `scores` (L, V) (the current token and disallowed ones never).

    Returns (M, L) long, M <= n distinct rows.
    """
    L = len(trigger)
    k = min(k, int(allowed.sum()) - 1)  # the current token is never a candidate
    top = flip_scores(scores, trigger, allowed).topk(k, dim=-1).indices  # (L, k)
    pos = torch.from_numpy(rng.integers(0, L, n)).to(trigger.device)
    col = torch.from_numpy(rng.integers(0, k, n)).to(trigger.device)
    cands = trigger.repeat(n, 1)
    cands[torch.arange(n, device=trigger.device), pos] = top[pos, col]
    return torch.unique(cands, dim=0)


def ascend(model, tokenizer, opt_ids: torch.Tensor, allowed: torch.Tensor, init: list[int], params: GCGConfig,
           n_cont: int, batch_size: int, target: float = float("inf"), max_evals: int = 0, max_passes: int = 0,
           survive: np.ndarray | None = None) -> Search:
    """GCG steps from trigger `init` on the optimization examples opt_ids (B, T) long.

    A swap is accepted only if it raises the loss and the trigger survives decode -> encode on its
    own and before every row of `survive` (N, T) (default: the optimization examples). Stops after
    `params.steps` steps, when the objective reaches `target`, once `max_evals` candidates have been
    scored or once `max_passes` forward passes have been spent (each > 0 only; the step that
    reaches a limit scores only the candidates that fit it, at least one).
    """
    examples = opt_ids.cpu().numpy() if survive is None else survive
    B = len(opt_ids)
    s = skeleton.begin(model, opt_ids, init, n_cont, batch_size)
    trigger = torch.tensor(init, device=opt_ids.device)
    rng, scores = np.random.default_rng(init), None  # seeded by the restart's start
    for _ in range(params.steps):
        if s.objective >= target or room(s, B, max_evals, max_passes) == 0:
            break
        if scores is None:  # a new trigger: new gradient (or new random ranking)
            scores, passes = swap_scores(model, trigger, opt_ids, allowed, params.ranking, n_cont, batch_size, rng)
            s.forward_passes += passes
        cands = sample_swaps(scores, trigger, allowed, params.top_k, params.batch, rng)
        left = room(s, B, max_evals, max_passes)  # after the gradient's passes
        cands = cands if left is None else cands[:max(1, left)]
        loss = score_triggers(model, cands, opt_ids, n_cont, batch_size).mean(dim=1)
        s.forward_passes += B * len(cands)
        s.candidate_evals += len(cands)
        accepted = best_surviving(tokenizer, cands, loss, s.objective, examples)
        if accepted is not None:
            trigger, scores = cands[accepted], None
            s.accept(trigger.tolist(), float(loss[accepted]))
    return s


def search(model, tokenizer, opt_ids: torch.Tensor, allowed: torch.Tensor, params: GCGConfig,
           rng: np.random.Generator, n_cont: int, batch_size: int, **kw) -> list[Search]:
    """GCG searches from random triggers, `params.restarts` or a `budget`'s worth (monollm.attacks.trigger.search)."""
    return skeleton.search(model, tokenizer, opt_ids, allowed, params, rng, n_cont, batch_size, ascend, **kw)


def run(ctx: AttackContext, params: GCGConfig) -> list[AttackResult]:
    """A GCG trigger searched on each model, scored on every model, plus its matched control
    (monollm.attacks.trigger.run)."""
    return skeleton.run(ctx, params, "gcg", ascend)
