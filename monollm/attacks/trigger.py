"""What every universal-trigger attack does around its search.

A trigger attack (`uat`, `gcg`, `random_search`) is a config dataclass plus an `ascend` function:
one search from a random start on the attack_opt examples. Everything else is here, the same for all:

* restarts from random triggers of allowed tokens, each re-tokenizable on its own and before
  every example it will be scored on (attack_opt and test), with the same seeded starts on
  every model: `restarts` of them, or with a forward-pass budget (attack.budget) as many as
  the budget allows, the last one stopped where the budget runs out, so that every search
  spends the same passes against every model (to within one step);
* with attack.budget = "auto" (monollm.attacks.budgets), each model's search doubled from
  attack.auto_start passes until its last doubling no longer raises the damage on its
  optimisation examples, or to attack.max_budget; then every model's search continued to the
  largest budget any of them reached, so that the searches still spend equal passes;
* a checkpoint after every finished restart (an interrupted branch continues with the
  restarts it finished and ends with the same trigger as an uninterrupted one; the auto
  budget's stages are re-derived from the restarts);
* selection of the best final trigger on all of attack_opt;
* scoring on the test examples: on the source model (kind "attack") and on every other model
  (kind "transfer"); every restart's final trigger on every model (kind "restart"); and the
  budget curve: the best trigger found within each of `curve_points` log-spaced fractions of
  the passes, on every model (kind "budget", monollm.attacks.curves);
* `opt_dnll` on the attack, transfer and restart rows: the trigger's damage on all of attack_opt;
* the gradient guidance around the final trigger (monollm.attacks.guidance);
* the matched control ("control"): `controls` random triggers of the same length (or one per
  distinct trigger found on a model, where that is more), at the same place (before the
  context), on the same test examples, the same draws for every model. It holds fixed the
  trigger length, position, examples and scoring model; only the tokens are random (and
  unsearched). Each attack draws its own.

The config is a `TriggerConfig` plus the search's own budget; `ascend(model, tokenizer, opt_ids, allowed, init, params,
n_cont, batch_size, target=, max_evals=, max_passes=, survive=) -> Search`.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from monollm import progress
from monollm.attacks import budgets, curves, guidance, trigger_rows
from monollm.attacks.budgets import best_within  # noqa: F401 (part of this module's interface)
from monollm.attacks.common import AttackContext, AttackResult, prepend, rows_survive, sample_trigger, trigger_survives
from monollm.attacks.gradients import onehot_grad, score_triggers

RANKINGS = ("gradient", "random", "exact")
"""How a search may choose the candidates it scores exactly (each attack says which it supports)."""
MAX_RESTARTS = 10_000
"""Most restarts of a search with a forward-pass budget: a guard, for searches that end at once."""


@dataclass(frozen=True)
class TriggerConfig:
    """What every universal-trigger attack's config has; each attack adds its search's budget."""
    trigger_len: int = 5
    """Tokens in the trigger (L)."""
    restarts: int = 2
    """Independent searches from random triggers; the best on attack_opt is kept. Ignored when
    attack.budget is set: restarts then run until the budget is spent."""
    opt_examples: int = 0
    """attack_opt examples in the optimization batch (0: all of them)."""
    controls: int = 8
    """Random triggers of the same length scored as the matched control, at least: the attack draws one
    per distinct trigger it found on a model where that is more (trigger_rows.control_draws)."""
    max_tries: int = 200
    """Draws per position when sampling a random trigger that survives re-tokenization."""
    ranking: str = "gradient"
    """How the search chooses the candidates it scores exactly (the attack's module docstring says
    which of RANKINGS it supports)."""
    guidance_sample: int = 64
    """Random single-token swaps of the final trigger on which the first-order estimate is
    compared with the exact loss change (monollm.attacks.guidance); 0: not measured."""

    @property
    def prefix_len(self) -> int:
        """Tokens the attack prepends to a window (its trigger)."""
        return self.trigger_len


@dataclass
class Search:
    """One trigger search: where it ended, what it cost, and when it got there."""
    trigger: list[int]
    objective: float
    """Mean continuation NLL on the optimization batch with `trigger` prepended."""
    history: list[float] = field(default_factory=list)
    """Objective after the start and after every accepted step (never decreasing)."""
    forward_passes: int = 0
    """Sequences through the model, gradient passes included."""
    candidate_evals: int = 0
    """Triggers scored exactly (each over the whole optimization batch)."""
    start: list[int] = field(default_factory=list)
    """The random trigger the ascent began from."""
    history_passes: list[int] = field(default_factory=list)
    """Forward passes this search had spent when it reached each `history` entry (the budget curve)."""
    history_triggers: list[list[int]] = field(default_factory=list)
    """The trigger at each `history` entry (the start first)."""

    def accept(self, trigger: list[int], objective: float):
        """Move to `trigger` (its objective: `objective`), recording when (forward passes so far)."""
        self.trigger, self.objective = [int(t) for t in trigger], float(objective)
        self.history.append(self.objective)
        self.history_passes.append(self.forward_passes)
        self.history_triggers.append(list(self.trigger))


def begin(model, opt_ids: torch.Tensor, init: list[int], n_cont: int, batch_size: int) -> Search:
    """A search at its random start `init` (L,), scored on opt_ids (B, T): B forward passes."""
    trigger = torch.tensor(init, device=opt_ids.device)
    objective = float(score_triggers(model, trigger[None], opt_ids, n_cont, batch_size).mean())
    B = len(opt_ids)
    return Search(list(init), objective, [objective], forward_passes=B, candidate_evals=1, start=list(init),
                  history_passes=[B], history_triggers=[list(init)])


def room(s: Search, B: int, max_evals: int = 0, max_passes: int = 0) -> int | None:
    """Candidates search `s` may still score over B examples: None when neither `max_evals`
    (candidates) nor `max_passes` (forward passes) limits it, 0 when a limit is reached. The
    passes are rounded up to a whole candidate, so a budget is overshot by less than one."""
    limits = []
    if max_evals:
        limits.append(max(0, max_evals - s.candidate_evals))
    if max_passes:
        limits.append(max(0, -(-(max_passes - s.forward_passes) // B)))
    return min(limits) if limits else None


def check_common(name: str, params, rankings=RANKINGS):
    """Refuse bad values of the settings every trigger attack has, naming `attack.<name>.<key>`."""
    for key in ("trigger_len", "restarts", "controls", "max_tries"):
        if getattr(params, key) < 1:
            raise ValueError(f"attack.{name}: {key} must be >= 1, got {getattr(params, key)}")
    for key in ("opt_examples", "guidance_sample"):
        if getattr(params, key) < 0:
            raise ValueError(f"attack.{name}: {key} must be >= 0 (0: {'all' if key == 'opt_examples' else 'off'}), "
                             f"got {getattr(params, key)}")
    if params.ranking not in rankings:
        raise ValueError(f"attack.{name}.ranking must be one of {', '.join(map(repr, rankings))}, "
                         f"got {params.ranking!r}")


def swap_scores(model, trigger: torch.Tensor, opt_ids: torch.Tensor, allowed: torch.Tensor, ranking: str,
                n_cont: int, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
    """(L, V) scores that rank the single-token swaps of `trigger` (L,) on opt_ids (B, T), and the
    forward passes they cost: the shared one-hot gradient over the batch (B passes) for ranking
    "gradient", else uniformly random scores (no pass: the same search without the gradient)."""
    if ranking != "gradient":
        return torch.from_numpy(rng.random((len(trigger), len(allowed)))).float().to(trigger.device), 0
    _, grad = onehot_grad(model, prepend(trigger, opt_ids), 0, len(trigger), n_cont, batch_size, shared=True)
    return grad, len(opt_ids)


def best_surviving(tokenizer, cands: torch.Tensor, loss: torch.Tensor, current: float, examples: np.ndarray):
    """Index of the highest-loss candidate (M, L) above `current` that survives re-tokenization
    on its own and before every row of `examples` (N, T), or None. On its own too, because the
    reported trigger ids must be its text's ids (`select` refuses any other)."""
    for i in loss.argsort(descending=True).tolist():
        if float(loss[i]) <= current:
            return None
        trigger = cands[i].tolist()
        if rows_survive(tokenizer, [trigger])[0] and trigger_survives(tokenizer, trigger, examples):
            return i
    return None


def search(model, tokenizer, opt_ids: torch.Tensor, allowed: torch.Tensor, params, rng: np.random.Generator,
           n_cont: int, batch_size: int, ascend, target: float = float("inf"), max_evals: int = 0, log=None,
           done: list[Search] | None = None, on_restart=None, survive: np.ndarray | None = None,
           budget: int = 0, redo: Search | None = None) -> list[Search]:
    """`params.restarts` ascents from random triggers (fewer when `target` or `max_evals` is hit first);
    with `budget` > 0, ascents until their forward passes add up to `budget` (the last one stopped
    there, `params.restarts` ignored, at most MAX_RESTARTS).

    Returns one Search per restart run; their compute adds up to the search's. `log`, if given,
    gets a progress line after every restart. `done` holds restarts finished before an
    interruption (with `rng` restored to its state after them); `on_restart(found)` is called
    after every restart so that a long search can be checkpointed. Random starts and accepted
    swaps survive decode -> encode before every row of `survive` (default: opt_ids). `redo`: a restart
    that an earlier, smaller budget cut short (not in `done`), run again from its own start as the first
    new restart, so that a search continued to a larger budget is the one that budget would have run
    (an ascent is determined by its start and its passes; the rng has already drawn that start).
    """
    examples = opt_ids.cpu().numpy() if survive is None else survive
    found, started = list(done or []), time.time()
    restarts = MAX_RESTARTS if budget else params.restarts
    for restart in range(len(found), restarts):
        spent, passes = sum(s.candidate_evals for s in found), sum(s.forward_passes for s in found)
        if (found and max(s.objective for s in found) >= target) or (max_evals and spent >= max_evals) \
                or (budget and passes >= budget):
            break
        init = list(redo.start) if redo is not None and restart == len(done or []) else \
            sample_trigger(rng, allowed, params.trigger_len, tokenizer, examples, params.max_tries)
        found.append(ascend(model, tokenizer, opt_ids, allowed, init, params, n_cont, batch_size, target=target,
                            max_evals=max_evals - spent if max_evals else 0,
                            max_passes=budget - passes if budget else 0, survive=examples))
        if on_restart:
            on_restart(found)
        if log:
            log(_progress(found, restarts, budget, started))
    return found


def _progress(found: list[Search], restarts: int, budget: int, started: float) -> str:
    """The progress line after a restart: of the restarts, or of the budget's forward passes."""
    passes = sum(s.forward_passes for s in found)
    if budget:  # the last restart may overshoot by a step: the line stops at the budget
        where = progress.line("forward pass", min(passes, budget), budget, started, unit="passes")
        where += f", restart {len(found)}"
    else:
        where = progress.line("restart", len(found), restarts, started)
    return where + (f"; best attack_opt NLL {max(s.objective for s in found):.3f}, "
                    f"{sum(s.candidate_evals for s in found)} candidates")


def select(model, tokenizer, found: list[Search], opt_all: torch.Tensor, test: np.ndarray, n_cont: int,
           batch_size: int, rescore: bool) -> tuple[list[int], int]:
    """The best trigger on all of attack_opt among those that survive before every test example.

    opt_all: (N, T) long. When `rescore` (the search used a subset of attack_opt), the final
    triggers are scored on all of it first. Returns (trigger, forward passes spent here).
    """
    triggers = torch.tensor([s.trigger for s in found], device=opt_all.device)
    if rescore:
        objective = score_triggers(model, triggers, opt_all, n_cont, batch_size).mean(dim=1)
        spent = len(found) * len(opt_all)
    else:
        objective, spent = torch.tensor([s.objective for s in found]), 0
    for i in objective.argsort(descending=True).tolist():
        alone = rows_survive(tokenizer, [found[i].trigger])[0]  # the reported ids are its text's ids
        if alone and trigger_survives(tokenizer, found[i].trigger, test):
            return found[i].trigger, spent
    raise RuntimeError("no final trigger survives decode -> encode before every test example (the search "
                       "must be given the test examples as `survive`)")


def run(ctx: AttackContext, params, name: str, ascend) -> list[AttackResult]:
    """A trigger searched with `ascend` on each model, scored on every model (its own: kind
    "attack"; the others: "transfer"), every restart's final trigger on every model ("restart"),
    the budget curve on every model ("budget"), plus at least `params.controls` random triggers
    ("control"; as many as the distinct triggers found on one model where that is more:
    trigger_rows.control_draws).

    Rows come in that order: the attack and transfer rows of each searched model in turn (every
    model in ctx.models order), then per searched model its restart rows (by restart, then model)
    and its budget rows (by fraction, then model), then the control rows (by draw, then model).
    Searches "attack_opt" (its first `opt_examples`, 0: all), reports on "test". The search runs
    in the context's precision; every reported NLL is scored in fp32.
    """
    opt_all = ctx.split("attack_opt")
    opt = opt_all[:params.opt_examples or None]
    results, later, scored = [], [], curves.Scored()
    for source, (found, stop) in _searches(ctx, params, name, ascend, opt).items():
        rows = _report(ctx, params, name, source, found, stop, opt)
        restarts = trigger_rows.restarts(ctx, name, found, source, params.ranking, stop.budget)
        scored.add(rows + restarts)  # the curve reuses these scores where its triggers are the same
        before = scored.new
        curve = curves.curve(ctx, name, found, rows[0].trigger_ids, source, rows[0].forward_passes, params.ranking,
                             stop.budget, scored)
        ctx.log(f"[{name}] {source}: budget curve ({scored.new - before} triggers scored anew): "
                + curves.summary(curve))
        results += rows
        later += restarts + curve
    trigger_rows.opt_dnll(ctx, [r for r in results + later if r.kind in ("attack", "transfer", "restart")])
    found = results + later
    return found + trigger_rows.controls(ctx, name, params, trigger_rows.control_draws(params.controls, found))


def _report(ctx: AttackContext, params, name: str, source: str, found: list[Search], stop: budgets.Stop,
            opt: torch.Tensor) -> list[AttackResult]:
    """The search's reported trigger (`select`) scored on every model: its "attack" and "transfer" rows,
    the attack row carrying where the auto budget stopped."""
    opt_all, model = ctx.split("attack_opt"), ctx.models[source]
    with ctx.searching():
        trigger, extra = select(model, ctx.tokenizer, found, opt_all, ctx.examples["test"], ctx.n_cont,
                                ctx.batch_size, rescore=len(opt) < len(opt_all))
        agree = _guidance(ctx, model, trigger, opt, params)
    rows = trigger_rows.evaluate(ctx, name, trigger, source=source, ranking=params.ranking,
                                 guidance_spearman=agree.spearman, guidance_n=agree.n, budget=stop.budget,
                                 forward_passes=sum(s.forward_passes for s in found) + extra,
                                 candidate_evals=sum(s.candidate_evals for s in found))
    for r in rows:
        if r.kind == "attack":
            r.budget_converged_at, r.budget_capped = stop.converged_at, stop.capped
    ctx.log(f"[{name}] {source}: trigger {ctx.tokenizer.decode(trigger)!r} after {rows[0].candidate_evals} "
            f"candidates and {rows[0].forward_passes} forward passes ({params.ranking} ranking)"
            f"{_stopped(ctx, stop)}, attack_opt NLL {max(s.objective for s in found):.3f}; "
            + (f"gradient guidance Spearman {agree.spearman:.2f} over {agree.n} swaps" if agree.n else
               "gradient guidance not measured") + "; test " + trigger_rows.summary(rows))
    return rows


def _stopped(ctx: AttackContext, stop: budgets.Stop) -> str:
    """Where an auto budget stopped, for the attack's log line ("" for a fixed budget)."""
    if ctx.budget != "auto":
        return ""
    where = f"converged at {stop.converged_at:,}" if stop.converged_at else f"hit the cap of {ctx.max_budget:,}"
    return f" within the auto budget {stop.budget:,} ({where})"


def _searches(ctx: AttackContext, params, name: str, ascend, opt: torch.Tensor) -> dict:
    """source -> (its restarts, budgets.Stop) for every model: each searched to the fixed budget, or with
    the auto budget doubled until it converges or hits the cap, then all brought up to the largest
    budget any of them reached (equal passes against every model)."""
    saved = (ctx.checkpoint.restore() or {}).get(name, {}) if ctx.checkpoint else {}
    run_to = {source: _runner(ctx, params, name, ascend, source, opt, saved) for source in ctx.models}
    if ctx.budget != "auto":
        return {source: (go(ctx.budget), budgets.Stop(ctx.budget)) for source, go in run_to.items()}
    stops = {source: budgets.auto(go, _opt_nll(ctx, source, opt), ctx.auto_start, ctx.max_budget, ctx.seed,
                                  log=lambda msg, s=source: ctx.log(f"[{name}] {s}: {msg}"))
             for source, go in run_to.items()}
    final = max(stop.budget for stop in stops.values())
    return {source: (go(final), dataclasses.replace(stops[source], budget=final)) for source, go in run_to.items()}


def _runner(ctx: AttackContext, params, name: str, ascend, source: str, opt: torch.Tensor, saved: dict):
    """run_to(budget) -> the restarts against model `source` continued to `budget` passes (0: its own
    restarts). Continued from `saved` (a checkpoint's restarts and RNG) where there is one: a stage
    the checkpoint already covers is read back from its restarts (budgets.started_within), later ones
    are searched; every trigger is kept re-tokenizable before all the examples it will be scored on."""
    rng = np.random.default_rng([ctx.seed, 0])  # the same random starts for every model
    known = [Search(**f) for f in saved.get(source, {}).get("found", [])]
    if source in saved:
        rng.bit_generator.state = saved[source]["rng"]
        ctx.log(f"[{name}] {source}: continuing after {len(known)} finished restarts")
    survive = np.concatenate([ctx.examples["attack_opt"], ctx.examples["test"]])
    on_restart = _saver(ctx.checkpoint, name, saved, source, rng) if ctx.checkpoint else None

    last = 0  # the budget the restarts were last run to

    def run_to(budget: int) -> list[Search]:
        nonlocal known, last
        prior, redo = budgets.continued(known, last, budget)
        with ctx.searching():
            found = search(ctx.models[source], ctx.tokenizer, opt, ctx.allowed, params, rng, ctx.n_cont,
                           ctx.batch_size, ascend, log=lambda msg: ctx.log(f"[{name}] {source}: {msg}"),
                           done=prior, on_restart=on_restart, survive=survive, budget=budget, redo=redo)
        known = found if len(found) >= len(known) else known
        last = max(last, budget)
        return found
    return run_to


def _opt_nll(ctx: AttackContext, source: str, opt: torch.Tensor):
    """nll(trigger) -> (B,) float64: the trigger's NLL on each optimisation example opt (B, T) on model
    `source`, in fp32 (a measurement for the auto budget's test, not attack compute); each trigger once."""
    seen = {}

    def nll(trigger: list[int]) -> np.ndarray:
        key = tuple(trigger)
        if key not in seen:
            seen[key] = score_triggers(ctx.models[source], torch.tensor([key], device=ctx.device), opt, ctx.n_cont,
                                       ctx.batch_size)[0].double().numpy()
        return seen[key]
    return nll


def _guidance(ctx: AttackContext, model, trigger: list[int], opt: torch.Tensor, params) -> guidance.Agreement:
    """The gradient guidance around the final trigger (a measurement: not counted as attack compute)."""
    if not params.guidance_sample:
        return guidance.Agreement(float("nan"), 0, 0)
    rng = np.random.default_rng([ctx.seed, 3])
    return guidance.trigger_agreement(model, torch.tensor(trigger, device=ctx.device), opt, ctx.n_cont, ctx.allowed,
                                      params.guidance_sample, rng, ctx.batch_size)


def _saver(checkpoint, name: str, saved: dict, source: str, rng: np.random.Generator):
    """on_restart callback: checkpoint every model's finished restarts and the RNG after them."""
    def save(found: list[Search]):
        # plain values only: checkpoints are read back with torch.load(weights_only=True)
        saved[source] = {"found": [_plain(s) for s in found], "rng": rng.bit_generator.state}
        step = sum(len(v["found"]) for v in saved.values())
        checkpoint.save({name: saved, "step": step}, step)
    return save


def _plain(s: Search) -> dict:
    """A Search as plain Python values (`Search(**_plain(s)) == s`)."""
    return {"trigger": [int(t) for t in s.trigger], "objective": float(s.objective),
            "history": [float(h) for h in s.history], "forward_passes": int(s.forward_passes),
            "candidate_evals": int(s.candidate_evals), "start": [int(t) for t in s.start],
            "history_passes": [int(p) for p in s.history_passes],
            "history_triggers": [[int(t) for t in trigger] for trigger in s.history_triggers]}
