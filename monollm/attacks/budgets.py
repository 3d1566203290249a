"""How many forward passes a trigger search spends: a fixed budget, or one found by doubling.

A fixed budget (attack.budget = N) runs the restarts until N passes are spent. The auto budget
(attack.budget = "auto") runs them to `auto_start` passes, then doubles: it continues the same
restarts to twice the passes and asks whether that last doubling still raised the damage. The
damage is read on the search's own optimisation examples (never the test examples): per example,
the NLL under the best trigger found within 2B passes minus under the best within B (`best_within`),
paired; the search has converged when the 95% bootstrap CI of the mean rise reaches down to 0 or
below. Otherwise it doubles again, up to `max_budget` (the cap).

Continuing a search to a larger budget runs the restart that the smaller budget cut short again
from its own start, now with room to finish (an ascent is determined by its start and its passes),
then adds restarts after it (`continued`): the search at the end of a doubling is the one a fixed
budget of that size would have run. (Leaving the cut restart cut and beginning a fresh one instead
makes a doubling look flat whenever one short fresh restart fails to beat a long one, and the auto
budget then stops far too early.) A search with a saved list of restarts re-derives every stage
from that list alone (`started_within`): the doubling needs no state of its own in a checkpoint.

Imports nothing of the package but `stats`: the trigger skeleton passes the search and the scoring in.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monollm.stats import bootstrap_ci

BOOTSTRAP = 2000
"""Bootstrap resamples of the test of each doubling."""


@dataclass(frozen=True)
class Stop:
    """Where one model's search stopped."""
    budget: int
    """Forward passes it was given in the end (0: no budget, it ran its own restarts)."""
    converged_at: int = 0
    """The budget at whose doubling the rise stopped being significant (0: never tested or never converged)."""
    capped: bool = False
    """Whether the doubling reached max_budget with the last doubling's rise still significant (or with
    no room for a doubling: auto_start = max_budget)."""


@dataclass(frozen=True)
class Doubling:
    """One test: the best trigger within `before` passes against the best within `after`."""
    before: int
    after: int
    rise: float
    """Mean over the optimisation examples of the paired NLL rise."""
    low: float
    high: float

    @property
    def converged(self) -> bool:
        return self.low <= 0


def best_within(found: list, passes: float) -> list[int]:
    """The trigger of highest search objective reached within the first `passes` forward passes of
    the restarts `found` (trigger.Search), taken in order with their passes added up
    (`Search.history_passes`); the first start when even it came later."""
    best, offset = (found[0].history[0], found[0].start), 0
    for s in found:
        # a search read from a checkpoint written before its steps were timed: only its end is known
        trace = zip(s.history, s.history_passes, s.history_triggers) if s.history_passes else \
            [(s.objective, s.forward_passes, s.trigger)]
        for objective, at, trigger in trace:
            if offset + at > passes:
                return list(best[1])
            if objective > best[0]:
                best = (objective, trigger)
        offset += s.forward_passes
    return list(best[1])


def started_within(found: list, budget: int) -> list:
    """The restarts of `found` (in order) that a search with `budget` passes would have run: each one
    begun while the passes before it were under the budget (all of them for budget 0)."""
    out, passes = [], 0
    for s in found:
        if budget and passes >= budget:
            break
        out.append(s)
        passes += s.forward_passes
    return out


def continued(known: list, last: int, budget: int) -> tuple[list, object]:
    """(restarts kept, restart to run again or None) for continuing restarts `known`, last run to `last`
    passes, to `budget`: those begun within `budget` (`started_within`); and when the budget grows past
    `last`, the last of them, which `last` cut short, is run again from its start (trigger.search's
    `redo`) instead of being left cut while a fresh restart begins after it."""
    prior = started_within(known, budget)
    if last and budget > last and prior and sum(s.forward_passes for s in prior) >= last:
        return prior[:-1], prior[-1]
    return prior, None


def doubling_test(found: list, before: int, after: int, nll, seed: int) -> Doubling:
    """The rise from the best trigger within `before` passes to the best within `after`: nll(trigger)
    -> (B,) NLL per optimisation example; its mean and 95% paired bootstrap CI (BOOTSTRAP resamples)."""
    rise = np.asarray(nll(best_within(found, after)), np.float64) - np.asarray(nll(best_within(found, before)),
                                                                               np.float64)
    low, high = bootstrap_ci(rise, BOOTSTRAP, seed)
    return Doubling(before, after, float(rise.mean()), low, high)


def auto(run_to, nll, start: int, cap: int, seed: int, log=None) -> Stop:
    """Double a search's budget from `start` until its last doubling's rise is not significant, or to `cap`.

    run_to(budget) -> the search's restarts (trigger.Search) continued to `budget` passes; nll as in
    `doubling_test`; `log`, if given, gets one line per doubling. A doubling that would pass the cap
    stops at the cap. Returns the budget reached, the budget it converged at (0: it did not) and
    whether it hit the cap without converging.
    """
    budget = min(start, cap)
    found = run_to(budget)
    while budget < cap:
        after = min(2 * budget, cap)
        found = run_to(after)
        test = doubling_test(found, budget, after, nll, seed)
        if log:
            log(f"auto budget {budget:,} -> {after:,} passes: attack_opt NLL rise {test.rise:+.4f} "
                f"[{test.low:+.4f}, {test.high:+.4f}], " + ("converged" if test.converged else "doubling"))
        budget = after
        if test.converged:
            return Stop(budget, converged_at=budget)
    return Stop(budget, capped=True)
