"""Probe directions and checks of order preservation (monollm/evaluation/order.py), per method
(docs/method.md#order-preservation has the exact definitions):

* `published`: K directions pooled over every axis. Each is a logistic regression with
  intercept, fit by full-batch gradient descent on a bootstrap sample of the fit pairs: the
  stronger texts' pooled states are label 1, the weaker texts' label 0, features standardized
  with the sample's mean and std. A held-out pair scores the share of the K directions along
  which a . h(stronger) >= a . h(weaker) - TOLERANCE.
* `per_axis`: one direction per axis, a logistic regression without intercept on the fit pairs'
  differences h(stronger) - h(weaker) (label 1) and their negatives (label 0); a held-out pair
  scores the share of every axis' direction w along which w . (h(stronger) - h(weaker)) >= 0.
"""
from __future__ import annotations

import numpy as np
import torch

from monollm import stats

TOLERANCE = 1e-6
"""published: a check holds when a . h(stronger) >= a . h(weaker) - TOLERANCE."""
STD_EPS = 1e-6
"""published: added to each feature's std before standardizing."""
L2 = 1e-2
"""published: the loss is the weighted mean log-loss + L2 * ||w||^2 (w in standardized units; no
penalty on the intercept)."""
STEPS, LR = 300, 0.5
"""published: full-batch gradient descent from zero, STEPS steps of size LR."""
MIN_SAMPLE, SAMPLE_FRACTION = 20, 0.7
"""published: each direction's bootstrap sample draws max(MIN_SAMPLE, int(SAMPLE_FRACTION * P))
of the P fit pairs, with replacement."""


def bootstrap_counts(n_fit: int, k: int, seed: int) -> np.ndarray:
    """(k, n_fit) int: how often each fit pair is drawn into each direction's bootstrap sample
    (max(MIN_SAMPLE, int(SAMPLE_FRACTION * n_fit)) draws with replacement, seeded)."""
    size = max(MIN_SAMPLE, int(SAMPLE_FRACTION * n_fit))
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n_fit, size), minlength=n_fit) for _ in range(k)])


def published_directions(strong: np.ndarray, weak: np.ndarray, counts: np.ndarray, device="cpu") -> np.ndarray:
    """(K, H) unit probe directions, one per bootstrap sample: strong, weak (P, H) the fit pairs'
    pooled states; counts (K, P) each sample's draws (bootstrap_counts).

    Sample k holds, per draw of pair j, the row h(stronger_j) labelled 1 and h(weaker_j)
    labelled 0 (N_k = 2 * draws rows); its features are standardized with the sample's mean mu_k
    and std s_k (population std, + STD_EPS); a logistic regression with intercept is fit by
    gradient descent on the sample's mean log-loss + L2 * ||w||^2, and the direction is w / s_k,
    scaled to unit length (zero where w is zero). The K fits run together: each sample is the
    fit rows weighted by their draws, which gives the same sums as the rows repeated."""
    x = torch.as_tensor(np.concatenate([strong, weak]), dtype=torch.float64, device=device)
    x = x - x.mean(0)  # standardizing does not see a shift; centred sums lose less precision
    y = torch.cat([torch.ones(len(strong)), torch.zeros(len(weak))]).to(x)
    c = torch.as_tensor(np.concatenate([counts, counts], axis=1).T, dtype=torch.float64, device=device)  # (2P, K)
    n = c.sum(0)
    mu = (c.T @ x) / n[:, None]  # (K, H)
    sd = ((c.T @ x ** 2) / n[:, None] - mu ** 2).clamp_min(0).sqrt() + STD_EPS
    w = torch.zeros_like(mu)
    b = torch.zeros(len(n), dtype=torch.float64, device=device)
    for _ in range(STEPS):
        a = w / sd  # the probe in raw units: logit = a . (h - mu) + b
        r = c * (torch.sigmoid(x @ a.T - (mu * a).sum(1) + b) - y[:, None]) / n  # (2P, K)
        grad_w = ((x.T @ r).T - mu * r.sum(0)[:, None]) / sd + 2 * L2 * w
        w, b = w - LR * grad_w, b - LR * r.sum(0)
    a = w / sd
    norm = a.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, a / norm.clamp_min(1e-300), 0.0).cpu().numpy()


def published_preservation(strong: np.ndarray, weak: np.ndarray, directions: np.ndarray,
                           bootstrap: int = 2000, seed: int = 0) -> dict:
    """Checks of held-out pairs against the published method's directions, summarised.

    strong, weak (Q, H) the held-out pairs' pooled states; directions (K, H). A check (pair,
    direction a) holds when a . h(stronger) >= a . h(weaker) - TOLERANCE. Returns preserved (the
    mean over pairs of each pair's share of the K directions) with its bootstrap ci_low, ci_high
    (pairs resampled); tied (share of checks whose two scores differ by at most TOLERANCE); the
    per-axis-only own_preserved, own_ci_low, own_ci_high as NaN."""
    s_strong, s_weak = strong @ directions.T, weak @ directions.T
    per_pair = (s_strong >= s_weak - TOLERANCE).mean(1)
    lo, hi = stats.bootstrap_ci(per_pair, bootstrap, seed)
    nan = float("nan")
    return {"preserved": float(per_pair.mean()), "ci_low": lo, "ci_high": hi,
            "own_preserved": nan, "own_ci_low": nan, "own_ci_high": nan,
            "tied": float((np.abs(s_strong - s_weak) <= TOLERANCE).mean())}


def fit_directions(diffs: np.ndarray, axis: np.ndarray, n_axes: int, C: float = 1.0) -> np.ndarray:
    """per_axis: (A, H) one probe direction per axis, from the fit pairs' diffs (P, H) =
    h(stronger) - h(weaker) and their axis (P,) in [0, A).

    Each axis: logistic regression without intercept on {d: 1, -d: 0}, L2 strength 1/C, on
    features scaled by their RMS over the fit pairs (hidden states have a few huge dimensions,
    which would otherwise dominate the penalty); the direction is mapped back to unscaled states.
    A layer whose diffs are all zero (e.g. last-token embeddings of texts that end alike) gets
    a zero direction, so all its checks tie."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    directions = np.zeros((n_axes, diffs.shape[1]))
    # One BLAS thread: each fit is small (2P x H), and more threads only contend (about 3x
    # slower on a shared 2-core machine).
    with threadpool_limits(1):
        for a in range(n_axes):
            d = diffs[axis == a]
            scale = np.sqrt((d ** 2).mean(0))
            scale = np.where(scale > 0, scale, 1.0)
            x = np.concatenate([d, -d]) / scale
            y = np.r_[np.ones(len(d)), np.zeros(len(d))]
            probe = LogisticRegression(C=C, fit_intercept=False, max_iter=1000).fit(x, y)
            directions[a] = probe.coef_[0] / scale
    return directions


def layer_preservation(diffs: np.ndarray, directions: np.ndarray, axis: np.ndarray,
                       bootstrap: int = 2000, seed: int = 0) -> dict:
    """per_axis: checks of held-out pairs against probe directions, summarised.

    diffs (Q, H) = h(stronger) - h(weaker) of the held-out pairs; directions (A, H); axis (Q,)
    each pair's own axis. A check holds when w . diff >= 0 (the stronger text scores at least as
    high). Returns preserved (fraction of the Q x A checks, as the mean over pairs of each pair's
    fraction) with ci_low, ci_high; own_preserved (each pair against its own axis' direction)
    with own_ci_low, own_ci_high; tied (fraction of checks with equal scores, which count as
    preserved)."""
    scores = diffs @ directions.T
    held = scores >= 0
    per_pair = held.mean(1)
    own = held[np.arange(len(axis)), axis].astype(float)
    lo, hi = stats.bootstrap_ci(per_pair, bootstrap, seed)
    own_lo, own_hi = stats.bootstrap_ci(own, bootstrap, seed)
    return {"preserved": float(per_pair.mean()), "ci_low": lo, "ci_high": hi,
            "own_preserved": float(own.mean()), "own_ci_low": own_lo, "own_ci_high": own_hi,
            "tied": float((scores == 0).mean())}
