"""`hotflip` on tiny random models: flips stay in the context, within budget, allowed; the search
only climbs; the primary control flips exactly the attack's positions, the second one as many
random positions; a planted weakness is found."""
import numpy as np
import pytest
import torch

from attack_models import CONT, CONTEXT, examples, model, plant, tokenizer, unused_symbol
from monollm.attacks import run_attack
from monollm.attacks import hotflip
from monollm.attacks.common import allowed_tokens, continuation_nll, retokenized

SMALL = hotflip.HotFlipConfig(max_flips=3, candidates=6, controls=2)


@pytest.fixture(scope="module")
def rows():
    models = {"baseline": model(0), "monotonic": model(1)}
    return models, run_attack("hotflip", models, tokenizer(), {"test": examples(8, 0)}, CONT, 16, SMALL, seed=0,
                               log=lambda _: None)


def search(m, params=SMALL):
    tok, test = tokenizer(), torch.as_tensor(examples(8, 0))
    return test, hotflip.search(m, tok, test, allowed_tokens(tok, 320), CONTEXT, CONT, params, batch_size=16)


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
