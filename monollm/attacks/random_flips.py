"""`random_flips`: per-input edits without a gradient, the gradient-free member of the per-input family.

The flip search of `hotflip` (monollm.attacks.hotflip, monollm.attacks.flip_budget) with its
ranking fixed to "random": every round scores `candidates` swaps drawn uniformly, without
replacement, among the allowed (position, token) swaps of the context, and accepts the best one
that raises the loss, exactly as HotFlip accepts its gradient's picks. The same `max_flips`, the
same `candidates` (hotflip's defaults) and the same attack.edit_budget, so that at equal forward
passes per example it measures what HotFlip gains from the model's gradient, and a model whose
gradient misleads HotFlip (gradient masking) cannot mislead it. Its rows, controls (the same two
kinds) and budget curve are hotflip's, under the attack name "random_flips". The gradient guidance
is measured only when `guidance_sample` > 0 (default 0: no gradient is ever computed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from monollm.attacks import hotflip
from monollm.attacks.common import AttackContext, AttackResult


@dataclass(frozen=True)
class RandomFlipsConfig(hotflip.HotFlipConfig):
    """hotflip's config with the ranking fixed to "random" and no guidance measurement by default."""
    TABLE: ClassVar[str] = "attack.random_flips"
    ranking: str = "random"
    """"random" only: nothing is ranked."""
    guidance_sample: int = 0
    """As hotflip's; 0 by default, so that this attack computes no gradient at all."""

    def check(self):
        super().check()
        if self.ranking != "random":
            raise ValueError(f"{self.TABLE}.ranking must be \"random\" (it is the gradient-free search), "
                             f"got {self.ranking!r}")


def run(ctx: AttackContext, params: RandomFlipsConfig) -> list[AttackResult]:
    """hotflip.run with random ranking, rows under the name "random_flips"."""
    return hotflip.run(ctx, params, name="random_flips")
