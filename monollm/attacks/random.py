"""`random`: random-token prefix triggers, the control every gradient attack is measured against."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from monollm.attacks.common import AttackContext, AttackResult, prepend, sample_trigger


@dataclass(frozen=True)
class RandomConfig:
    """Random triggers of the same length and vocabulary as the universal trigger."""
    trigger_len: int = 5
    """Tokens per trigger."""
    samples: int = 8
    """Independent random triggers; each is applied to every example and every model."""
    max_tries: int = 200
    """Draws per position before giving up on a token that survives re-tokenization."""

    @property
    def prefix_len(self) -> int:
        """Tokens the attack prepends to a window (its trigger)."""
        return self.trigger_len

    def check(self):
        if self.trigger_len < 1 or self.samples < 1 or self.max_tries < 1:
            raise ValueError("attack.random: trigger_len, samples and max_tries must be positive")


def run(ctx: AttackContext, params: RandomConfig) -> list[AttackResult]:
    """Score `params.samples` random triggers against every model on the test examples.

    Returns one AttackResult per (trigger, model), kind "attack" (the random attack is its
    own control: the draw is the attack).
    """
    rng, results = np.random.default_rng(ctx.seed), []
    for trial in range(params.samples):
        trigger = sample_trigger(rng, ctx.allowed, params.trigger_len, ctx.tokenizer, ctx.examples["test"],
                                 params.max_tries)
        attacked = prepend(torch.tensor(trigger, device=ctx.device), ctx.test)
        rows = ctx.score("random", attacked, kind="attack", trial=trial, trigger_ids=trigger,
                         trigger_text=ctx.tokenizer.decode(trigger))
        results += rows
        ctx.log(f"[random] trigger {trial + 1}/{params.samples} {ctx.tokenizer.decode(trigger)!r}: " + ", ".join(
            f"{r.model} dNLL {np.mean(r.attacked_nll - r.clean_nll):+.3f}" for r in rows))
    return results
