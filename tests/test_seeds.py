"""Seeds needed for a 95% interval off zero (results/seeds.py), against t quantiles from a printed
table and from scipy, and a hand-worked example."""
import math

import numpy as np
import pytest
from scipy import stats as st

from monollm.results import seeds

# two-sided 95% t quantiles t_{0.975, df}, from a printed t table
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def test_a_hand_worked_example():
    """Values 0.1, 0.2, 0.3: mean 0.2, s = 0.1. Needed: t_{n-1} * 0.1 / sqrt(n) < 0.2, i.e. t_{n-1} / sqrt(n) < 2.
    n = 2: 12.706 / 1.414 = 8.98; n = 3: 4.303 / 1.732 = 2.48; n = 4: 3.182 / 2 = 1.59 < 2. So 4."""
    got = seeds.seeds_needed([0.1, 0.2, 0.3])
    assert got == seeds.SeedsNeeded(4)
    assert got.text() == "about 4 seeds" and got.short() == "about 4"
    assert seeds.seeds_needed([-0.1, -0.2, -0.3]).n == 4  # the sign of the mean does not matter


def test_against_the_printed_t_table():
    """Mean 1, s = 1 (values 0, 1, 2): the first n with T_TABLE[n - 1] / sqrt(n) < 1 is 7 (2.447 / 2.646 = 0.92;
    n = 6: 2.571 / 2.449 = 1.05)."""
    first = next(n for n in range(2, 11) if T_TABLE[n - 1] / math.sqrt(n) < 1)
    assert first == 7 and seeds.seeds_needed([0.0, 1.0, 2.0]).n == first


@pytest.mark.parametrize("values", [[0.05, -0.03, 0.01, 0.09], [0.3, 0.1, 0.25], [1.0, -0.5, 0.8, 0.2, 0.1]])
def test_against_scipy_quantiles_and_the_t_interval_it_predicts(values):
    x = np.asarray(values)
    mean, s = x.mean(), x.std(ddof=1)
    n = seeds.seeds_needed(values).n
    half = lambda k: st.t.ppf(0.975, k - 1) * s / math.sqrt(k)  # noqa: E731
    assert half(n) < abs(mean) and (n == 2 or half(n - 1) >= abs(mean))  # the smallest such n
    # consistent with the interval the seeds at hand give: off zero exactly when n <= their count
    lo, hi = st.t.interval(0.95, len(x) - 1, loc=mean, scale=st.sem(x))
    assert (lo > 0 or hi < 0) == (n <= len(x))


def test_no_estimate_without_two_seeds_a_spread_or_a_mean():
    assert seeds.seeds_needed([0.1]) == seeds.SeedsNeeded(None, reason=seeds.TOO_FEW)
    assert seeds.seeds_needed([]).reason == seeds.TOO_FEW
    assert seeds.seeds_needed([0.1, float("nan")]).reason == seeds.TOO_FEW  # NaNs left out
    assert seeds.seeds_needed([0.2, 0.2, 0.2]).reason == seeds.NO_SPREAD
    assert seeds.seeds_needed([0.2, 0.2, 0.2]).short() == "no spread"
    assert seeds.seeds_needed([-0.1, 0.1]).reason == seeds.NO_MEAN


def test_capped_when_the_mean_is_tiny_against_the_spread():
    # mean 1e-4, s about 1: it needs about (1.96 / 1e-4)^2 = 4e8 seeds
    got = seeds.seeds_needed([1.0003, -1.0, 0.0])
    assert got == seeds.SeedsNeeded(seeds.CAP, capped=True)
    assert got.text() == "more than 1000 seeds" and got.short() == "> 1000"
    assert seeds.seeds_needed([1.0003, -1.0, 0.0], cap=5).text() == "more than 5 seeds"


def test_across_seeds_gives_the_t_interval_by_hand():
    got = seeds.across_seeds([0.1, 0.2, 0.3, float("nan")])
    half = T_TABLE[2] * 0.1 / math.sqrt(3)  # 0.2484
    assert (got["mean"], got["ci_low"], got["ci_high"], got["n"]) == pytest.approx((0.2, 0.2 - half, 0.2 + half, 3),
                                                                                    abs=1e-3)
    assert got["needed"].n == 4


def test_the_line_compare_prints():
    assert seeds.line("universal triggers", [0.1, 0.2, 0.3]) == (
        "universal triggers: about 4 seeds would put the 95% interval off zero at the observed mean difference "
        "(+0.200, s.d. 0.100 over 3 seeds; t-based estimate)")
    assert seeds.line("per-input edits", [0.1]) == (
        "per-input edits: seeds needed for a 95% interval off zero: too few seeds to estimate (it needs two)")
