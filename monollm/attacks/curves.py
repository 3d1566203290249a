"""The budget curve of a trigger search: damage against the forward passes the attacker spent.

At each of the fractions `common.curve_fractions(ctx.curve_points)` of a search's passes (of its
budget where it has one: 2**-(points - 1), ..., 1/4, 1/2, 1) the trigger of highest search
objective found so far (`budgets.best_within`) is scored on the test examples on every model:
rows of kind "budget", `source_model` the model searched, `model` the one scored, `trial` the
index of the fraction. At fraction 1 the point is the reported trigger with the attack row's passes,
so that the curve on the searched model ends at the attack's own number and the curve on the
other model at the transfer's.

A best-so-far trigger is often the same at several fractions, and it is often a trigger already
scored as the attack, a transfer or a restart: every trigger is scored once per model (`Scored`),
and the curve reuses those numbers.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from monollm.attacks.budgets import best_within
from monollm.attacks.common import AttackContext, AttackResult, curve_fractions, prepend


class Scored:
    """Triggers already scored on the test examples on every model: trigger ids -> their rows (one per model)."""

    def __init__(self):
        self.rows: dict[tuple, list[AttackResult]] = {}
        self.new = 0
        """Triggers this cache scored itself (the others came in with `add`)."""

    def add(self, rows: list[AttackResult]):
        """Keep rows scored elsewhere (every model's row of a trigger, any kind)."""
        for r in rows:
            self.rows.setdefault(tuple(r.trigger_ids), [])
            if r.model not in {k.model for k in self.rows[tuple(r.trigger_ids)]}:
                self.rows[tuple(r.trigger_ids)].append(r)

    def get(self, ctx: AttackContext, name: str, trigger: list[int]) -> list[AttackResult]:
        """`trigger`'s rows on every model (ctx.models order), scored now if it was not before."""
        key = tuple(int(t) for t in trigger)
        if len(self.rows.get(key, [])) < len(ctx.models):
            attacked = prepend(ctx.test.new_tensor(list(key)), ctx.test)
            self.rows[key] = ctx.score(name, attacked, kind="budget", trigger_ids=list(key),
                                       trigger_text=ctx.tokenizer.decode(list(key)))
            self.new += 1
        by_model = {r.model: r for r in self.rows[key]}
        return [by_model[m] for m in ctx.models]


def curve(ctx: AttackContext, name: str, found: list, trigger: list[int], source: str, passes: int, ranking: str,
          budget: int, scored: Scored) -> list[AttackResult]:
    """The budget curve of the search `found` (trigger.Search restarts) against `source`: per fraction, the
    best-so-far trigger's rows on every model (kind "budget"; the module docstring). `trigger` and `passes`:
    the reported trigger and the attack row's passes (fraction 1); `budget`: the search's (0: none, the
    fractions are then of the passes it spent)."""
    total, out = budget or sum(s.forward_passes for s in found), []
    for i, fraction in enumerate(curve_fractions(ctx.curve_points)):
        last = fraction >= 1
        chosen = trigger if last else best_within(found, fraction * total)
        spent = passes if last else int(round(fraction * total))
        out += [point(r, source=source, trial=i, ranking=ranking, forward_passes=spent, budget=budget,
                      budget_fraction=float(fraction)) for r in scored.get(ctx, name, chosen)]
    return out


def point(row: AttackResult, source: str, trial: int, ranking: str, forward_passes: int, budget: int,
          budget_fraction: float) -> AttackResult:
    """A "budget" row from `row`, a trigger's scores on one model: its numbers kept (copied), every field
    about the search that produced `row` set anew."""
    return dataclasses.replace(
        row, kind="budget", source_model=source, trial=trial, ranking=ranking, forward_passes=forward_passes,
        candidate_evals=0, budget=budget, budget_fraction=budget_fraction, guidance_spearman=float("nan"),
        guidance_n=0, opt_dnll=float("nan"), budget_converged_at=0, budget_capped=False,
        attacked_nll=np.array(row.attacked_nll, copy=True),
        attacked_halves=None if row.attacked_halves is None else np.array(row.attacked_halves, copy=True))


def summary(rows: list[AttackResult]) -> str:
    """One log line's worth: per scored model, the mean test dNLL at each fraction."""
    models = list(dict.fromkeys(r.model for r in rows))
    return "; ".join(m + " " + " ".join(f"{np.mean(r.attacked_nll - r.clean_nll):+.3f}" for r in rows if r.model == m)
                     for m in models)
