"""How many seeds a difference needs: from the per-seed values a run set has (e.g. the worst case,
baseline minus monotonic, one number per seed), the smallest number of seeds whose two-sided 95%
t-interval would leave zero out if the mean and the spread stayed as observed.

The estimate is the standard t-based one: the smallest n >= 2 with t_{0.975, n-1} * s / sqrt(n) < |mean|,
s the sample standard deviation of the values. It holds the observed mean and spread fixed, so with
few seeds it is rough (both move as seeds are added); it says nothing where the spread is 0 (one
computation repeated, or a number the seed does not move) or the mean is 0.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from monollm import stats
from monollm.results import wording

CAP = 1000
"""Beyond this many seeds the estimate reads "more than CAP"."""
TOO_FEW = "too few seeds to estimate (it needs two)"
NO_SPREAD = "spread too small to estimate: every seed gives the same value"
NO_MEAN = "no mean difference to put off zero (the mean is 0)"
SHORT = {TOO_FEW: "too few seeds", NO_SPREAD: "no spread", NO_MEAN: "mean is 0"}
"""Each reason in a few words, for a table's cell."""


@dataclasses.dataclass(frozen=True)
class SeedsNeeded:
    """n: the estimate (None where there is none); capped: more than `n` would be needed (n == CAP);
    reason: why there is no estimate ("" where there is one)."""
    n: int | None
    capped: bool = False
    reason: str = ""

    def text(self) -> str:
        """'about 7 seeds', 'more than 1000 seeds', or the reason there is no estimate."""
        if self.n is None:
            return self.reason
        return f"more than {wording.count(self.n)}" if self.capped else f"about {wording.count(self.n)}"

    def short(self) -> str:
        """For a table's cell: 'about 7', '> 1000', or the reason in a few words (SHORT)."""
        if self.n is None:
            return SHORT[self.reason]
        return f"> {self.n}" if self.capped else f"about {self.n}"


def _finite(values) -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    return x[np.isfinite(x)]


def seeds_needed(values, level: float = 0.95, cap: int = CAP) -> SeedsNeeded:
    """The smallest n (2 <= n <= cap) with t_{(1+level)/2, n-1} * s / sqrt(n) < |mean| for values (k,)
    (NaNs left out); SeedsNeeded(cap, capped=True) when even `cap` seeds are not enough; no estimate
    for fewer than two values, a spread of 0 (up to rounding) or a zero mean (the reason says which)."""
    from scipy import stats as _st

    x = _finite(values)
    if len(x) < 2:
        return SeedsNeeded(None, reason=TOO_FEW)
    mean, s = float(x.mean()), float(x.std(ddof=1))
    if s <= 1e-9 * abs(mean) + 1e-12:  # equal values up to rounding (their s is ~1e-17, not 0)
        return SeedsNeeded(None, reason=NO_SPREAD)
    if mean == 0:
        return SeedsNeeded(None, reason=NO_MEAN)
    n = np.arange(2, cap + 1)
    ok = _st.t.ppf(0.5 + level / 2, n - 1) * s / np.sqrt(n) < abs(mean)  # the half-width shrinks as n grows
    return SeedsNeeded(int(n[ok][0])) if ok.any() else SeedsNeeded(cap, capped=True)


def across_seeds(values, level: float = 0.95) -> dict:
    """{"mean", "ci_low", "ci_high", "n", "needed"}: the mean of the per-seed values (NaNs left out),
    its t-interval (stats.t_interval: NaN ends for one value) and `seeds_needed`."""
    x = _finite(values)
    mean, lo, hi = stats.t_interval(x, level)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": len(x), "needed": seeds_needed(x, level)}


def line(name: str, values) -> str:
    """'universal triggers: about 7 seeds would put the 95% interval off zero at the observed mean
    difference (+0.085, s.d. 0.060 over 3 seeds; t-based estimate)', or why there is no estimate."""
    x, needed = _finite(values), seeds_needed(values)
    if needed.n is None:
        return f"{name}: seeds needed for a 95% interval off zero: {needed.reason}"
    observed = f"{wording.signed(float(x.mean()))}, s.d. {x.std(ddof=1):.3f} over {wording.count(len(x))}"
    return (f"{name}: {needed.text()} would put the 95% interval off zero at the observed mean difference "
            f"({observed}; t-based estimate)")

