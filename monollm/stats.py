"""Confidence intervals: bootstrap via scipy, Wilson via statsmodels.

scipy.stats and statsmodels are imported where they are used: together they take ~2 s to
import, which every model step would otherwise pay before its first log line.
"""
from __future__ import annotations

import numpy as np


def bootstrap_ci(x, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of x (N,). For paired data pass the differences."""
    from scipy import stats as _st

    x = np.asarray(x, dtype=float)
    if len(x) < 2 or np.all(x == x[0]):
        return float(x.mean()) if len(x) else float("nan"), float(x.mean()) if len(x) else float("nan")
    res = _st.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=level,
                        method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def ratio_bootstrap_ci(num, den, n_resamples: int = 2000, seed: int = 0, level: float = 0.95,
                       transform=np.exp) -> tuple[float, float]:
    """CI of transform(sum(num) / sum(den)) resampling units (blocks) with replacement.

    For perplexity: num = NLL sums per block, den = tokens per block, transform = exp.
    """
    from scipy import stats as _st

    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    res = _st.bootstrap((num, den), lambda a, b: transform(a.sum() / b.sum()), paired=True,
                        vectorized=False, n_resamples=n_resamples, confidence_level=level,
                        method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def t_interval(x, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean of x (n,), e.g. one number per seed.
    low/high are NaN for fewer than two values and equal the mean when all values agree."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    from scipy import stats as _st

    sem = float(_st.sem(x))
    if sem == 0:
        return mean, mean, mean
    lo, hi = _st.t.interval(level, len(x) - 1, loc=mean, scale=sem)
    return mean, float(lo), float(hi)


def slope_interval(x, y, level: float = 0.95) -> tuple[float, float, float]:
    """(slope, low, high): least-squares slope of y on x (both (n,)) with its Student-t interval
    (n - 2 degrees of freedom). NaN interval for fewer than three points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan"), float("nan"), float("nan")
    from scipy import stats as _st

    fit = _st.linregress(x, y)
    if len(x) < 3:
        return float(fit.slope), float("nan"), float("nan")
    half = float(_st.t.ppf(0.5 + level / 2, len(x) - 2)) * float(fit.stderr)
    return float(fit.slope), float(fit.slope - half), float(fit.slope + half)


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n."""
    if n == 0:
        return float("nan"), float("nan")
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=1 - level, method="wilson")
    return float(lo), float(hi)
