"""What the evaluate step's foreach branches do: one branch per attack and threat model, then the
downstream tasks and order preservation beside them (not after). `names` lists the branches,
`run` does one and returns what the attack join gathers (results.answer.gather).
"""
from __future__ import annotations

from dataclasses import dataclass

from monollm import attacks, config
from monollm.attacks.common import resolved_precision
from monollm.evaluation import downstream as tasks
from monollm.model import foundation
from monollm.progress import log
from monollm.runtime import autocast_words, ran_on, setup_torch

ORDER_BRANCH = "order"
"""The foreach branch that measures order preservation, beside the attacks."""


@dataclass
class BranchResult:
    """What one branch stores (results.answer.BRANCH_ARTIFACTS); the fields of other kinds stay None."""
    attack_rows: object = None
    """An attack branch's tidy rows (pandas)."""
    token_text: dict | None = None
    """Token id -> text for every id in `attack_rows` (the join has no tokenizer)."""
    downstream_results: dict | None = None
    """The downstream branch's {"table", "items"}."""
    order_results: object = None
    """The order branch's table (pandas)."""
    branch_ran_on: dict | None = None
    """{"attack:<branch>": runtime.ran_on}: the device and precision the branch computed on."""


def names(cfg: config.ExperimentConfig) -> list[str]:
    """The evaluate step's foreach: one branch per attack and threat model (attacks.branch_name: the
    attack for the first of `attack.tokens`, `attack@tokens` for the others), then the downstream
    tasks' and the order-preservation branch where the profile asks for them."""
    threat_models = cfg.attack.tokens
    out = [attacks.branch_name(a, t, threat_models) for t in threat_models for a in cfg.attacks]
    return out + ([tasks.BRANCH] if cfg.eval.downstream.tasks else []) + ([ORDER_BRANCH] if cfg.eval.order.enabled else [])


def needs_four_models(name: str) -> bool:
    """Whether branch `name` works on all four models (the downstream and order branches), not on
    the two arms only (the attacks)."""
    return name in (tasks.BRANCH, ORDER_BRANCH)


def run(cfg: config.ExperimentConfig, name: str, model_dirs: dict, examples: dict, checkpoint=None) -> BranchResult:
    """Branch `name` on the models in `model_dirs` (name -> saved model directory)."""
    device = foundation.pick_device(cfg.device)  # as setup_torch picks it in the branch's work
    if name in (tasks.BRANCH, ORDER_BRANCH):  # both load models in fp32, without autocast
        on = {f"attack:{name}": ran_on(device, "fp32")}
        if name == tasks.BRANCH:
            return BranchResult(downstream_results=downstream(cfg, model_dirs), branch_ran_on=on)
        return BranchResult(order_results=order(cfg, model_dirs), branch_ran_on=on)
    rows = attack(cfg, name, model_dirs, examples, checkpoint=checkpoint)
    from monollm.results import card_sections  # pandas: imported once the attack has run

    search = resolved_precision(device, cfg.attack.search_precision)  # as the rows' search_precision says
    on = ran_on(device, f"search {autocast_words(search)}; reported NLLs fp32")
    return BranchResult(attack_rows=rows, token_text=card_sections.token_text(
        rows, foundation.load_tokenizer(next(iter(model_dirs.values())))), branch_ran_on={f"attack:{name}": on})


def attack(cfg: config.ExperimentConfig, branch: str, model_dirs: dict, examples: dict, checkpoint=None):
    """Run the attack of `branch` (`uat`, or `uat@printable` for a threat model after the first)
    against every model in `model_dirs` (`checkpoint`: see attacks.run_attack); its rows, with the
    branch as their `attack` and the threat model as their `tokens`."""
    device, a, name = setup_torch(cfg), cfg.attack, attacks.attack_of(branch)
    tokens = branch.partition("@")[2] or a.tokens[0]
    log(f"[{branch}] loading {' and '.join(model_dirs)} ({device}); {tokens} tokens")
    loaded = {m: foundation.load(path, device, cfg.model.attn_implementation, what=m) for m, path in model_dirs.items()}
    tokenizer = next(iter(loaded.values()))[1]
    results = attacks.run_attack(name, {m: mt[0] for m, mt in loaded.items()}, tokenizer, examples,
                                 a.continuation_len, a.batch_size, a.params[name], cfg.seed, log=log,
                                 checkpoint=checkpoint, precision=a.search_precision, tokens=tokens,
                                 budget=a.budget, edit_budget=a.edit_budget, curve_points=a.curve_points,
                                 max_budget=a.max_budget, auto_start=a.auto_start)
    from monollm.results import report  # pandas: only the attack step needs it

    table = report.attack_table(results)
    table["attack"], table["tokens"] = branch, tokens
    table["search_precision"] = resolved_precision(device, a.search_precision)
    return table


def downstream(cfg: config.ExperimentConfig, model_dirs: dict) -> dict:
    """The downstream tasks (monollm.evaluation.downstream) on every model in `model_dirs`:
    {"table": one row per task x model x metric, "items": per-item values}."""
    from monollm.pipeline import tmpdir

    device = setup_torch(cfg)
    log(f"downstream tasks {', '.join(cfg.eval.downstream.tasks)} on {len(model_dirs)} models ({device}); "
        "loading lm-evaluation-harness")
    return tasks.evaluate(cfg, model_dirs, device, tmpdir("downstream"), log=log)


def order(cfg: config.ExperimentConfig, model_dirs: dict):
    """Order preservation (monollm.evaluation.order) of every model in `model_dirs` on the same
    pairs; one row per model x layer x pooling."""
    from monollm.evaluation import order as measure

    o, device = cfg.eval.order, setup_torch(cfg)
    chains = o.chains if o.chains != "auto" else ("builtin" if cfg.model.source == "build" else "english")
    log(f"order preservation ({o.method}): {chains} chains, {', '.join(o.pooling)} pooling, {len(model_dirs)} models")
    kw = {k: getattr(o, k) for k in ("method", "pooling", "split_seed", "fit_fraction", "directions", "batch_size")}
    return measure.order_table(model_dirs, chains, device=device, attn_implementation=cfg.model.attn_implementation,
                               seed=cfg.seed, bootstrap=cfg.eval.bootstrap, C=o.probe_c, **kw)
