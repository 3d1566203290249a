"""The trigger-attack skeleton (monollm.attacks.trigger) on tiny random models: equal forward-pass
budgets on both models, the rows it adds (every restart's trigger, the budget curve, opt_dnll),
checkpoints under a budget, each attack's own control sample, and triggers that round-trip on
their own."""
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from attack_models import CONT, Disk, examples, model, plant, tokenizer, unused_symbol
from monollm.attacks import budgets, gcg, random_search, run_attack, trigger, trigger_rows, uat
from monollm.attacks.common import (allowed_tokens, context, continuation_nll, rows_survive, sample_trigger,
                                    trigger_survives)
from monollm.attacks.gradients import score_triggers

BUDGET = 600
"""Forward passes per search and model: 75 candidates on the 8 attack_opt examples."""
B = 8
PARAMS = {"uat": uat.UATConfig(trigger_len=3, top_k=4, widen=2, steps=4, restarts=2, controls=2),
          "random_search": random_search.RandomSearchConfig(trigger_len=3, steps=4, batch=8, controls=2)}


def split():
    return {"test": examples(8, 0), "attack_opt": examples(B, 1)}


def attack(name, budget=BUDGET, **kw):
    models = {"baseline": model(0), "monotonic": model(1)}
    return models, run_attack(name, models, tokenizer(), split(), CONT, 16, kw.pop("params", PARAMS[name]), seed=0,
                              log=lambda _: None, budget=budget, **kw)


@pytest.fixture(scope="module", params=sorted(PARAMS))
def budgeted(request):
    return request.param, *attack(request.param)


def of(results, kind, source=None, model=None):
    return [r for r in results if r.kind == kind and (source is None or r.source_model == source)
            and (model is None or r.model == model)]


@pytest.mark.parametrize("name, module", [("uat", uat), ("gcg", gcg), ("random_search", random_search)])
def test_every_search_spends_the_budget_on_both_models(name, module):
    """Restarts run until the budget is spent; the last one stops where it runs out, so each model's
    search spends the budget to within two batches of passes (a gradient and one candidate)."""
    tok, opt = tokenizer(), torch.as_tensor(examples(B, 1))
    params = PARAMS.get(name) or gcg.GCGConfig(trigger_len=3, top_k=8, batch=16, steps=4, restarts=2)
    allowed = allowed_tokens(tok, 320)
    spent = []
    for m in (model(0), model(1)):
        found = module.search(m, tok, opt, allowed, params, np.random.default_rng(0), CONT, 16, budget=BUDGET)
        spent.append(sum(s.forward_passes for s in found))
        assert sum(s.forward_passes for s in found[:-1]) < BUDGET  # each restart began within the budget
        for s in found:
            assert len(s.history) == len(s.history_passes) == len(s.history_triggers)
            assert s.history_passes[0] == B and np.all(np.diff(s.history_passes) > 0)
            assert s.history_triggers[0] == s.start and s.history_triggers[-1] == s.trigger
    assert all(BUDGET <= p < BUDGET + 2 * B for p in spent), spent


def test_a_search_without_budget_runs_its_restarts():
    tok, opt = tokenizer(), torch.as_tensor(examples(B, 1))
    found = random_search.search(model(0), tok, opt, allowed_tokens(tok, 320), PARAMS["random_search"],
                                 np.random.default_rng(0), CONT, 16)
    assert len(found) == PARAMS["random_search"].restarts
    # no gradient pass: one pass per example for the start and for every candidate of its 4 steps
    assert all(s.forward_passes == B * s.candidate_evals and 4 < s.candidate_evals <= 1 + 4 * 8 for s in found)


def test_restart_rows_are_every_restarts_final_trigger_on_every_model(budgeted):
    name, models, results = budgeted
    for source in models:
        own = of(results, "attack", source, source)[0]
        restarts = of(results, "restart", source)
        trials = sorted({r.trial for r in restarts})
        assert trials == list(range(len(trials))) and len(trials) >= 2
        assert len(restarts) == len(trials) * len(models) and {r.model for r in restarts} == set(models)
        # the restarts' passes add up to the attack's (no re-scoring: the search used all of attack_opt)
        assert sum(r.forward_passes for r in restarts if r.model == source) == own.forward_passes
        assert own.trigger_ids in [r.trigger_ids for r in restarts]
        for r in restarts:
            assert r.ranking == own.ranking and r.budget == BUDGET and len(r.trigger_ids) == 3
            attacked = continuation_nll(models[r.model], torch.as_tensor(
                [r.trigger_ids + row.tolist() for row in split()["test"]]), CONT, 16).numpy()
            np.testing.assert_allclose(r.attacked_nll, attacked, atol=1e-5)


FRACTIONS = [1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1]
"""The default 8 points of a budget curve."""
CURVE_PASSES = [5, 9, 19, 38, 75, 150, 300]
"""FRACTIONS[:-1] of BUDGET = 600 passes, rounded (4.69, 9.38, 18.75, 37.5, 75, 150, 300)."""


def test_budget_rows_are_a_curve_on_every_model_that_ends_at_the_attack(budgeted):
    name, models, results = budgeted
    opt = torch.as_tensor(split()["attack_opt"])
    for source in models:
        curve = of(results, "budget", source)
        own, other = of(results, "attack", source, source)[0], of(results, "transfer", source)[0]
        assert len(curve) == 8 * 2  # 8 fractions x 2 scored models, by fraction then model
        assert [r.trial for r in curve] == [t for t in range(8) for _ in range(2)]
        assert [r.model for r in curve] == ["baseline", "monotonic"] * 8
        assert [r.budget_fraction for r in curve[::2]] == FRACTIONS
        assert [r.forward_passes for r in curve[:-2:2]] == CURVE_PASSES
        for scored in models:  # each model's curve: one trigger per fraction, the same on every model
            mine = of(results, "budget", source, scored)
            assert [r.trigger_ids for r in mine] == [r.trigger_ids for r in curve[::2]]
        assert curve[-1].forward_passes == own.forward_passes and curve[-1].trigger_ids == own.trigger_ids
        for end, row in zip(curve[-2:], (own, other) if source == "baseline" else (other, own)):
            assert end.model == row.model
            np.testing.assert_array_equal(end.attacked_nll, row.attacked_nll)
        for r in curve:  # every point re-scores to its own trigger's NLL on its model
            attacked = continuation_nll(models[r.model], torch.as_tensor(
                [r.trigger_ids + row.tolist() for row in split()["test"]]), CONT, 16).numpy()
            np.testing.assert_allclose(r.attacked_nll, attacked, atol=1e-5)
        objective = [float(score_triggers(models[source], torch.tensor([r.trigger_ids]), opt, CONT, 16).mean())
                     for r in curve[::2]]
        assert all(b >= a - 1e-6 for a, b in zip(objective, objective[1:])), objective
        assert objective[-1] > objective[0]
        assert all(np.isnan(r.opt_dnll) for r in curve)


def test_opt_dnll_is_the_triggers_damage_on_all_of_attack_opt(budgeted):
    name, models, results = budgeted
    opt = torch.as_tensor(split()["attack_opt"])
    clean = {m: continuation_nll(models[m], opt, CONT, 16).numpy() for m in models}
    for r in results:
        if r.kind in ("attack", "transfer", "restart"):
            attacked = score_triggers(models[r.model], torch.tensor([r.trigger_ids]), opt, CONT, 16)[0].numpy()
            assert r.opt_dnll == pytest.approx(float(np.mean(attacked - clean[r.model])), abs=1e-5)
            assert r.rows()[0]["opt_dnll"] == r.rows()[-1]["opt_dnll"] == r.opt_dnll
        else:
            assert np.isnan(r.opt_dnll)
    own = of(results, "attack", "baseline", "baseline")[0]
    assert own.opt_dnll > 0  # the search raised the loss on attack_opt


def test_budget_column(budgeted):
    _, _, results = budgeted
    for r in results:
        assert r.budget == (0 if r.kind == "control" else BUDGET)
        row = r.rows()[0]
        assert row["budget"] == r.budget and np.isnan(row["budget_fraction"]) == (r.kind != "budget")
    _, plain = attack("uat", budget=0)
    assert {r.budget for r in plain} == {0}
    assert len(of(plain, "restart", "baseline", "baseline")) == PARAMS["uat"].restarts


def test_interrupted_budgeted_search_continues_where_it_stopped(tmp_path):
    models, whole = attack("random_search")
    first = Disk(str(tmp_path / "a"))
    attack("random_search", checkpoint=first)
    restarts = len(of(whole, "restart", "baseline", "baseline"))
    assert len(first.folders) == restarts + len(of(whole, "restart", "monotonic", "monotonic"))
    resumed = attack("random_search", checkpoint=Disk(str(tmp_path / "b"), resume_from=first.folders[1]))[1]
    for got, want in zip(resumed, whole, strict=True):
        assert (got.kind, got.model, got.trial, got.trigger_ids) == (want.kind, want.model, want.trial, want.trigger_ids)
        assert got.forward_passes == want.forward_passes and np.array_equal(got.attacked_nll, want.attacked_nll)


def test_interrupted_auto_budget_search_continues_where_it_stopped(tmp_path):
    """The auto budget's stages are re-derived from the saved restarts: a search resumed mid-way (at
    every third checkpoint) ends with the same restarts, budgets and rows as an uninterrupted one."""
    # from 37 passes baseline converges at 74 and monotonic at 148 (two doublings), then baseline is
    # continued to 148: the checkpoints cover every kind of stage
    auto = dict(budget="auto", max_budget=BUDGET, auto_start=37)
    models, whole = attack("random_search", **auto)
    base, mono = of(whole, "attack", "baseline", "baseline")[0], of(whole, "attack", "monotonic", "monotonic")[0]
    assert (base.budget_converged_at, mono.budget_converged_at, base.budget, mono.budget) == (74, 148, 148, 148)
    first = Disk(str(tmp_path / "a"))
    attack("random_search", checkpoint=first, **auto)
    assert len(first.folders) >= 6
    for k in range(1, len(first.folders), 3):
        resumed = attack("random_search", checkpoint=Disk(str(tmp_path / f"b{k}"), resume_from=first.folders[k]),
                         **auto)[1]
        for got, want in zip(resumed, whole, strict=True):
            assert (got.kind, got.model, got.trial, got.trigger_ids) == (want.kind, want.model, want.trial,
                                                                         want.trigger_ids)
            assert (got.forward_passes, got.budget, got.budget_converged_at, got.budget_capped) == \
                (want.forward_passes, want.budget, want.budget_converged_at, want.budget_capped)
            np.testing.assert_array_equal(got.attacked_nll, want.attacked_nll)


def test_best_within_counts_restarts_cumulatively():
    a = trigger.Search([2], 2.0, [1.0, 2.0], 100, start=[1], history_passes=[10, 60], history_triggers=[[1], [2]])
    b = trigger.Search([4], 3.0, [0.5, 3.0], 100, start=[3], history_passes=[10, 90], history_triggers=[[3], [4]])
    assert trigger.best_within([a, b], 5) == [1]  # not even the start yet: the first start
    assert trigger.best_within([a, b], 59) == [1] and trigger.best_within([a, b], 60) == [2]
    assert trigger.best_within([a, b], 189) == [2] and trigger.best_within([a, b], 190) == [4]
    assert trigger._plain(b) == dataclasses.asdict(b) and trigger.Search(**trigger._plain(b)) == b


def test_each_attack_draws_its_own_controls():
    ctx = context({"baseline": model(0)}, tokenizer(), split(), CONT, 16, seed=0)
    params = PARAMS["uat"]
    mine = [r.trigger_ids for r in trigger_rows.controls(ctx, "uat", params)]
    assert mine == [r.trigger_ids for r in trigger_rows.controls(ctx, "uat", params)]  # reproducible
    theirs = [r.trigger_ids for r in trigger_rows.controls(ctx, "gcg", params)]
    assert all(a != b for a, b in zip(mine, theirs))
    more = [r.trigger_ids for r in trigger_rows.controls(ctx, "uat", params, draws=params.controls + 3)]
    assert len(more) == params.controls + 3 and more[:params.controls] == mine  # more draws keep the first ones


def test_an_attack_draws_a_control_per_distinct_trigger_it_found_on_a_model():
    """Hand-built rows: on the baseline 3 distinct triggers (one found twice), on the monotonic model 1."""
    def r(model, ids):
        return SimpleNamespace(model=model, trigger_ids=list(ids))

    found = [r("baseline", (1, 2)), r("baseline", (1, 2)), r("baseline", (3, 4)), r("baseline", (5, 6)),
             r("monotonic", (1, 2))]
    assert trigger_rows.control_draws(2, found) == 3
    assert trigger_rows.control_draws(16, found) == 16
    assert trigger_rows.control_draws(4, []) == 4


class AloneBreaks:
    """The test tokenizer, except that a short text (a trigger on its own, not before an example)
    that holds `token`'s text with anything else (`after_start`: after its first character)
    encodes to other ids, as a merge at the end of a text can: such triggers survive before every
    example but not on their own."""

    def __init__(self, tok, token: int, after_start: bool = False):
        self.tok, self.text, self.after_start = tok, tok.decode([token]), after_start
        self.all_special_ids = tok.all_special_ids

    def breaks(self, text: str, ids: list[int]) -> bool:
        where = text.find(self.text)
        return len(ids) < 6 and text != self.text and (where > 0 if self.after_start else where >= 0)

    def __len__(self):
        return len(self.tok)

    def decode(self, ids):
        return self.tok.decode(ids)

    def batch_decode(self, rows):
        return self.tok.batch_decode(rows)

    def __call__(self, texts, add_special_tokens=False):
        ids = self.tok(texts, add_special_tokens=add_special_tokens)["input_ids"]
        return {"input_ids": [[0] if self.breaks(t, e) else e for t, e in zip(texts, ids)]}


def test_triggers_round_trip_on_their_own_where_they_are_accepted_and_drawn():
    """A model that rewards token X, and a tokenizer under which a trigger holding X survives before
    every example but not on its own: the search never accepts such a trigger (else the final
    selection would find none and fail after the whole search), and random starts never draw one."""
    x = unused_symbol()
    tok = AloneBreaks(tokenizer(), x)
    weak = {"weak": plant(model(0), x, unused_symbol(skip=(x,)))}
    params = uat.UATConfig(trigger_len=2, top_k=4, widen=2, steps=4, restarts=1, controls=1, guidance_sample=0)
    rows = run_attack("uat", weak, tok, split(), CONT, 16, params, seed=0, log=lambda _: None)
    assert all(x not in r.trigger_ids and rows_survive(tok, [r.trigger_ids])[0] for r in rows)
    cands = torch.tensor([[x, 50], [60, 50]])
    assert trigger.best_surviving(tok, cands, torch.tensor([9.0, 5.0]), 1.0, split()["test"]) == 1
    # starts: position by position, so X may only come first (it cannot follow another token)
    after, allowed = AloneBreaks(tokenizer(), x, after_start=True), torch.zeros(320, dtype=torch.bool)
    allowed[[x, 60]] = True
    draws = [sample_trigger(np.random.default_rng(s), allowed, 2, after, split()["test"], 50) for s in range(20)]
    assert [60, x] not in draws and [x, 60] in draws and [60, 60] in draws


# --- a planted search: `ascend` replaced by a stand-in whose restarts follow a hand-written plan ---------

STEP = 100
"""Forward passes of one planted restart: its start at 8 (one pass per attack_opt example), a middle
trigger accepted at 50 and a final one at 100 (passes counted from the restart's beginning)."""


def planted(plans: dict):
    """An `ascend` stand-in: on model m, restart i (counted per model) follows plans[id(m)][i] =
    (middle trigger, its objective, final trigger, its objective), from the start the skeleton drew
    (objective 0). A restart given fewer passes (`max_passes`) stops there: its steps after it are cut.
    Like a real ascent, a restart is determined by its start: run again from the same start it follows
    the same plan."""
    seen = {}

    def ascend(model, tokenizer, opt_ids, allowed, init, params, n_cont, batch_size, max_passes=0, **_):
        mine = seen.setdefault(id(model), {})
        i = mine.setdefault(tuple(init), len(mine))
        middle, m, final, f = plans[id(model)][i]
        s = trigger.Search(list(init), 0.0, [0.0], forward_passes=B, candidate_evals=1, start=list(init),
                           history_passes=[B], history_triggers=[list(init)])
        for at, trig, objective in ((50, middle, m), (STEP, final, f)):
            if max_passes and at > max_passes:
                break
            s.forward_passes = at
            s.accept(trig, objective)
        s.forward_passes = min(STEP, max_passes or STEP)
        return s
    return ascend


def pool(n: int, seed: int = 5) -> list[list[int]]:
    """n distinct random triggers of 3 tokens that survive re-tokenization before every example."""
    tok, every = tokenizer(), np.concatenate([split()["attack_opt"], split()["test"]])
    rng, out = np.random.default_rng(seed), []
    while len(out) < n:
        t = sample_trigger(rng, allowed_tokens(tok, 320), 3, tok, every, 200)
        out += [t] if t not in out else []
    return out


def planted_run(models: dict, plans: dict, **kw):
    """trigger.run with the planted `ascend` on `models`; returns (rows, the log, the scoring calls' kinds)."""
    lines, kinds = [], []
    ctx = context(models, tokenizer(), split(), CONT, 16, seed=0, log=lines.append, **kw)
    score = ctx.score
    ctx.score = lambda *a, **k: kinds.append(k.get("kind", "")) or score(*a, **k)
    params = uat.UATConfig(trigger_len=3, restarts=2, controls=1, guidance_sample=0)
    return trigger.run(ctx, params, "planted", planted(plans)), lines, kinds


def test_budget_curve_points_are_the_best_within_each_fraction_scored_once():
    """A budget of 700 passes, 4 points: fractions 1/8, 1/4, 1/2, 1 at 87.5, 175, 350 and 700 passes.
    Restart i runs from 100 i: its middle trigger at 100 i + 50, its final at 100 i + 100; the best
    objective within 87.5 passes is restart 0's middle (1), within 175 restart 1's middle (3, above
    restart 0's final 2), within 350 restart 3's middle (5, reached at exactly 350), and the reported
    trigger is the best final (restart 6's, 7)."""
    t = pool(14)
    objectives = [(1, 2), (3, 4), (1, 1.5), (5, 6), (2, 3), (4, 5), (6.5, 7)]
    plan = [(t[2 * i], m, t[2 * i + 1], f) for i, (m, f) in enumerate(objectives)]
    models = {"baseline": model(0), "monotonic": model(1)}
    rows, lines, kinds = planted_run(models, {id(m): plan for m in models.values()}, budget=700, curve_points=4)
    want = [t[0], t[2], t[6], t[13]]  # middles of restarts 0, 1, 3; the final of restart 6
    for source in models:
        curve = of(rows, "budget", source)
        assert len(curve) == 4 * 2 and len(of(rows, "restart", source)) == 7 * 2
        assert [r.trigger_ids for r in curve] == [w for w in want for _ in range(2)]
        assert [r.model for r in curve] == ["baseline", "monotonic"] * 4
        assert [r.budget_fraction for r in curve[::2]] == [1 / 8, 1 / 4, 1 / 2, 1]
        assert [r.forward_passes for r in curve[::2]] == [88, 175, 350, 700]
        assert of(rows, "attack", source, source)[0].forward_passes == 700
    # the middles are scored once for both searches (2 x 7 restarts, 2 attacks, 3 middles); 10 controls, not
    # `controls` = 1: one per distinct trigger scored on a model (the same plan on both: 7 finals, 3 middles)
    assert kinds.count("budget") == 3 and kinds.count("restart") == 14 and kinds.count("") == 2 + 10 and len(kinds) == 29
    assert [line.split(": budget curve (")[1][:1] for line in lines if ": budget curve (" in line] == ["3", "0"]


def test_budget_curve_rows_match_best_within_on_the_planted_history():
    """The same plan under a fixed budget of 600 passes and 8 points (5, 9, 19, 38, 75, 150, 300, 600).
    By hand: up to 38 passes nothing but restart 0's random start; at 75 restart 0's middle (objective
    1); at 150 restart 1's middle (3, reached at 150); at 300 restart 1's final (4, above restart 2's
    1 and 1.5); at 600 the reported trigger, restart 3's final (6). The same as best_within on Search
    objects built from the plan (their start: the curve's first trigger, drawn by the skeleton)."""
    t = pool(12)
    objectives = [(1, 2), (3, 4), (1, 1.5), (5, 6), (2, 3), (4, 5)]
    plan = [(t[2 * i], m, t[2 * i + 1], f) for i, (m, f) in enumerate(objectives)]
    models = {"baseline": model(0), "monotonic": model(1)}
    rows, _, _ = planted_run(models, {id(m): plan for m in models.values()}, budget=600)
    curve = of(rows, "budget", "baseline", "baseline")
    start = curve[0].trigger_ids
    assert start not in t and [r.trigger_ids for r in curve] == [start] * 4 + [t[0], t[2], t[3], t[7]]
    assert [r.forward_passes for r in curve] == CURVE_PASSES + [600]
    found = [trigger.Search(final, f, [0.0, m, f], STEP, start=start, history_passes=[B, 50, STEP],
                            history_triggers=[start, middle, final]) for middle, m, final, f in plan]
    assert [r.trigger_ids for r in curve[:-1]] == [trigger.best_within(found, p) for p in CURVE_PASSES]


def rising_chain(m, x: int) -> list[list[int]]:
    """Three triggers whose NLL on model m (planted with token x) rises on every attack_opt example from
    each to the next: two random ones, the second above the first (found by measuring a pool), then one
    holding x. A search through them keeps raising the damage."""
    opt = torch.as_tensor(split()["attack_opt"])
    cands = pool(32, seed=9)
    nll = score_triggers(m, torch.tensor(cands), opt, CONT, 16).numpy()
    pairs = [(i, j) for i in range(len(cands)) for j in range(len(cands)) if np.all(nll[j] > nll[i])]
    assert pairs, "no random trigger above another on every example"
    low, mid = cands[pairs[0][0]], cands[pairs[0][1]]
    high = [x] + mid[1:]
    top = score_triggers(m, torch.tensor([high]), opt, CONT, 16).numpy()[0]
    assert np.all(top > nll[pairs[0][1]]) and trigger_survives(tokenizer(), high, split()["test"])
    return [low, mid, high]


def test_auto_budget_stops_where_the_search_flattens_and_runs_to_the_cap_where_it_rises():
    """auto_start 100, max_budget 400: stages of 100, 200 and 400 passes (one planted restart per 100).
    On baseline restart 0's final (objective 10) stays the best: the doubling to 200 changes nothing, a
    rise of exactly 0, so it converges at 200. On monotonic every restart beats the last, and the best
    triggers at 100, 200 and 400 passes (restarts 0, 1 and 3) raise the NLL on every attack_opt example:
    both doublings rise, and it hits the cap at 400. Then baseline is continued to 400 too."""
    x = unused_symbol()
    models = {"baseline": model(0), "monotonic": plant(model(1), x, unused_symbol(skip=(x,)))}
    low, mid, high = rising_chain(models["monotonic"], x)
    t = [x for x in pool(8) if x not in (low, mid, high)]
    flat = [(t[0], 5.0, t[1], 10.0)] + [(t[2 + i], 0.5, t[5 + i], 1.0) for i in range(3)]
    rising = [(t[0], 0.5, low, 1.0), (t[1], 1.5, mid, 2.0), (t[2], 2.5, t[3], 3.0), (t[4], 3.5, high, 4.0)]
    rows, lines, _ = planted_run(models, {id(models["baseline"]): flat, id(models["monotonic"]): rising},
                                 budget="auto", max_budget=400, auto_start=100)
    base, mono = of(rows, "attack", "baseline", "baseline")[0], of(rows, "attack", "monotonic", "monotonic")[0]
    assert (base.budget, base.budget_converged_at, base.budget_capped) == (400, 200, False)
    assert (mono.budget, mono.budget_converged_at, mono.budget_capped) == (400, 0, True)
    assert base.forward_passes == mono.forward_passes == 400  # equal passes against both models
    assert len(of(rows, "restart", "baseline")) == len(of(rows, "restart", "monotonic")) == 4 * 2
    assert base.trigger_ids == t[1] and mono.trigger_ids == high
    assert {r.budget for r in rows if r.kind != "control"} == {400}
    assert base.rows()[0]["budget_converged_at"] == 200 and mono.rows()[0]["budget_capped"] is True
    assert all(not r.budget_capped and r.budget_converged_at == 0 for r in rows if r.kind != "attack")
    # the curve's fractions are of the final budget
    assert [r.forward_passes for r in of(rows, "budget", "baseline", "baseline")][-3:-1] == [100, 200]
    tests = [line for line in lines if "auto budget 1" in line or "auto budget 2" in line]
    assert [line.split(": ")[0] for line in tests] == ["[planted] baseline"] + ["[planted] monotonic"] * 2
    assert tests[0].endswith("converged") and all(line.endswith("doubling") for line in tests[1:])


class Plan:
    """A planted search for budgets.auto: restart i costs 100 passes and ends at trigger [i] with objective
    objectives[i]; nll([i]) is rises[i] on each of 4 examples (a constant shift: a test with zero spread)."""

    def __init__(self, objectives, nll):
        self.found = [trigger.Search([i], o, [o], STEP, start=[i], history_passes=[STEP], history_triggers=[[i]])
                      for i, o in enumerate(objectives)]
        self.nll, self.asked = nll, []

    def run_to(self, budget):
        self.asked.append(budget)
        return self.found[:-(-budget // STEP)]


def test_auto_doubles_until_the_rise_is_not_significant():
    """Start 100, cap 1600. Objectives rise until restart 3, then stay below it: the best trigger is [0]
    at 100, [1] at 200, [3] at 400 and still [3] at 800, a rise of 0 there: converged at 800."""
    plan = Plan([1, 2, 3, 4, 0, 0, 0, 0], lambda t: np.full(4, [0.0, 0.5, 0.7, 0.9, 0, 0, 0, 0][t[0]]))
    stop = budgets.auto(plan.run_to, plan.nll, 100, 1600, seed=0)
    assert stop == budgets.Stop(800, converged_at=800, capped=False)
    assert plan.asked == [100, 200, 400, 800]


def test_auto_stops_at_the_cap_while_still_rising():
    """Start 100, cap 300: one doubling to 200, then one to the cap (300, not 400); the best trigger keeps
    raising the NLL on every example, so it hits the cap."""
    noise = np.array([0.0, 0.01, -0.01, 0.005])
    plan = Plan([1, 2, 3], lambda t: 0.5 * t[0] + noise)
    stop = budgets.auto(plan.run_to, plan.nll, 100, 300, seed=0)
    assert stop == budgets.Stop(300, converged_at=0, capped=True)
    assert plan.asked == [100, 200, 300]
    # a rise whose CI reaches below 0 is no rise: half the examples up by 0.1, half down by 0.1
    flat = Plan([1, 2], lambda t: np.array([0.1, -0.1] * 4) * t[0])
    assert budgets.auto(flat.run_to, flat.nll, 100, 800, seed=0) == budgets.Stop(200, converged_at=200)


def test_started_within_reads_a_stage_back_from_the_restarts():
    found = Plan([1, 2, 3, 4], None).found  # 100 passes each
    assert budgets.started_within(found, 100) == found[:1] and budgets.started_within(found, 101) == found[:2]
    assert budgets.started_within(found, 0) == found and budgets.started_within(found, 1000) == found


def test_an_auto_budget_search_is_the_search_a_fixed_budget_of_its_size_runs():
    """Restarts of 100 passes, stages of 150 and 300 (auto_start 150, max_budget 300): the first stage
    cuts restart 1 at 50 passes, before its final trigger. Continued to 300, restart 1 runs again from
    its start and finishes, then restart 2 runs: the same restarts, trigger and passes as a fixed budget
    of 300. (Left cut, restart 1 would end at its middle and a fresh restart would begin after it.)"""
    t = pool(8)
    plan = [(t[0], 1.0, t[1], 2.0), (t[2], 3.0, t[3], 9.0), (t[4], 4.0, t[5], 5.0), (t[6], 0.5, t[7], 0.7)]
    models = {"baseline": model(0)}
    auto_rows, _, _ = planted_run(models, {id(models["baseline"]): plan}, budget="auto", max_budget=300,
                                  auto_start=150)
    fixed_rows, _, _ = planted_run(models, {id(models["baseline"]): plan}, budget=300)
    auto, fixed = of(auto_rows, "attack", "baseline")[0], of(fixed_rows, "attack", "baseline")[0]
    assert auto.trigger_ids == fixed.trigger_ids == t[3]  # restart 1's final: reached only when it finishes
    assert auto.forward_passes == fixed.forward_passes == 300
    restarts = lambda rows: [r.trigger_ids for r in of(rows, "restart", "baseline")]  # noqa: E731
    assert restarts(auto_rows) == restarts(fixed_rows) == [t[1], t[3], t[5]]
