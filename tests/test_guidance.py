"""Gradient-guidance measurement: Spearman by hand and against scipy; the sampled swaps, their
first-order estimates and exact changes recomputed independently; on a planted model the
estimate ranks the planted token's swaps first, so the agreement is high, and it collapses when
the pairing of estimate and exact change is broken."""
import numpy as np
import pytest
import torch
from scipy import stats

from attack_models import CONT, CONTEXT, examples, model, plant, tokenizer, unused_symbol
from monollm.attacks.common import allowed_tokens, continuation_nll, prepend
from monollm.attacks.gradients import onehot_grad
from monollm.attacks.guidance import flip_agreement, spearman, trigger_agreement


@pytest.mark.parametrize("a, b, expected", [
    ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
    ([1, 2, 3], [1, 3, 2], 0.5),  # ranks (1,2,3) vs (1,3,2): 1 - 6 * 2 / (3 * 8)
    # ties: b's ranks are (1.5, 1.5, 3, 4); Pearson of (1,2,3,4) with them = 4.5 / sqrt(5 * 4.5)
    ([1, 2, 3, 4], [5, 5, 6, 7], 4.5 / np.sqrt(5 * 4.5)),
])
def test_spearman_by_hand(a, b, expected):
    assert spearman(a, b) == pytest.approx(expected)


@pytest.mark.parametrize("a, b", [([1, 2], [3, 4]), ([1, 1, 1], [1, 2, 3]), ([1, 2, 3], [0, 0, 0]),
                                  ([1, np.nan, 3], [1, 2, 3]), ([], [])])
def test_spearman_nan_where_undefined(a, b):
    assert np.isnan(spearman(a, b))


def test_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    for n in (3, 7, 50, 400):
        a, b = rng.normal(size=n), rng.normal(size=n)
        b[: n // 3] = a[: n // 3] * 2  # some dependence
        ties = rng.integers(0, 5, size=n)  # heavy ties on one side
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
        assert spearman(ties, b) == pytest.approx(stats.spearmanr(ties, b).statistic, abs=1e-12)
    with pytest.raises(ValueError, match="equal lengths"):
        spearman([1, 2, 3], [1, 2])


def planted(seed=0):
    """A planted model and an allowed set of the planted token and three others, so that a
    uniform sample of swaps contains many swaps to the planted token (huge exact change)."""
    token = unused_symbol()
    m = plant(model(seed), token, sink=unused_symbol(skip=(token,)))
    full = allowed_tokens(tokenizer(), 320)
    allowed = torch.zeros_like(full)
    allowed[token] = True
    allowed[full.nonzero().flatten()[[40, 80, 120]]] = True
    return m, token, allowed


def test_flip_agreement_swaps_estimates_and_exact_changes_recomputed():
    m, token, allowed = planted()
    test = torch.as_tensor(examples(8, 0))
    agreement = flip_agreement(m, test, CONTEXT, CONT, allowed, 80, np.random.default_rng(0), batch_size=5)
    swaps = agreement.swaps  # 80 in all: 10 on each of the 8 examples
    assert agreement.n == len(swaps) == 8 * 10 and agreement.forward_passes == 2 * 8 + 80
    assert np.array_equal(np.bincount(swaps[:, 0]), np.full(8, 10))
    assert (swaps[:, 1] < CONTEXT).all() and allowed[swaps[:, 2]].all()
    assert (test[swaps[:, 0], swaps[:, 1]].numpy() != swaps[:, 2]).all()  # never the token already there
    assert len({tuple(s) for s in swaps}) == len(swaps)  # without replacement
    # independent recomputation of every swap: its own gradient and its own exact score
    clean, grad = onehot_grad(m, test, 0, CONTEXT, CONT, 64)
    e, p, v = (torch.as_tensor(c) for c in swaps.T)
    estimate = grad[e, p, v] - grad[e, p, test[e, p]]
    flipped = test[e].clone()
    flipped[torch.arange(len(e)), p] = v
    exact = continuation_nll(m, flipped, CONT, 64) - continuation_nll(m, test, CONT, 64)[e]
    np.testing.assert_allclose(agreement.estimate, estimate.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(agreement.exact, exact.numpy(), rtol=1e-4, atol=1e-4)
    per_example = [stats.spearmanr(estimate[e == i], exact[e == i]).statistic for i in range(8)]
    assert agreement.spearman == pytest.approx(np.nanmean(per_example), abs=1e-9)
    assert (agreement.exact[agreement.swaps[:, 2] == token] > 5).all()  # the planted swaps do damage
    for p in m.parameters():
        assert p.requires_grad and p.grad is None


def test_flip_agreement_high_on_a_planted_model_and_lost_when_pairs_are_shuffled():
    m, token, allowed = planted()
    test = torch.as_tensor(examples(8, 0))
    agreement = flip_agreement(m, test, CONTEXT, CONT, allowed, 24 * 8, np.random.default_rng(1), batch_size=16)
    assert agreement.spearman > 0.5  # the gradient ranks the planted token's swaps first
    rng, e = np.random.default_rng(2), agreement.swaps[:, 0]
    shuffled = [spearman(agreement.estimate[e == i], rng.permutation(agreement.exact[e == i])) for i in range(8)]
    assert np.nanmean(shuffled) < agreement.spearman - 0.4


def test_flip_agreement_all_nan_and_unmeasured():
    m, _, _ = planted()
    test = torch.as_tensor(examples(8, 0))
    allowed = allowed_tokens(tokenizer(), 320)
    two = flip_agreement(m, test, CONTEXT, CONT, allowed, 2, np.random.default_rng(0), 16)
    assert np.isnan(two.spearman) and two.n == 0 and two.forward_passes == 0  # two swaps give no Spearman: none taken
    none = flip_agreement(m, test, CONTEXT, CONT, allowed, 0, np.random.default_rng(0), 16)
    assert np.isnan(none.spearman) and none.n == 0


def test_flip_agreement_spreads_a_total_over_the_examples():
    """`sample` is the swaps in all: spread evenly, and over fewer examples (a prefix) when there are
    too few for 3 on each, the least a Spearman needs; unmeasured examples cost no pass."""
    from monollm.attacks.guidance import spread

    assert spread(20, 8).tolist() == [4, 4, 3, 3, 3, 3, 0, 0]
    assert spread(80, 8).tolist() == [10] * 8 and spread(2, 8).tolist() == [0] * 8 and spread(9, 2).tolist() == [5, 4]
    m, _, allowed = planted()
    test = torch.as_tensor(examples(8, 0))
    few = flip_agreement(m, test, CONTEXT, CONT, allowed, 10, np.random.default_rng(0), 16)
    assert np.bincount(few.swaps[:, 0]).tolist() == [4, 3, 3] and few.forward_passes == 2 * 3 + 10


def test_trigger_agreement_recomputed_and_high_on_a_planted_model():
    m, token, allowed = planted()
    opt = torch.as_tensor(examples(8, 1))
    trigger = torch.as_tensor([int(t) for t in allowed.nonzero().flatten() if t != token])  # 3 other tokens
    agreement = trigger_agreement(m, trigger, opt, CONT, allowed, 9, np.random.default_rng(0), batch_size=5)
    assert agreement.n == 9 == len(agreement.swaps) and agreement.forward_passes == (2 + 9) * 8
    assert (agreement.swaps[:, 0] == -1).all() and (agreement.swaps[:, 1] < 3).all()
    assert (trigger[agreement.swaps[:, 1]].numpy() != agreement.swaps[:, 2]).all()
    _, grad = onehot_grad(m, prepend(trigger, opt), 0, 3, CONT, 64, shared=True)
    clean = continuation_nll(m, prepend(trigger, opt), CONT, 64).mean()
    for (_, p, v), est, exact in zip(agreement.swaps, agreement.estimate, agreement.exact):
        swapped = trigger.clone()
        swapped[p] = v
        # the same gradients summed in batches of 5 and of 64: fp32 sums in another order
        assert est == pytest.approx(float(grad[p, v] - grad[p, trigger[p]]) / 8, rel=1e-4, abs=1e-4)
        assert exact == pytest.approx(float(continuation_nll(m, prepend(swapped, opt), CONT, 64).mean() - clean),
                                      rel=1e-4, abs=1e-4)
    assert agreement.spearman == pytest.approx(stats.spearmanr(agreement.estimate, agreement.exact).statistic)
    assert agreement.spearman > 0.5  # the planted token's swaps are the 3 largest of both
    assert spearman(agreement.estimate, agreement.exact[::-1]) < agreement.spearman - 0.4
    for p in m.parameters():
        assert p.requires_grad and p.grad is None
