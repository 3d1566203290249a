"""Order preservation: does a model keep the order of texts that strengthen along one axis?

The claim behind the constraint is that a monotone map preserves order: if x <= x' then
f(x) <= f(x'). Texts have no coordinates, so the measurement asks it of meaning instead
(docs/method.md#order-preservation):

* Chains of texts strengthen along one semantic axis (monollm/evaluation/order_chains.py); every pair of
  neighbours in a chain is a pair (weaker, stronger).
* The pairs are split by topic, seeded: probes are fit on the pairs of `fit_fraction` of the
  topics and every number is measured on the pairs of the other topics, which no probe saw.
* Per layer and pooling, one probe direction per axis: a logistic regression without intercept
  that tells stronger-minus-weaker pooled states (label 1) from weaker-minus-stronger (label 0).
  Fitting on the difference cancels what the two texts share (topic, frame), and with no
  intercept on a symmetric set the probe's decision is exactly the check below.
* A check (pair, direction) holds when the stronger text scores at least as high as the weaker
  one along the direction: w . h(stronger) >= w . h(weaker). `preserved` is the fraction of
  held-out checks over every axis' direction (the mean over pairs of each pair's fraction), and
  `own_preserved` uses only the pair's own axis' direction; bootstrap 95% CIs resample pairs.

What it holds fixed across models: the chains, the pairs and their split (same seed), the
probe recipe (each model gets its own probes, fit on the same pairs) and the layers (index into
`hidden_states`: 0 the embeddings, i the output of block i).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from monollm import stats
from monollm.model import foundation

POOLINGS = ("last", "mean")
"""`last`: the state at each text's last token (primary: a causal model's summary of the whole
text); `mean`: the mean over its tokens (a check that the result is not an artefact of one
position)."""
MODELS = ("reference", "baseline", "monotonic_init", "monotonic")


@dataclass(frozen=True)
class Pairs:
    """Neighbouring texts of every chain as (weaker, stronger) pairs, split by topic.

    texts (N,) distinct texts; weak, strong (P,) indices into texts; axis (P,) indices into
    axes (A,); fit (P,) True for pairs of the fit topics."""
    texts: tuple[str, ...]
    weak: np.ndarray
    strong: np.ndarray
    axis: np.ndarray
    fit: np.ndarray
    axes: tuple[str, ...]
    fit_topics: tuple[str, ...]


def make_pairs(chains: list[dict], fit_fraction: float = 0.5, seed: int = 0) -> Pairs:
    """Pairs of neighbours (P of them) of every chain; a seeded `fit_fraction` of the topics
    (at least one, never all) are the fit split, the rest held out."""
    if not 0 < fit_fraction < 1:
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction!r}")
    topics = sorted({c["topic"] for c in chains})
    n_fit = min(max(round(fit_fraction * len(topics)), 1), len(topics) - 1)
    if n_fit < 1:
        raise ValueError(f"order preservation needs chains of at least two topics, got {topics}")
    shuffled = np.random.default_rng(seed).permutation(len(topics))
    fit_topics = tuple(sorted(topics[i] for i in shuffled[:n_fit]))
    axes = tuple(sorted({c["axis"] for c in chains}))
    index: dict[str, int] = {}
    rows = []
    for c in chains:
        ids = [index.setdefault(t, len(index)) for t in c["texts"]]
        rows += [(a, b, axes.index(c["axis"]), c["topic"] in fit_topics) for a, b in zip(ids, ids[1:])]
    weak, strong, axis, fit = (np.array(col) for col in zip(*rows))
    for a, name in enumerate(axes):
        if not fit[axis == a].any() or fit[axis == a].all():
            raise ValueError(f"axis {name!r} has no {'fit' if not fit[axis == a].any() else 'held-out'} "
                             f"pairs with fit topics {fit_topics}: give it chains on more topics")
    return Pairs(tuple(index), weak, strong, axis, fit.astype(bool), axes, fit_topics)


def _pad(batch: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask, both (B, T). Right padding leaves a causal model's
    states at real tokens as they are alone, so no pad token is needed (Pythia has none)."""
    width = max(len(ids) for ids in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids.to(device), mask.to(device)


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden (L+1, B, T, H), mask (B, T) -> (L+1, B, H) per `pooling` (see POOLINGS)."""
    if pooling == "last":
        last = mask.sum(1) - 1
        return hidden[:, torch.arange(hidden.shape[1], device=hidden.device), last]
    m = mask[None, :, :, None].to(hidden.dtype)
    return (hidden * m).sum(2) / m.sum(2)


@torch.no_grad()
def pooled_states(model, tokenizer, texts, poolings=POOLINGS, batch_size: int = 32) -> dict:
    """pooling -> float32 CPU tensor (L+1, N, H): every layer's pooled state of each text.

    `model` (in eval mode) is called as model(input_ids=, attention_mask=,
    output_hidden_states=True) and its output's `hidden_states` read (L+1 tensors (B, T, H));
    `tokenizer(texts)["input_ids"]` gives each text's ids."""
    if model.training:
        raise ValueError("order preservation needs the model in eval mode (model.eval())")
    ids = tokenizer(list(texts))["input_ids"]
    limit = foundation.max_positions(model)
    too_long = [t for t, i in zip(texts, ids) if not 0 < len(i) <= limit]
    if too_long:
        raise ValueError(f"{len(too_long)} texts do not fit the model's {limit} positions (or are empty), "
                         f"e.g. {too_long[0]!r}")
    device = next(model.parameters()).device
    out: dict = {p: [] for p in poolings}
    for start in range(0, len(ids), batch_size):
        input_ids, mask = _pad(ids[start:start + batch_size], device)
        hidden = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
        hidden = torch.stack(hidden).float()
        for p in poolings:
            out[p].append(_pool(hidden, mask, p).cpu())
    return {p: torch.cat(v, dim=1) for p, v in out.items()}


def fit_directions(diffs: np.ndarray, axis: np.ndarray, n_axes: int, C: float = 1.0) -> np.ndarray:
    """(A, H): one probe direction per axis, from the fit pairs' diffs (P, H) = h(stronger) -
    h(weaker) and their axis (P,) in [0, A).

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
    """Checks of held-out pairs against probe directions, summarised.

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


def order_preservation(model, tokenizer, chains: list[dict], *, pooling=POOLINGS, seed: int = 0,
                       bootstrap: int = 2000, fit_fraction: float = 0.5, C: float = 1.0,
                       batch_size: int = 32, name: str = "model") -> pd.DataFrame:
    """One row per layer x pooling: model (`name`), layer, pooling, preserved, ci_low, ci_high,
    own_preserved, own_ci_low, own_ci_high, tied, n_pairs (held-out), n_fit_pairs, n_directions.

    `pooling` is one of POOLINGS or several; the pairs, their split and the bootstrap resamples
    depend on `chains`, `fit_fraction` and `seed` only, so two models given the same arguments
    are measured on the same pairs."""
    poolings = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    unknown = [p for p in poolings if p not in POOLINGS]
    if unknown or not poolings:
        raise ValueError(f"pooling must be among {POOLINGS}, got {pooling!r}")
    pairs = make_pairs(chains, fit_fraction, seed)
    states = pooled_states(model, tokenizer, pairs.texts, poolings, batch_size)
    held = ~pairs.fit
    rows = []
    for p in poolings:
        h = states[p].double().numpy()
        for layer in range(h.shape[0]):
            diffs = h[layer, pairs.strong] - h[layer, pairs.weak]
            directions = fit_directions(diffs[pairs.fit], pairs.axis[pairs.fit], len(pairs.axes), C)
            summary = layer_preservation(diffs[held], directions, pairs.axis[held], bootstrap, seed)
            rows.append({"model": name, "layer": layer, "pooling": p, **summary, "n_pairs": int(held.sum()),
                         "n_fit_pairs": int(pairs.fit.sum()), "n_directions": len(pairs.axes)})
    return pd.DataFrame(rows)


def order_table(model_dirs: dict, chains, *, device: str = "cpu", attn_implementation: str = "sdpa",
                **kwargs) -> pd.DataFrame:
    """order_preservation of the four models, one table (one row per model x layer x pooling).

    model_dirs: each of MODELS -> a directory written by models.save (verified on load);
    chains: a list of chains or the name / path that order_chains.load_chains reads;
    kwargs: order_preservation's keywords (pooling, seed, bootstrap, fit_fraction, C, batch_size),
    the same for every model."""
    from monollm.evaluation import order_chains

    missing = [m for m in MODELS if m not in model_dirs]
    if missing:
        raise ValueError(f"order_table needs a directory for each of {MODELS}; missing {missing}")
    if isinstance(chains, str):
        chains = order_chains.load_chains(chains)
    tables = []
    for name in MODELS:
        model, tokenizer = foundation.load(model_dirs[name], device, attn_implementation, what=f"the {name} model")
        tables.append(order_preservation(model, tokenizer, chains, name=name, **kwargs))
        del model
    return pd.concat(tables, ignore_index=True)


def findings(table: pd.DataFrame) -> dict:
    """What the card and the console say of an order_preservation table: for the primary pooling
    (the first measured: "last" by default) and the deepest layer, each model's share of checks
    that keep the order with its 95% bootstrap CI, and monotonic minus baseline (a difference of
    the two estimates; their CIs are each model's own)."""
    pooling = table["pooling"].iloc[0]
    rows = table[table["pooling"] == pooling]
    deepest = rows[rows["layer"] == rows["layer"].max()].set_index("model")
    out = {"pooling": pooling, "layer": int(rows["layer"].max()), "n_pairs": int(deepest["n_pairs"].iloc[0]),
           "models": {m: {k: float(deepest.loc[m, k]) for k in ("preserved", "ci_low", "ci_high")}
                      for m in deepest.index}}
    if {"baseline", "monotonic"} <= set(deepest.index):
        out["monotonic_minus_baseline"] = float(deepest.loc["monotonic", "preserved"] - deepest.loc["baseline", "preserved"])
    return out
