"""The trigger-attack skeleton (monollm.attacks.trigger) on tiny random models: equal forward-pass
budgets on both models, the rows it adds (every restart's trigger, the budget curve, opt_dnll),
checkpoints under a budget, each attack's own control sample, and triggers that round-trip on
their own."""
import dataclasses

import numpy as np
import pytest
import torch

from attack_models import CONT, Disk, examples, model, plant, tokenizer, unused_symbol
from monollm.attacks import gcg, random_search, run_attack, trigger, uat
from monollm.attacks.common import allowed_tokens, context, continuation_nll, rows_survive, sample_trigger
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


def test_budget_rows_are_a_curve_that_ends_at_the_attack(budgeted):
    name, models, results = budgeted
    opt = torch.as_tensor(split()["attack_opt"])
    for source in models:
        curve = of(results, "budget", source)
        own = of(results, "attack", source, source)[0]
        assert [r.trial for r in curve] == [0, 1, 2, 3] and {r.model for r in curve} == {source}
        assert [r.budget_fraction for r in curve] == list(trigger.BUDGET_FRACTIONS)
        assert [r.forward_passes for r in curve[:-1]] == [round(f * BUDGET) for f in trigger.BUDGET_FRACTIONS[:-1]]
        assert curve[-1].forward_passes == own.forward_passes and curve[-1].trigger_ids == own.trigger_ids
        np.testing.assert_array_equal(curve[-1].attacked_nll, own.attacked_nll)
        objective = [float(score_triggers(models[source], torch.tensor([r.trigger_ids]), opt, CONT, 16).mean())
                     for r in curve]
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
    mine = [r.trigger_ids for r in trigger._controls(ctx, "uat", params)]
    assert mine == [r.trigger_ids for r in trigger._controls(ctx, "uat", params)]  # reproducible
    theirs = [r.trigger_ids for r in trigger._controls(ctx, "gcg", params)]
    assert all(a != b for a, b in zip(mine, theirs))


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
