"""The rows of a trigger attack that score given triggers: on the test examples on every model
(`evaluate`), every restart's final trigger ("restart"), the matched control ("control") and each
trigger's damage on all of attack_opt (`opt_dnll`). The search that finds the triggers is
monollm.attacks.trigger's; the budget curve is monollm.attacks.curves'.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

from monollm.attacks.common import AttackContext, AttackResult, prepend, sample_trigger
from monollm.attacks.gradients import score_triggers


def restarts(ctx: AttackContext, name: str, found: list, source: str, ranking: str, budget: int) -> list[AttackResult]:
    """Every restart's final trigger (found: trigger.Search; trial: the restart), scored on every model
    (kind "restart")."""
    return [r for i, s in enumerate(found)
            for r in evaluate(ctx, name, s.trigger, source=source, trial=i, kind="restart", ranking=ranking,
                              forward_passes=s.forward_passes, candidate_evals=s.candidate_evals, budget=budget)]


@torch.no_grad()
def opt_dnll(ctx: AttackContext, rows: list[AttackResult]):
    """Set each row's `opt_dnll`: its trigger's mean attacked minus clean NLL over all of attack_opt on
    its model, in fp32 (outside the search's precision); each trigger scored once per model."""
    opt, clean = ctx.split("attack_opt"), ctx.clean_opt()
    for model in {r.model for r in rows}:
        mine = [r for r in rows if r.model == model]
        triggers = sorted({tuple(r.trigger_ids) for r in mine})
        attacked = score_triggers(ctx.models[model], torch.tensor(triggers, device=ctx.device), opt, ctx.n_cont,
                                  ctx.batch_size).double().mean(dim=1)
        damage = dict(zip(triggers, (attacked - float(np.mean(clean[model], dtype=np.float64))).tolist()))
        for r in mine:
            r.opt_dnll = damage[tuple(r.trigger_ids)]


def control_draws(configured: int, found: list[AttackResult]) -> int:
    """How many random triggers an attack draws: its `controls`, or more where its rows `found` hold
    more distinct triggers scored on one model. The family's matched control is the expected maximum
    over as many draws as the family has distinct members on that model; with every attack drawing at
    least its own distinct triggers, the family's draws cover its members (which deduplication only
    makes fewer), and no draw is used twice."""
    per_model: dict[str, set] = {}
    for r in found:
        per_model.setdefault(r.model, set()).add(tuple(r.trigger_ids))
    return max([configured, *(len(ids) for ids in per_model.values())])


def controls(ctx: AttackContext, name: str, params, draws: int | None = None) -> list[AttackResult]:
    """`draws` (default `params.controls`; control_draws) random triggers of the trigger's length,
    each scored on every model (kind "control"): the same triggers, examples and position for every
    model. Each attack draws its own (its name, by a stable hash, is part of the seed): attacks'
    controls are independent samples, so that two attacks' "above control" numbers do not share one
    draw. The first `params.controls` draws do not depend on how many follow."""
    draws = params.controls if draws is None else draws
    if draws > params.controls:
        ctx.log(f"[{name}] {draws} control draws (controls = {params.controls}): one per distinct trigger found on a model")
    rng, results = np.random.default_rng([ctx.seed, 1, zlib.crc32(name.encode())]), []
    for trial in range(draws):
        trigger = sample_trigger(rng, ctx.allowed, params.trigger_len, ctx.tokenizer, ctx.examples["test"],
                                 params.max_tries)
        rows = evaluate(ctx, name, trigger, trial=trial)
        results += rows
        ctx.log(f"[{name}] control {trial + 1}/{draws} {ctx.tokenizer.decode(trigger)!r}: " + summary(rows))
    return results


def evaluate(ctx: AttackContext, name: str, trigger: list[int], source: str = "", trial: int = 0,
             **fields) -> list[AttackResult]:
    """`trigger` before every test example (N, T), scored on every model (AttackContext.score)."""
    attacked = prepend(torch.tensor(trigger, device=ctx.device), ctx.test)
    return ctx.score(name, attacked, source=source, trial=trial, trigger_ids=list(trigger),
                     trigger_text=ctx.tokenizer.decode(trigger), **fields)


def summary(rows: list[AttackResult]) -> str:
    """Per model, the mean test dNLL of the rows (one log line's worth)."""
    return ", ".join(f"{r.model} dNLL {np.mean(r.attacked_nll - r.clean_nll):+.3f}" for r in rows)
