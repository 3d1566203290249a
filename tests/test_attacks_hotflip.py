"""`hotflip` on tiny random models: flips stay in the context, within budget, allowed; the search
only climbs; controls are matched; a planted weakness is found."""
import numpy as np
import pytest
import torch

from attack_models import CONT, CONTEXT, examples, model, plant, tokenizer, unused_symbol
from monollm.attacks import hotflip
from monollm.attacks.common import allowed_tokens, continuation_nll, retokenized

SMALL = hotflip.HotFlipConfig(max_flips=3, candidates=6, controls=2)


@pytest.fixture(scope="module")
def rows():
    models = {"baseline": model(0), "monotonic": model(1)}
    return models, hotflip.run(models, tokenizer(), {"test": examples(8, 0)}, CONT, 16, SMALL, seed=0,
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
    attack = {(r.kind, r.model, r.source_model): r for r in results if r.kind != "control"}
    assert set(attack) == {("attack", "baseline", "baseline"), ("transfer", "monotonic", "baseline"),
                           ("attack", "monotonic", "monotonic"), ("transfer", "baseline", "monotonic")}
    for source in models:
        own = attack[("attack", source, source)]
        controls = [r for r in results if r.kind == "control" and r.model == source]
        assert len(controls) == SMALL.controls
        for c in controls:
            assert np.array_equal(c.n_changed, own.n_changed)  # same flip count per example
            assert c.forward_passes == 0 and c.source_model == source
        assert own.candidate_evals > 0
        assert np.all(own.attacked_nll >= own.clean_nll - 1e-6)  # an ascent: never below clean
    for p in (p for m in models.values() for p in m.parameters()):
        assert p.requires_grad and p.grad is None


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
