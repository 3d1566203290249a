"""`uat`: universal adversarial trigger (Wallace et al. 2019).

One prefix of L tokens for all inputs, found by gradient-guided coordinate ascent on
`attack_opt` examples: each step takes the gradient of the mean continuation loss w.r.t.
the one-hot trigger, keeps the top-k tokens per position by the first-order estimate,
re-scores all L * k single-token swaps exactly in batches, then the combinations of the
best improving swap at each position (also scored exactly), and accepts the best of them
if it raises the loss and survives decode -> encode before every optimization example.
Restarts begin from random triggers; the best final trigger on `attack_opt` is evaluated
once on `test`, together with K random triggers of the same length (the matched control)
and on every other model (transfer).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from monollm import progress
from monollm.attacks.common import (AttackContext, AttackResult, prepend, rows_survive, sample_trigger,
                                    score_attacked, trigger_survives)
from monollm.attacks.gradients import flip_scores, onehot_grad, score_triggers


@dataclass(frozen=True)
class UATConfig:
    """Budget of the universal trigger search and of its random control."""
    trigger_len: int = 5
    """Tokens in the trigger (L)."""
    steps: int = 10
    """Scoring rounds per restart: one batched exact re-score each, after a new gradient (or a
    widening, below); a restart also ends early when no candidate raises the loss."""
    top_k: int = 8
    """Candidate tokens per trigger position from the first-order estimate (L * k re-scored per round)."""
    widen: int = 4
    """When no swap among the top k raises the loss, the next ranks are scored (k more, then
    doubling) under the same gradient, up to the top `k * widen`, before the ascent stops."""
    restarts: int = 2
    """Independent searches from random triggers; the best on attack_opt is kept."""
    opt_examples: int = 0
    """attack_opt examples in the optimization batch (0: all of them)."""
    controls: int = 8
    """Random triggers of the same length scored as the matched control (K)."""
    max_tries: int = 200
    """Draws per position when sampling a random trigger that survives re-tokenization."""

    @property
    def prefix_len(self) -> int:
        """Tokens the attack prepends to a window (its trigger)."""
        return self.trigger_len

    def check(self):
        for name in ("trigger_len", "steps", "top_k", "widen", "restarts", "controls", "max_tries"):
            if getattr(self, name) < 1:
                raise ValueError(f"attack.uat: {name} must be >= 1, got {getattr(self, name)}")
        if self.opt_examples < 0:
            raise ValueError(f"attack.uat: opt_examples must be >= 0 (0: all), got {self.opt_examples}")


@dataclass
class Search:
    """One trigger search: where it ended and what it cost."""
    trigger: list[int]
    objective: float
    """Mean continuation NLL on the optimization batch with `trigger` prepended."""
    history: list[float] = field(default_factory=list)
    """Objective after the start and after every step (never decreasing)."""
    forward_passes: int = 0
    """Sequences through the model, gradient passes included."""
    candidate_evals: int = 0
    """Triggers scored exactly (each over the whole optimization batch)."""
    start: list[int] = field(default_factory=list)
    """The random trigger the ascent began from."""


def propose(grad: torch.Tensor, trigger: torch.Tensor, allowed: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Single-token swaps of `trigger` (L,) long: at every position the tokens ranked lo..hi-1 by the
    first-order gain, best gain first overall. grad: (L, V) one-hot gradient; allowed: (V,) bool.

    Returns (M, L) long, M <= L * (hi - lo).
    """
    L = len(trigger)
    gain, tokens = flip_scores(grad, trigger, allowed).topk(min(hi, int(allowed.sum())), dim=-1)
    gain, tokens = gain[:, lo:], tokens[:, lo:]
    pos = torch.arange(L, device=trigger.device).unsqueeze(1).expand_as(tokens)
    gain, pos, tokens = gain.flatten(), pos.flatten(), tokens.flatten()
    order = gain.argsort(descending=True)
    order = order[gain[order] > float("-inf")]
    cands = trigger.repeat(len(order), 1)
    cands[torch.arange(len(order), device=trigger.device), pos[order]] = tokens[order]
    return cands


def ascend(model, tokenizer, opt_ids: torch.Tensor, allowed: torch.Tensor, init: list[int], params: UATConfig,
           n_cont: int, batch_size: int, target: float = float("inf"), max_evals: int = 0,
           survive: np.ndarray | None = None) -> Search:
    """Coordinate ascent from trigger `init` on the optimization examples opt_ids (B, T) long.

    A swap is accepted only if the trigger survives decode -> encode before every row of
    `survive` (N, T) (default: the optimization examples): give it every example the trigger
    will be scored on, so that the final choice can never fail after the search.

    Each step scores the next ranks of the first-order ranking: the top `top_k` per position
    after a new gradient; when none of them raises the loss, the following ranks (doubling,
    up to `top_k * widen`) under the same gradient before the ascent gives up. Stops after
    `params.steps` steps, at that point, when the objective reaches `target`, or (max_evals > 0)
    once `max_evals` candidates have been scored.
    """
    examples = opt_ids.cpu().numpy() if survive is None else survive
    B, L = len(opt_ids), len(init)
    trigger = torch.tensor(init, device=opt_ids.device)
    objective = float(score_triggers(model, trigger[None], opt_ids, n_cont, batch_size).mean())
    s = Search(list(init), objective, [objective], forward_passes=B, candidate_evals=1, start=list(init))
    depth = 0  # ranks per position already scored under the current gradient
    for _ in range(params.steps):
        left = max_evals - s.candidate_evals if max_evals else None
        if s.objective >= target or left == 0 or depth >= min(params.top_k * params.widen, int(allowed.sum())):
            break
        if depth == 0:
            _, grad = onehot_grad(model, prepend(trigger, opt_ids), 0, L, n_cont, batch_size, shared=True)
            s.forward_passes += B
        cands = propose(grad, trigger, allowed, depth, depth + (depth or params.top_k))[:left]
        depth += depth or params.top_k
        loss = score_triggers(model, cands, opt_ids, n_cont, batch_size).mean(dim=1)
        s.forward_passes += B * len(cands)
        s.candidate_evals += len(cands)
        combos = combine(trigger, cands, loss, s.objective)[:max(0, left - len(cands)) if left else None]
        if len(combos):
            cands = torch.cat([cands, combos])
            loss = torch.cat([loss, score_triggers(model, combos, opt_ids, n_cont, batch_size).mean(dim=1)])
            s.forward_passes += B * len(combos)
            s.candidate_evals += len(combos)
        accepted = _best_surviving(tokenizer, cands, loss, s.objective, examples)
        if accepted is not None:
            trigger, s.objective, depth = cands[accepted], float(loss[accepted]), 0
            s.trigger = trigger.tolist()
            s.history.append(s.objective)
    return s


def combine(trigger: torch.Tensor, cands: torch.Tensor, loss: torch.Tensor, current: float) -> torch.Tensor:
    """Triggers that apply several improving single swaps at once: (P - 1, L) long.

    trigger: (L,); cands: (M, L) single-token swaps of it with exact losses (M,). The best
    improving swap of each of the P positions that have one is taken, positions ordered by
    that loss; row j applies the first j + 2 of them. Swaps at different positions mostly
    add up, so one gradient step can move several positions (each combination is scored
    exactly before it can be accepted).
    """
    pos = (cands != trigger).float().argmax(dim=1)
    best: dict[int, int] = {}
    for i in loss.argsort(descending=True).tolist():
        if float(loss[i]) <= current:
            break
        best.setdefault(int(pos[i]), i)
    rows, out = trigger.clone(), []
    for p, i in best.items():
        rows = rows.clone()
        rows[p] = cands[i, p]
        out.append(rows)
    return torch.stack(out[1:]) if len(out) > 1 else trigger.new_zeros((0, len(trigger)))


def _best_surviving(tokenizer, cands: torch.Tensor, loss: torch.Tensor, current: float, examples: np.ndarray):
    """Index of the highest-loss candidate above `current` that survives re-tokenization, or None."""
    for i in loss.argsort(descending=True).tolist():
        if float(loss[i]) <= current:
            return None
        if trigger_survives(tokenizer, cands[i].tolist(), examples):
            return i
    return None


def search(model, tokenizer, opt_ids: torch.Tensor, allowed: torch.Tensor, params: UATConfig,
           rng: np.random.Generator, n_cont: int, batch_size: int, target: float = float("inf"),
           max_evals: int = 0, log=None, done: list[Search] | None = None, on_restart=None,
           survive: np.ndarray | None = None) -> list[Search]:
    """`params.restarts` ascents from random triggers (fewer when `target` or `max_evals` is hit first).

    Returns one Search per restart run; their compute adds up to the search's. `log`, if given,
    gets a progress line after every restart. `done` holds restarts finished before an
    interruption (with `rng` restored to its state after them); `on_restart(found)` is called
    after every restart so that a long search can be checkpointed. Random starts and accepted
    swaps survive decode -> encode before every row of `survive` (default: opt_ids; see `ascend`).
    """
    examples = opt_ids.cpu().numpy() if survive is None else survive
    found, started = list(done or []), time.time()
    for restart in range(len(found), params.restarts):
        spent = sum(s.candidate_evals for s in found)
        if (found and max(s.objective for s in found) >= target) or (max_evals and spent >= max_evals):
            break
        init = sample_trigger(rng, allowed, params.trigger_len, tokenizer, examples, params.max_tries)
        found.append(ascend(model, tokenizer, opt_ids, allowed, init, params, n_cont, batch_size,
                            target=target, max_evals=max_evals - spent if max_evals else 0, survive=examples))
        if on_restart:
            on_restart(found)
        if log:
            log(progress.line("restart", restart + 1, params.restarts, started) + f"; best attack_opt NLL "
                f"{max(s.objective for s in found):.3f}, {sum(s.candidate_evals for s in found)} candidates")
    return found


def select(model, tokenizer, found: list[Search], opt_all: torch.Tensor, test: np.ndarray, n_cont: int,
           batch_size: int, rescore: bool) -> tuple[list[int], int]:
    """The best trigger on all of attack_opt among those that survive before every test example.

    opt_all: (N, T) long. When `rescore` (the search used a subset of attack_opt), the final
    triggers are scored on all of it first. Returns (trigger, forward passes spent here).
    """
    triggers = torch.tensor([s.trigger for s in found], device=opt_all.device)
    if rescore:
        objective, spent = score_triggers(model, triggers, opt_all, n_cont, batch_size).mean(dim=1), len(found) * len(opt_all)
    else:
        objective, spent = torch.tensor([s.objective for s in found]), 0
    for i in objective.argsort(descending=True).tolist():
        alone = rows_survive(tokenizer, [found[i].trigger])[0]  # the reported ids are its text's ids
        if alone and trigger_survives(tokenizer, found[i].trigger, test):
            return found[i].trigger, spent
    raise RuntimeError("no final trigger survives decode -> encode before every test example (the search "
                       "must be given the test examples as `survive`)")


def run(ctx: AttackContext, params: UATConfig) -> list[AttackResult]:
    """A trigger searched on each model, scored on every model (its own: kind "attack"; the
    others: "transfer"), plus `params.controls` random triggers on every model ("control").

    The context's `checkpoint` (optional; `save(state, step)` and `restore()`, see
    monollm.checkpoints) keeps every finished restart, so an interrupted branch continues with
    the restarts it finished and ends with the same trigger as an uninterrupted one.

    Searches "attack_opt", reports on "test". Every model's search starts from the same random
    restarts; the controls are the same random triggers for every model (paired). The search
    runs in the context's precision; every reported NLL is scored in fp32.
    """
    examples, log, n_cont, batch_size = ctx.examples, ctx.log, ctx.n_cont, ctx.batch_size
    tokenizer, allowed, test, checkpoint = ctx.tokenizer, ctx.allowed, ctx.test, ctx.checkpoint
    opt_all = ctx.split("attack_opt")
    opt = opt_all[:params.opt_examples or None]
    results = []
    saved = (checkpoint.restore() or {}).get("uat", {}) if checkpoint else {}
    # every trigger is kept re-tokenizable before all the examples it will be scored on
    survive = np.concatenate([examples["attack_opt"], examples["test"]])
    for source, model in ctx.models.items():
        rng = np.random.default_rng([ctx.seed, 0])
        if source in saved:
            rng.bit_generator.state = saved[source]["rng"]
            log(f"[uat] {source}: continuing after {len(saved[source]['found'])} finished restarts")
        with ctx.searching():
            found = search(model, tokenizer, opt, allowed, params, rng, n_cont, batch_size,
                           log=lambda msg, source=source: log(f"[uat] {source}: {msg}"),
                           done=[Search(**f) for f in saved.get(source, {}).get("found", [])],
                           on_restart=_saver(checkpoint, saved, source, rng) if checkpoint else None,
                           survive=survive)
            trigger, extra = select(model, tokenizer, found, opt_all, examples["test"], n_cont,
                                    batch_size, rescore=len(opt) < len(opt_all))
        cost = dict(forward_passes=sum(s.forward_passes for s in found) + extra,
                    candidate_evals=sum(s.candidate_evals for s in found))
        rows = _evaluate(ctx.models, tokenizer, trigger, test, ctx.clean, n_cont, batch_size, source=source, **cost)
        results += rows
        log(f"[uat] {source}: trigger {tokenizer.decode(trigger)!r} after {cost['candidate_evals']} candidates, "
            f"attack_opt NLL {max(s.objective for s in found):.3f}; test " + _summary(rows))
    return results + _controls(ctx.models, tokenizer, examples["test"], test, ctx.clean, allowed, params, ctx.seed,
                               n_cont, batch_size, log)


def _controls(models: dict, tokenizer, windows: np.ndarray, test: torch.Tensor, clean: dict, allowed,
              params: UATConfig, seed: int, continuation_len: int, batch_size: int, log) -> list[AttackResult]:
    """`params.controls` random triggers of the trigger's length, each scored on every model
    (kind "control"): the same triggers, examples and position for every model."""
    rng, results = np.random.default_rng([seed, 1]), []
    for trial in range(params.controls):
        trigger = sample_trigger(rng, allowed, params.trigger_len, tokenizer, windows, params.max_tries)
        rows = _evaluate(models, tokenizer, trigger, test, clean, continuation_len, batch_size, trial=trial)
        results += rows
        log(f"[uat] control {trial + 1}/{params.controls} {tokenizer.decode(trigger)!r}: " + _summary(rows))
    return results


def _saver(checkpoint, saved: dict, source: str, rng: np.random.Generator):
    """on_restart callback: checkpoint every model's finished restarts and the RNG after them."""
    def save(found: list[Search]):
        # plain values only: checkpoints are read back with torch.load(weights_only=True)
        saved[source] = {"found": [_plain(s) for s in found], "rng": rng.bit_generator.state}
        checkpoint.save({"uat": saved, "step": sum(len(v["found"]) for v in saved.values())},
                        sum(len(v["found"]) for v in saved.values()))
    return save


def _plain(s: Search) -> dict:
    """A Search as plain Python values (`Search(**_plain(s)) == s`)."""
    return {"trigger": [int(t) for t in s.trigger], "objective": float(s.objective),
            "history": [float(h) for h in s.history], "forward_passes": int(s.forward_passes),
            "candidate_evals": int(s.candidate_evals), "start": [int(t) for t in s.start]}


def _evaluate(models: dict, tokenizer, trigger: list[int], test: torch.Tensor, clean: dict, n_cont: int,
              batch_size: int, source: str = "", trial: int = 0, **cost) -> list[AttackResult]:
    """`trigger` before every test example (N, T), scored on every model (common.score_attacked)."""
    attacked = prepend(torch.tensor(trigger, device=test.device), test)
    return score_attacked("uat", models, tokenizer, attacked, test, clean, n_cont, batch_size, source=source,
                          trial=trial, trigger_ids=list(trigger), trigger_text=tokenizer.decode(trigger), **cost)


def _summary(rows: list[AttackResult]) -> str:
    return ", ".join(f"{r.model} dNLL {np.mean(r.attacked_nll - r.clean_nll):+.3f}" for r in rows)
