"""`hotflip` on tiny random models: flips stay in the context, within budget, allowed; the search
only climbs; the primary control flips exactly the attack's positions, the second one as many
random positions; a planted weakness is found; every ranking ("gradient", "random", "exact")
counts its compute honestly and the rows carry the ranking and the gradient guidance."""
import dataclasses

import numpy as np
import pytest
import torch

from attack_models import CONT, CONTEXT, examples, model, plant, tokenizer, unused_symbol
from monollm.attacks import attack_config, run_attack
from monollm.attacks import flip_budget, hotflip
from monollm.attacks.common import allowed_tokens, continuation_nll, retokenized, rows_survive
from monollm.errors import ConfigError

SMALL = hotflip.HotFlipConfig(max_flips=3, candidates=6, controls=2, guidance_sample=512)


@pytest.fixture(scope="module")
def rows():
    models = {"baseline": model(0), "monotonic": model(1)}
    return models, run_attack("hotflip", models, tokenizer(), {"test": examples(8, 0)}, CONT, 16, SMALL, seed=0,
                               log=lambda _: None)


def search(m, params=SMALL, rng=None):
    tok, test = tokenizer(), torch.as_tensor(examples(8, 0))
    return test, hotflip.search(m, tok, test, allowed_tokens(tok, 320), CONTEXT, CONT, params, batch_size=16, rng=rng)


def active_per_round(found) -> list[int]:
    """Examples searched in each round the search ran: all, then those whose loss rose in the last."""
    history, active, out = torch.stack(found.history), torch.ones(len(found.loss), dtype=torch.bool), []
    for r in range(1, len(history)):
        out.append(int(active.sum()))
        active &= history[r] > history[r - 1]
    return out


def test_at_most_f_flips_inside_the_context_with_allowed_tokens():
    test, found = search(model(0))
    changed = found.ids != test
    assert not changed[:, CONTEXT:].any()  # the continuation is never perturbed
    assert (changed.sum(1) <= SMALL.max_flips).all() and changed.any()
    allowed = allowed_tokens(tokenizer(), 320)
    assert allowed[found.ids[changed]].all()
    assert torch.equal(retokenized(tokenizer(), found.ids), found.ids)  # survives decode -> encode


def test_search_only_climbs_and_reports_exact_losses():
    m = model(0)
    test, found = search(m)
    history = torch.stack(found.history)
    assert (history[1:] >= history[:-1]).all()
    assert (found.loss > history[0]).any()
    assert torch.allclose(found.loss, continuation_nll(m, found.ids, CONT, 16), atol=1e-5)
    assert found.candidate_evals > 0 and found.forward_passes > found.candidate_evals


def test_rows_controls_and_transfer(rows):
    models, results = rows
    attack = {(r.kind, r.model, r.source_model): r for r in results if r.kind in ("attack", "transfer")}
    assert set(attack) == {("attack", "baseline", "baseline"), ("transfer", "monotonic", "baseline"),
                           ("attack", "monotonic", "monotonic"), ("transfer", "baseline", "monotonic")}
    assert {r.kind for r in results} == {"attack", "transfer", "control", "control_random_positions"}
    for source in models:
        own = attack[("attack", source, source)]
        assert np.array_equal(attack[("transfer", *(set(models) - {source}), source)].attacked_ids, own.attacked_ids)
        for kind in ("control", "control_random_positions"):
            for target in models:  # a control for every model the flips are scored on
                controls = [r for r in results if (r.kind, r.model, r.source_model) == (kind, target, source)]
                assert sorted(c.trial for c in controls) == list(range(SMALL.controls))
                for c in controls:
                    assert np.array_equal(c.n_changed, own.n_changed)  # same flip count per example
                    assert c.forward_passes == 0 and c.candidate_evals == 0
        assert own.candidate_evals > 0
        assert np.all(own.attacked_nll >= own.clean_nll - 1e-6)  # an ascent: never below clean
    for p in (p for m in models.values() for p in m.parameters()):
        assert p.requires_grad and p.grad is None


def test_primary_control_flips_exactly_the_attacks_positions(rows):
    models, results = rows
    allowed = allowed_tokens(tokenizer(), 320)
    for source in models:
        own = next(r for r in results if r.kind == "attack" and r.model == source)
        where = own.attacked_ids != own.input_ids
        moved = 0
        for c in (r for r in results if r.kind == "control" and r.source_model == source):
            changed = c.attacked_ids != c.input_ids
            assert np.array_equal(changed, where)  # the attack's positions, each one a new token
            assert allowed[torch.as_tensor(c.attacked_ids[changed])].all()
            attacked = torch.as_tensor(c.attacked_ids)
            assert torch.equal(retokenized(tokenizer(), attacked), attacked)
            same = [r for r in results if (r.kind, r.source_model, r.trial) == ("control", source, c.trial)]
            assert all(np.array_equal(r.attacked_ids, c.attacked_ids) for r in same)  # one draw on every model
        for c in (r for r in results if r.kind == "control_random_positions" and r.source_model == source):
            changed = c.attacked_ids != c.input_ids
            assert np.array_equal(changed.sum(1), where.sum(1)) and not changed[:, CONTEXT:].any()
            moved += int((changed != where).any())
        assert moved  # the second control does not sit on the attack's positions


def test_random_tokens_at_fixed_positions():
    tok, test = tokenizer(), torch.as_tensor(examples(8, 0))
    positions = torch.zeros_like(test, dtype=torch.bool)
    positions[1, [CONTEXT - 1]] = positions[2, [0, 5, CONTEXT - 2]] = True
    allowed = allowed_tokens(tok, 320)
    for seed in range(3):
        flipped = hotflip.random_tokens_at(np.random.default_rng(seed), test, positions, allowed, tok, 50)
        assert torch.equal(flipped != test, positions) and allowed[flipped[positions]].all()
        assert torch.equal(retokenized(tok, flipped), flipped)


def test_random_flips_match_counts_and_stay_in_context():
    tok, test = tokenizer(), torch.as_tensor(examples(8, 0))
    counts = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    allowed = allowed_tokens(tok, 320)
    flipped = hotflip.random_flips(np.random.default_rng(0), test, counts, allowed, CONTEXT, tok, 50)
    changed = flipped != test
    assert np.array_equal(changed.sum(1).numpy(), counts)
    assert not changed[:, CONTEXT:].any() and allowed[flipped[changed]].all()
    assert torch.equal(retokenized(tok, flipped), flipped)


def test_planted_weakness_is_found():
    token = unused_symbol()
    weak = plant(model(0), token, sink=unused_symbol(skip=(token,)))
    test, found = search(weak, hotflip.HotFlipConfig(max_flips=2, candidates=4))
    assert all(token in row[:CONTEXT].tolist() for row in found.ids)
    assert (found.loss - found.history[0] > 10).all()


def test_config_check():
    hotflip.HotFlipConfig().check()
    with pytest.raises(ValueError, match="max_flips"):
        hotflip.HotFlipConfig(max_flips=0).check()
    with pytest.raises(ValueError, match="attack.hotflip.ranking"):
        hotflip.HotFlipConfig(ranking="topk").check()
    with pytest.raises(ConfigError, match="attack.hotflip.ranking"):
        attack_config("hotflip", {"ranking": "Gradient"}, "attack.hotflip")
    with pytest.raises(ValueError, match="exact_positions"):
        hotflip.HotFlipConfig(exact_positions=0).check()
    hotflip.HotFlipConfig(guidance_sample=0).check()
    with pytest.raises(ValueError, match="exact_positions.*context"):
        search(model(0), hotflip.HotFlipConfig(ranking="exact", exact_positions=CONTEXT + 1))


# --- rankings ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ranked():
    """Every ranking run on two models, with a small guidance sample."""
    models = {"baseline": model(0), "monotonic": model(1)}
    return {ranking: run_attack("hotflip", models, tokenizer(), {"test": examples(8, 0)}, CONT, 16,
                                dataclasses.replace(SMALL, ranking=ranking, guidance_sample=48, controls=1), seed=0,
                                log=lambda _: None)
            for ranking in hotflip.RANKINGS}


def test_rows_carry_ranking_and_guidance(rows, ranked):
    for params, results in [(SMALL, rows[1])] + [(None, r) for r in ranked.values()]:
        sample = SMALL.guidance_sample if params else 48  # swaps in all, spread over the 8 examples
        for r in results:
            if r.kind in ("attack", "transfer"):
                assert r.ranking in hotflip.RANKINGS and r.guidance_n == sample
                assert np.isfinite(r.guidance_spearman) and -1 <= r.guidance_spearman <= 1
                same = [x for x in results if x.kind in ("attack", "transfer") and x.source_model == r.source_model]
                assert {x.guidance_spearman for x in same} == {r.guidance_spearman}  # the source's measurement
            else:
                assert r.ranking == "" and np.isnan(r.guidance_spearman) and r.guidance_n == 0
    for ranking, results in ranked.items():
        assert {r.ranking for r in results if r.kind == "attack"} == {ranking}
    # the measurement is not attack compute: the same search without it reports the same passes
    unmeasured = run_attack("hotflip", {"baseline": model(0)}, tokenizer(), {"test": examples(8, 0)}, CONT, 16,
                            dataclasses.replace(SMALL, guidance_sample=0, controls=1), seed=0, log=lambda _: None)
    own = next(r for r in unmeasured if r.kind == "attack")
    measured = next(r for r in rows[1] if r.kind == "attack" and r.model == "baseline")
    assert own.forward_passes == measured.forward_passes and own.guidance_n == 0 and np.isnan(own.guidance_spearman)


def test_exact_ranking_scores_every_allowed_token_at_the_last_positions():
    P, tok = 2, tokenizer()
    allowed = allowed_tokens(tok, 320)
    test, found = search(model(0), hotflip.HotFlipConfig(max_flips=1, ranking="exact", exact_positions=P))
    # every allowed token at each of the last P positions, minus the tokens already there
    already = allowed[test[:, CONTEXT - P:CONTEXT]].sum()
    assert found.candidate_evals == len(test) * P * int(allowed.sum()) - int(already)
    assert found.forward_passes == len(test) + found.candidate_evals  # clean scoring + candidates, no gradient
    changed = found.ids != test
    assert changed.any() and not changed[:, :CONTEXT - P].any() and not changed[:, CONTEXT:].any()
    # exhaustive: no single swap at those positions does better than the one accepted
    best = found.loss
    for row in range(len(test)):
        for p in range(CONTEXT - P, CONTEXT):
            cands = test[row].repeat(int(allowed.sum()), 1)
            cands[:, p] = allowed.nonzero().flatten()
            exact = continuation_nll(model(0), cands, CONT, 256)
            ok = torch.as_tensor(rows_survive(tok, cands.tolist()))
            assert exact[ok].max() <= best[row] + 1e-5


def test_search_compute_per_ranking(monkeypatch):
    m = model(0)
    _, grad = search(m, SMALL)
    assert grad.forward_passes == 8 + sum(active_per_round(grad)) + grad.candidate_evals
    assert grad.candidate_evals == SMALL.candidates * sum(active_per_round(grad))

    def no_gradient(*a, **k):
        raise AssertionError("a gradient pass")

    monkeypatch.setattr(hotflip, "onehot_grad", no_gradient)
    for ranking in ("random", "exact"):
        test, found = search(m, dataclasses.replace(SMALL, ranking=ranking), rng=np.random.default_rng(0))
        assert found.forward_passes == len(test) + found.candidate_evals
        if ranking == "random":
            assert found.candidate_evals == SMALL.candidates * sum(active_per_round(found))
        history = torch.stack(found.history)
        assert (history[1:] >= history[:-1]).all() and (found.loss > history[0]).any()
        assert torch.allclose(found.loss, continuation_nll(m, found.ids, CONT, 16), atol=1e-5)


def test_random_ranking_draws_allowed_new_tokens_anywhere_in_the_context():
    tok, test = tokenizer(), torch.as_tensor(examples(8, 0))
    allowed, params = allowed_tokens(tok, 320), dataclasses.replace(SMALL, ranking="random", candidates=40)
    pos, tokens, valid = hotflip.propose(None, test, allowed, CONTEXT, CONT, params, 16, np.random.default_rng(0), 40)
    assert pos.shape == tokens.shape == valid.shape == (8, 40) and valid.all()
    assert (pos < CONTEXT).all() and allowed[tokens].all() and (test.gather(1, pos) != tokens).all()
    assert all(len(set(zip(p.tolist(), t.tolist()))) == 40 for p, t in zip(pos, tokens))  # distinct swaps
    assert len(set(pos.flatten().tolist())) > CONTEXT // 2  # spread over the context, not the last positions
    again = hotflip.propose(None, test, allowed, CONTEXT, CONT, params, 16, np.random.default_rng(0), 40)
    assert torch.equal(again[0], pos) and torch.equal(again[1], tokens)  # seeded


def test_exact_ranking_finds_a_planted_weakness_at_least_as_well_as_gradient():
    token = unused_symbol()
    weak = plant(model(0), token, sink=unused_symbol(skip=(token,)))
    test, grad = search(weak, hotflip.HotFlipConfig(max_flips=2, candidates=4))
    _, exact = search(weak, hotflip.HotFlipConfig(max_flips=2, ranking="exact", exact_positions=2))
    assert all(token in row[CONTEXT - 2:CONTEXT].tolist() for row in exact.ids)
    assert (exact.loss - exact.history[0] > 10).all()
    assert (exact.loss >= grad.loss - 1e-3).all()  # both saturate the planted sink (~56.6 nats)


# --- the edit budget (monollm.attacks.flip_budget) ------------------------------------------------

BUDGETED = hotflip.HotFlipConfig(max_flips=2, candidates=5, controls=2, guidance_sample=0)


def budgeted(m, params=BUDGETED, budget=40, allowed=None, seed=0):
    tok, test = tokenizer(), torch.as_tensor(examples(8, 0))
    allowed = allowed_tokens(tok, 320) if allowed is None else allowed
    return test, flip_budget.budgeted_search(m, tok, test, allowed, CONTEXT, CONT, params, 16, budget,
                                             np.random.default_rng(seed))


def counted(monkeypatch):
    """Count the sequences that really go through a model in flip_budget: scored rows and gradient rows."""
    seen = {"scored": 0, "gradient": 0}
    score, grad = flip_budget.continuation_nll, flip_budget.onehot_grad

    def scoring(model, ids, *a, **k):
        seen["scored"] += len(ids)
        return score(model, ids, *a, **k)

    def gradient(model, ids, *a, **k):
        seen["gradient"] += len(ids)
        return grad(model, ids, *a, **k)

    monkeypatch.setattr(flip_budget, "continuation_nll", scoring)
    monkeypatch.setattr(flip_budget, "onehot_grad", gradient)
    return seen


@pytest.mark.parametrize("ranking", ["gradient", "random"])
def test_budgeted_passes_are_the_budget_on_every_example_of_both_models(monkeypatch, ranking):
    params = dataclasses.replace(BUDGETED, ranking=ranking)
    for seed in (0, 1):  # two models: neither runs out of its 12 x ~290 swaps in 40 passes
        seen = counted(monkeypatch)
        test, found = budgeted(model(seed), params, budget=40)
        assert found.passes.tolist() == [40] * 8  # 40 is no multiple of a round: the last one is cut to fit
        # every sequence through the model counted, once: clean scoring, gradients, candidates
        assert seen["scored"] + seen["gradient"] == found.forward_passes == 8 * 40
        assert found.candidate_evals == seen["scored"] - 8
        if ranking == "random":
            assert seen["gradient"] == 0
        else:  # one gradient pass per input an example ranked: its clean one, and each flip accepted before
            # the budget ran out (a flip accepted in the very last round is never ranked)
            ranked = sum(int(((after != before).any(dim=1).numpy() & (spent < 40)).sum())
                         for (_, before), (spent, after) in zip(found.trail, found.trail[1:]))
            assert seen["gradient"] == 8 + ranked


def test_changed_positions_never_exceed_max_flips_and_only_those_are_searched_after():
    for ranking in ("gradient", "random"):
        params = dataclasses.replace(BUDGETED, max_flips=1, ranking=ranking)
        test, found = budgeted(model(0), params, budget=80)
        ever = torch.stack([ids != test for _, ids in found.trail]).any(dim=0)  # (N, T): changed at any point
        # once one position is changed only it is searched; going back to the clean token never raises the
        # loss above what was accepted, so no example ever touches a second position
        assert (ever.sum(dim=1) <= 1).all() and ever.any()
        assert found.passes.tolist() == [80] * 8


def test_open_positions_by_hand():
    clean = torch.zeros(3, CONTEXT + CONT, dtype=torch.long)
    ids = clean.clone()
    ids[1, [2, 7]] = 5  # two changed positions
    ids[2, [CONTEXT - 1]] = 5  # one, the last context position
    two = flip_budget.open_positions(ids, clean, CONTEXT, dataclasses.replace(BUDGETED, max_flips=2))
    assert two[0].all() and two[1].nonzero().flatten().tolist() == [2, 7] and two[2].all()
    one = flip_budget.open_positions(ids, clean, CONTEXT, dataclasses.replace(BUDGETED, max_flips=1))
    assert one[1].nonzero().flatten().tolist() == [2, 7] and one[2].nonzero().flatten().tolist() == [CONTEXT - 1]
    exact = flip_budget.open_positions(ids, clean, CONTEXT, hotflip.HotFlipConfig(max_flips=2, ranking="exact",
                                                                                   exact_positions=2))
    assert exact[0].nonzero().flatten().tolist() == [CONTEXT - 2, CONTEXT - 1]
    assert exact[1].sum() == 0 and exact[2].nonzero().flatten().tolist() == [CONTEXT - 2, CONTEXT - 1]


def test_an_example_that_runs_out_of_swaps_stops_before_the_budget():
    """Two allowed tokens, exact ranking at the last position, one flip: the clean pass, both swaps in
    one round, and, where one raised the loss, the other token in its place (it cannot raise it
    further, being the lesser of the two): 3 passes where neither helped, else 4, far below 100."""
    tok, m, test = tokenizer(), model(0), torch.as_tensor(examples(8, 0))
    a = unused_symbol()
    b = unused_symbol(skip=(a,))
    allowed = torch.zeros(320, dtype=torch.bool)
    allowed[[a, b]] = True
    params = hotflip.HotFlipConfig(max_flips=1, ranking="exact", exact_positions=1)
    _, found = budgeted(m, params, budget=100, allowed=allowed)
    clean = continuation_nll(m, test, CONT, 16)
    best = torch.full((8,), float("-inf"))
    for t in (a, b):
        swapped = test.clone()
        swapped[:, CONTEXT - 1] = t
        best = torch.maximum(best, continuation_nll(m, swapped, CONT, 16))
    assert found.passes.tolist() == torch.where(best > clean, 4, 3).tolist()
    assert ((found.ids != test).sum(dim=1) == (best > clean).long()).all()


def test_widening_finds_a_swap_ranked_below_the_first_candidates(monkeypatch):
    """A planted ranking: on each clean input the first 5 swaps by "gain" lower the loss (measured
    here), the 6th puts the planted token in; nothing else is ranked. The unbudgeted search stops
    after its first round; the budgeted one widens to the 6th and takes it, with no new gradient."""
    token = unused_symbol()
    weak = plant(model(0), token, sink=unused_symbol(skip=(token,)))
    tok, test = tokenizer(), torch.as_tensor(examples(8, 0))
    clean = continuation_nll(weak, test, CONT, 16)
    table = {}
    for row, ids in enumerate(test):  # 5 swaps that lower the loss, found by exact scoring
        cands = ids.repeat(CONTEXT * 4, 1)
        pos, toks = torch.arange(CONTEXT).repeat_interleave(4), torch.tensor([40, 41, 42, 43]).repeat(CONTEXT)
        cands[torch.arange(len(cands)), pos] = toks
        keep = (continuation_nll(weak, cands, CONT, 64) < clean[row]) & (cands[torch.arange(len(cands)), pos] != ids[pos])
        lower = [(int(p), int(t)) for p, t in zip(pos[keep], toks[keep])][:5]
        assert len(lower) == 5
        table[tuple(ids[:CONTEXT].tolist())] = lower + [(0, token)]

    def planted(grad, current, allowed):
        gain = torch.full((len(current), CONTEXT, 320), float("-inf"))
        for r, ctx in enumerate(current):
            for rank, (p, t) in enumerate(table.get(tuple(ctx.tolist()), [])):
                gain[r, p, t] = 100.0 - rank
        return gain

    monkeypatch.setattr(flip_budget, "flip_scores", planted)
    monkeypatch.setattr(hotflip, "flip_scores", planted)
    params = hotflip.HotFlipConfig(max_flips=2, candidates=5)
    plain = hotflip.search(weak, tok, test, allowed_tokens(tok, 320), CONTEXT, CONT, params, 16)
    assert torch.equal(plain.ids, test) and len(plain.history) == 2  # one round, nothing better: stopped
    seen = counted(monkeypatch)
    _, found = budgeted(weak, params, budget=100)
    assert (found.ids[:, 0] == token).all() and ((found.ids != test).sum(dim=1) == 1).all()
    assert (found.loss - clean > 10).all()
    # clean pass, gradient, 5 + 1 candidates (widened), then the new input ranked: nothing left to try
    assert found.passes.tolist() == [1 + 1 + 5 + 1 + 1] * 8 and seen["gradient"] == 16


def test_curve_inputs_by_hand():
    """Three examples of T = 1 token, four points of a search with a budget of 8 passes each."""
    ids = lambda *v: torch.tensor(v)[:, None]  # noqa: E731
    trail = [(np.array([1, 1, 1]), ids(10, 20, 30)),   # the clean inputs
             (np.array([3, 4, 2]), ids(11, 20, 31)),
             (np.array([5, 8, 2]), ids(12, 21, 31)),   # the third example ran out of swaps at 2 passes
             (np.array([8, 8, 2]), ids(13, 21, 31))]
    found = flip_budget.Flips(ids(13, 21, 31), torch.zeros(3), [torch.zeros(3)] * 4, forward_passes=18,
                              passes=np.array([8, 8, 2]), trail=trail)
    got = flip_budget.curve_inputs(found, (0.125, 0.25, 0.5, 1.0), budget=8)
    # limits 1, 2, 4, 8 passes: the last point within each, per example; passes: min(limit, spent), summed
    assert [g[0].flatten().tolist() for g in got] == [[10, 20, 30], [10, 20, 31], [11, 20, 31], [13, 21, 31]]
    assert [g[1] for g in got] == [1 + 1 + 1, 2 + 2 + 2, 4 + 4 + 2, 8 + 8 + 2]
    # without a budget the fractions are of what each example spent (8, 8, 2): limits 4, 4, 1 at one half
    half = flip_budget.curve_inputs(found, (0.5,), budget=0)[0]
    assert half[0].flatten().tolist() == [11, 20, 30] and half[1] == 4 + 4 + 1


@pytest.fixture(scope="module")
def curved():
    models = {"baseline": model(0), "monotonic": model(1)}
    return run_attack("hotflip", models, tokenizer(), {"test": examples(8, 0)}, CONT, 16, BUDGETED, seed=0,
                      log=lambda _: None, edit_budget=30, curve_points=4)


def test_budget_curve_rows(curved):
    own = {r.source_model: r for r in curved if r.kind == "attack"}
    assert {r.budget for r in curved if r.kind in ("attack", "transfer", "budget")} == {30}
    assert {r.forward_passes for r in own.values()} == {8 * 30}  # equal passes on both models
    for source in own:
        curve = [r for r in curved if r.kind == "budget" and r.source_model == source]
        assert len(curve) == 4 * 2  # 4 fractions, each scored on both models
        for target in own:
            points = sorted((r for r in curve if r.model == target), key=lambda r: r.trial)
            assert [r.trial for r in points] == [0, 1, 2, 3]
            assert [r.budget_fraction for r in points] == [0.125, 0.25, 0.5, 1.0]
            assert [r.forward_passes for r in points] == [8 * 3, 8 * 7, 8 * 15, 8 * 30]
            assert np.array_equal(points[-1].attacked_ids, own[source].attacked_ids)
            assert np.array_equal(points[-1].n_changed, own[source].n_changed)
            if target == source:  # the search only climbs: never lower on the model it searched
                nll = np.stack([r.attacked_nll for r in points])
                assert (np.diff(nll, axis=0) >= -1e-5).all() and (nll[-1] > nll[0]).any()
                assert np.allclose(points[0].attacked_nll, points[0].clean_nll)  # 3 passes: nothing flipped yet
                assert np.allclose(points[-1].attacked_nll, own[source].attacked_nll)


def test_budget_curve_scores_identical_inputs_once(monkeypatch):
    """8 points of 30 passes: up to 1/8 (3 passes, before the first round of 1 + 1 + 5 ends) every
    example holds its clean input, so the first five points are one input; the last is the attack's."""
    from monollm.attacks import common

    calls = []
    score = common.AttackContext.score
    monkeypatch.setattr(common.AttackContext, "score",
                        lambda self, attack, attacked, **kw: calls.append(kw.get("kind", "")) or score(
                            self, attack, attacked, **kw))
    params = dataclasses.replace(BUDGETED, controls=1)
    rows = run_attack("hotflip", {"baseline": model(0), "monotonic": model(1)}, tokenizer(), {"test": examples(8, 0)},
                      CONT, 16, params, seed=0, log=lambda _: None, edit_budget=30, curve_points=8)
    assert len([r for r in rows if r.kind == "budget"]) == 8 * 2 * 2
    expected = 0
    for source in ("baseline", "monotonic"):
        curve = sorted((r for r in rows if r.kind == "budget" and r.source_model == source and r.model == source),
                       key=lambda r: r.trial)
        assert all(np.array_equal(r.attacked_ids, r.input_ids) for r in curve[:5])
        distinct = {r.attacked_ids.tobytes() for r in curve} - {curve[-1].attacked_ids.tobytes()}
        assert len(distinct) <= 8 - 5
        expected += 1 + len(distinct)  # the attack's own inputs, then each new curve input once
    assert calls.count("") == expected
