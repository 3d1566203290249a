"""Attack registry: name -> (config dataclass, run function).

Every run function takes (ctx, params): the attack context (common.AttackContext: models,
tokenizer, examples, allowed tokens, clean NLLs, budgets) and the attack's config, and returns
a list of `AttackResult`. Adding an attack is one module plus one line here.
"""
from __future__ import annotations


from monollm.attacks import gcg as _gcg
from monollm.attacks import hotflip as _hotflip
from monollm.attacks import random as _random
from monollm.attacks import random_flips as _random_flips
from monollm.attacks import random_search as _random_search
from monollm.attacks import uat as _uat
from monollm.attacks.common import AttackResult, context
from monollm.errors import ConfigError
from monollm.schema import build

ATTACKS = {
    "random": (_random.RandomConfig, _random.run),
    "uat": (_uat.UATConfig, _uat.run),
    "hotflip": (_hotflip.HotFlipConfig, _hotflip.run),
    "gcg": (_gcg.GCGConfig, _gcg.run),
    "random_search": (_random_search.RandomSearchConfig, _random_search.run),
    "random_flips": (_random_flips.RandomFlipsConfig, _random_flips.run),
}


def branch_name(attack: str, tokens: str, threat_models) -> str:
    """The foreach branch (and the rows' `attack`) of `attack` under threat model `tokens`: the
    attack's own name for the run's first threat model, `<attack>@<tokens>` for the others."""
    return attack if tokens == threat_models[0] else f"{attack}@{tokens}"


def attack_of(branch: str) -> str:
    """The registered attack a branch (or a row's `attack`) runs: "uat@printable" -> "uat"."""
    return branch.partition("@")[0]


def attack_config(name: str, raw: dict, where: str):
    """Build attack `name`'s config from its [attack.<name>] table, refusing unknown keys."""
    cls, _ = ATTACKS[name]
    cfg = build(cls, raw, where)
    try:
        cfg.check()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return cfg


def run_attack(name: str, models: dict, tokenizer, examples, continuation_len: int, batch_size: int,
               params, seed: int, log=print, checkpoint=None, precision: str = "fp32",
               tokens: str = "round_trip", budget: int | str = 0, edit_budget: int = 0,
               curve_points: int = 8, max_budget: int = 0, auto_start: int = 0) -> list[AttackResult]:
    """Run a registered attack (models already in eval mode).

    `checkpoint` (a monollm.checkpoints.StepCheckpointer or None) lets a long attack save its
    progress and continue after a failure; attacks short enough not to need it ignore it.
    `precision` ("auto", "bf16", "fp32": common.search_precision) is that of the search only;
    `tokens` ("round_trip", "printable": common.allowed_tokens), which tokens it may insert;
    `budget` (attack.budget), the forward passes each universal-trigger search spends against
    each model (0: its own restarts and steps; "auto": doubled from `auto_start` passes up to
    `max_budget` until the last doubling no longer raises the damage, monollm.attacks.budgets;
    attacks without a trigger search ignore it);
    `edit_budget` (attack.edit_budget), the passes per example of each per-input search;
    `curve_points` (attack.curve_points), the points of every search's budget curve.
    """
    _, fn = ATTACKS[name]
    return fn(context(models, tokenizer, examples, continuation_len, batch_size, seed, log=log, checkpoint=checkpoint,
                      precision=precision, tokens=tokens, budget=budget,
                      edit_budget=edit_budget, curve_points=curve_points, max_budget=max_budget,
                      auto_start=auto_start), params)


__all__ = ["ATTACKS", "AttackResult", "attack_config", "attack_of", "branch_name", "run_attack"]
