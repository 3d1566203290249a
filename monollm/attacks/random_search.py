"""`random_search`: a universal trigger found by random search, without any gradient
(in the spirit of Andriushchenko et al. 2024, "Jailbreaking leading safety-aligned LLMs with
simple adaptive attacks").

One prefix of L tokens for all inputs, searched on a batch of `attack_opt` examples. From a
random start, each step samples `batch` candidates, each the current trigger with `n_swap`
distinct random positions set to uniformly random allowed tokens (never the token already
there), scores them all exactly on the batch, and moves to the best one if it raises the loss
and the trigger survives decode -> encode on its own and before every example it will be scored
on. Nothing is ranked (ranking "random"): every candidate is a blind guess, so at an equal
forward-pass budget (attack.budget, which a profile listing this attack must set) it measures
what the gradient-guided searches (`uat`, `gcg`) gain from the model's gradient, and a model
whose gradient misleads them (gradient masking) cannot mislead it.

Restarts, selection, test scoring, transfer, the matched control, checkpoints and the budget
curve are the trigger-attack skeleton's (monollm.attacks.trigger). The gradient guidance is
measured only when `guidance_sample` > 0 (default 0: no gradient is ever computed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from monollm.attacks import trigger as skeleton
from monollm.attacks.common import AttackContext, AttackResult
from monollm.attacks.gradients import score_triggers
from monollm.attacks.trigger import Search, TriggerConfig, best_surviving, room


@dataclass(frozen=True)
class RandomSearchConfig(TriggerConfig):
    """Budget of the random search (and, from TriggerConfig, of its restarts and control).
    `ranking` is "random" (the only one: nothing is ranked)."""
    ranking: str = "random"
    """How candidates are chosen: "random" only (uniform, no gradient)."""
    guidance_sample: int = 0
    """As TriggerConfig's; 0 by default, so that this attack computes no gradient at all."""
    steps: int = 64
    """Sampled batches per restart (each scored exactly in one batched pass); at most 100000 (STEP_CEILING)."""
    batch: int = 16
    """Candidates sampled and scored per step (duplicates are scored once)."""
    n_swap: int = 1
    """Trigger positions each candidate changes (at most trigger_len)."""

    def check(self):
        skeleton.check_common("random_search", self, rankings=("random",))
        for name in ("steps", "batch", "n_swap"):
            if getattr(self, name) < 1:
                raise ValueError(f"attack.random_search: {name} must be >= 1, got {getattr(self, name)}")
        if self.n_swap > self.trigger_len:
            raise ValueError(f"attack.random_search: n_swap must be at most trigger_len ({self.trigger_len}), "
                             f"got {self.n_swap}")

    def restart_passes(self, n_opt: int) -> int:
        """At most how many forward passes one restart spends on `n_opt` optimization examples (every
        step's gradient and candidates, the start and the guidance sample): what bounds the restarts
        a budget takes (monollm.checks refuses a budget that would need more than RESTART_CEILING)."""
        return (self.steps * n_opt * self.batch
            + n_opt * (1 + self.guidance_sample))


def sample_candidates(trigger: torch.Tensor, allowed: torch.Tensor, n_swap: int, n: int,
                      rng: np.random.Generator) -> torch.Tensor:
    """`n` random changes of `trigger` (L,) long: per candidate `n_swap` distinct uniformly random
    positions, each set to a uniformly random allowed token (allowed: (V,) bool) other than the
    one there. Returns (M, L) long on trigger's device, M <= n distinct rows."""
    L, pool = len(trigger), allowed.nonzero().flatten().numpy()
    current = trigger.cpu().numpy()
    pos = np.argsort(rng.random((n, L)), axis=1)[:, :n_swap]  # distinct positions per candidate
    # uniform over the pool without the current token: draw among len(pool) - 1 and map a hit on the
    # current token to the one left out (the pool's last)
    tokens = pool[rng.integers(0, len(pool) - 1, size=pos.shape)]
    tokens = np.where(tokens == current[pos], pool[-1], tokens)
    cands = np.repeat(current[None], n, axis=0)
    np.put_along_axis(cands, pos, tokens, axis=1)
    return torch.unique(torch.as_tensor(cands, device=trigger.device), dim=0)


def ascend(model, tokenizer, opt_ids: torch.Tensor, allowed: torch.Tensor, init: list[int],
           params: RandomSearchConfig, n_cont: int, batch_size: int, target: float = float("inf"),
           max_evals: int = 0, max_passes: int = 0, survive: np.ndarray | None = None) -> Search:
    """Random-search steps from trigger `init` on the optimization examples opt_ids (B, T) long.

    A candidate is accepted only if it raises the loss and survives decode -> encode on its own
    and before every row of `survive` (N, T) (default: the optimization examples). Stops after
    `params.steps` steps, when the objective reaches `target`, once `max_evals` candidates have
    been scored or once `max_passes` forward passes have been spent (each > 0 only; the step
    that reaches a limit scores only the candidates that fit it).
    """
    examples = opt_ids.cpu().numpy() if survive is None else survive
    B = len(opt_ids)
    s = skeleton.begin(model, opt_ids, init, n_cont, batch_size)
    trigger = torch.tensor(init, device=opt_ids.device)
    rng = np.random.default_rng(init)  # seeded by the restart's start
    for _ in range(params.steps):
        left = room(s, B, max_evals, max_passes)
        if s.objective >= target or left == 0:
            break
        cands = sample_candidates(trigger, allowed, params.n_swap, params.batch, rng)[:left]
        loss = score_triggers(model, cands, opt_ids, n_cont, batch_size).mean(dim=1)
        s.forward_passes += B * len(cands)
        s.candidate_evals += len(cands)
        accepted = best_surviving(tokenizer, cands, loss, s.objective, examples)
        if accepted is not None:
            trigger = cands[accepted]
            s.accept(trigger.tolist(), float(loss[accepted]))
    return s


def search(model, tokenizer, opt_ids: torch.Tensor, allowed: torch.Tensor, params: RandomSearchConfig,
           rng: np.random.Generator, n_cont: int, batch_size: int, **kw) -> list[Search]:
    """Random searches from random triggers (monollm.attacks.trigger.search with `ascend`)."""
    return skeleton.search(model, tokenizer, opt_ids, allowed, params, rng, n_cont, batch_size, ascend, **kw)


def run(ctx: AttackContext, params: RandomSearchConfig) -> list[AttackResult]:
    """A random-search trigger searched on each model, scored on every model, plus its matched
    control (monollm.attacks.trigger.run)."""
    return skeleton.run(ctx, params, "random_search", ascend)
