"""Order preservation: does a model keep the order of texts that strengthen along one axis?

The claim behind the constraint is that a monotone map preserves order: if x <= x' then
f(x) <= f(x'). Texts have no coordinates, so the measurement asks it of meaning instead
(docs/method.md#order-preservation has the exact definitions):

* Chains of texts strengthen along one semantic axis (monollm/evaluation/order_chains.py); every pair of
  neighbours in a chain is a pair (weaker, stronger), or a pairs file lists its pairs itself.
* Probe directions are fit per layer and pooling on the fit pairs, and every number is measured
  on the held-out pairs, which no probe saw. A check (pair, direction) holds when the stronger
  text scores at least as high as the weaker one along the direction; a layer's `preserved` is
  the mean over held-out pairs of each pair's share of directions that keep its order, with a
  bootstrap 95% CI resampling pairs.
* Two methods (METHODS; monollm/evaluation/order_probes.py fits and checks):
  `published` (the primary one) fits K directions pooled over every axis, each a logistic
  regression with intercept on a bootstrap sample of the fit pairs' standardized pooled states
  (stronger 1, weaker 0), with pairs split by chain (seeded, 70/30 by default); `per_axis` fits
  one direction per axis on stronger-minus-weaker differences, checks every pair against every
  axis' direction, and splits by topic (half by default). A pairs file's own split is used
  when it has one.

What it holds fixed across models: the chains, the pairs and their split (same seed), the
probe recipe and its bootstrap samples (each model gets its own probes, fit on the same pairs)
and the layers (index into `hidden_states`: 0 the embeddings, i the output of block i).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from monollm.evaluation import order_probes
from monollm.evaluation.order_probes import fit_directions, layer_preservation
from monollm.model import foundation

__all__ = ["POOLINGS", "MODELS", "METHODS", "FIT_FRACTION", "Pairs", "make_pairs", "pooled_states",
           "fit_directions", "layer_preservation", "order_preservation", "order_table", "findings"]

POOLINGS = ("last", "mean")
"""`last`: the state at each text's last token (primary: a causal model's summary of the whole
text); `mean`: the mean over its tokens (a check that the result is not an artefact of one
position)."""
MODELS = ("reference", "baseline", "monotonic_init", "monotonic")
METHODS = ("published", "per_axis")
"""`published`: K bootstrap directions pooled over every axis (primary); `per_axis`: one
direction per axis (module docstring)."""
FIT_FRACTION = {"published": 0.7, "per_axis": 0.5}
"""Each method's default share of the chains (published) or topics (per_axis) that fit."""
SPLIT_BY = {"published": "chain", "per_axis": "topic"}
"""What each method's seeded split keeps together, when the chains carry no split of their own."""


@dataclass(frozen=True)
class Pairs:
    """Pairs of texts (weaker, stronger) and their fit / held-out split.

    texts (N,) distinct texts; weak, strong (P,) indices into texts; axis (P,) indices into
    axes (A,); fit (P,) True for the fit pairs; fit_topics the topics of fit pairs; split how
    the split was made: "topic" or "chain" (seeded) or "file" (the chains' own)."""
    texts: tuple[str, ...]
    weak: np.ndarray
    strong: np.ndarray
    axis: np.ndarray
    fit: np.ndarray
    axes: tuple[str, ...]
    fit_topics: tuple[str, ...]
    split: str = "topic"


def _chain_pairs(chain: dict) -> list[tuple[str, str, str | None]]:
    """(weaker, stronger, split or None) of a chain: its listed `pairs` (a pairs file's) or every
    two neighbours of its texts, with the chain's split."""
    if "pairs" in chain:
        return [(p["weaker"], p["stronger"], p.get("split", chain.get("split"))) for p in chain["pairs"]]
    texts = chain["texts"]
    return [(a, b, chain.get("split")) for a, b in zip(texts, texts[1:])]


def _seeded_fit(chains: list[dict], fit_fraction: float, seed: int, by: str) -> list[bool]:
    """Per chain, whether it is in the fit split: a seeded `fit_fraction` of the topics (by =
    "topic") or of the chains (by = "chain"), at least one and never all."""
    keys = [c["topic"] if by == "topic" else i for i, c in enumerate(chains)]
    units = sorted(set(keys))
    n_fit = min(max(round(fit_fraction * len(units)), 1), len(units) - 1)
    if n_fit < 1:
        raise ValueError(f"order preservation needs chains of at least two {by}s, got {units}")
    chosen = {units[i] for i in np.random.default_rng(seed).permutation(len(units))[:n_fit]}
    return [k in chosen for k in keys]


def make_pairs(chains: list[dict], fit_fraction: float = 0.5, seed: int = 0, by: str = "topic") -> Pairs:
    """Pairs (P of them) of every chain (_chain_pairs), split: the chains' own split where they
    carry one ("fit" or "eval", every pair or none), else a seeded `fit_fraction` of the topics
    (by = "topic", which also needs every axis on both sides: check_axes) or of the chains (by =
    "chain")."""
    if not 0 < fit_fraction < 1:
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction!r}")
    if by not in ("topic", "chain"):
        raise ValueError(f"by must be 'topic' or 'chain', got {by!r}")
    listed = [_chain_pairs(c) for c in chains]
    given = [s for ps in listed for _, _, s in ps]
    if any(s is None for s in given) and any(s is not None for s in given):
        raise ValueError("some chains or pairs carry a split and others not: all or none")
    seeded = None if given and given[0] is not None else _seeded_fit(chains, fit_fraction, seed, by)
    axes = tuple(sorted({c["axis"] for c in chains}))
    index: dict[str, int] = {}
    rows = []
    for i, (c, ps) in enumerate(zip(chains, listed)):
        for a, b, s in ps:
            fit = seeded[i] if seeded else s == "fit"
            rows.append((index.setdefault(a, len(index)), index.setdefault(b, len(index)), axes.index(c["axis"]),
                         fit, c["topic"]))
    if not rows:
        raise ValueError("order preservation needs pairs: the chains give none")
    weak, strong, axis, fit, topic = (np.array(col) for col in zip(*rows))
    if fit.all() or not fit.any():
        raise ValueError(f"order preservation needs fit and held-out pairs; all {len(fit)} are "
                         f"{'fit' if fit.all() else 'held out'}")
    pairs = Pairs(tuple(index), weak, strong, axis, fit.astype(bool), axes,
                  tuple(sorted(set(topic[fit.astype(bool)]))), "file" if seeded is None else by)
    if by == "topic":
        check_axes(pairs)
    return pairs


def check_axes(pairs: Pairs):
    """Refuse pairs where an axis has no fit or no held-out pairs (per_axis fits a probe per axis
    and checks each axis' held-out pairs)."""
    for a, name in enumerate(pairs.axes):
        mine = pairs.fit[pairs.axis == a]
        if not mine.any() or mine.all():
            raise ValueError(f"axis {name!r} has no {'fit' if not mine.any() else 'held-out'} "
                             f"pairs with fit topics {pairs.fit_topics}: give it chains on more topics")


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


def _per_axis_layer(h: np.ndarray, pairs: Pairs, C: float, bootstrap: int, seed: int) -> dict:
    """per_axis summary of one layer's pooled states h (N, H) (order_probes.layer_preservation)."""
    diffs = h[pairs.strong] - h[pairs.weak]
    directions = fit_directions(diffs[pairs.fit], pairs.axis[pairs.fit], len(pairs.axes), C)
    return layer_preservation(diffs[~pairs.fit], directions, pairs.axis[~pairs.fit], bootstrap, seed)


def _published_layer(h: np.ndarray, pairs: Pairs, counts: np.ndarray, bootstrap: int, seed: int, device) -> dict:
    """published summary of one layer's pooled states h (N, H): directions fit on the fit pairs'
    bootstrap samples `counts` (K, P_fit), checked on the held-out pairs."""
    fit, held = pairs.fit, ~pairs.fit
    directions = order_probes.published_directions(h[pairs.strong[fit]], h[pairs.weak[fit]], counts, device)
    return order_probes.published_preservation(h[pairs.strong[held]], h[pairs.weak[held]], directions,
                                               bootstrap, seed)


def order_preservation(model, tokenizer, chains: list[dict], *, method: str = "published", pooling=POOLINGS,
                       seed: int = 0, split_seed: int = 42, bootstrap: int = 2000, fit_fraction: float | None = None,
                       directions: int = 64, C: float = 1.0, batch_size: int = 32, name: str = "model") -> pd.DataFrame:
    """One row per layer x pooling: model (`name`), method, layer, pooling, preserved, ci_low,
    ci_high, own_preserved, own_ci_low, own_ci_high (per_axis; NaN for published), tied, n_pairs
    (held-out), n_fit_pairs, n_directions, split.

    `method` is one of METHODS; `pooling` one of POOLINGS or several. The split (where the chains
    carry none) takes `fit_fraction` (None: FIT_FRACTION[method]) and, for published, `split_seed`,
    which also seeds its `directions` bootstrap samples; per_axis splits with `seed` and fits its
    probes with inverse L2 strength `C`. `seed` seeds the CIs' `bootstrap` resamples. Two models
    given the same arguments are measured on the same pairs with the same samples."""
    poolings = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    unknown = [p for p in poolings if p not in POOLINGS]
    if unknown or not poolings:
        raise ValueError(f"pooling must be among {POOLINGS}, got {pooling!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    published = method == "published"
    fraction = FIT_FRACTION[method] if fit_fraction is None else fit_fraction
    pairs = make_pairs(chains, fraction, split_seed if published else seed, SPLIT_BY[method])
    if not published:
        check_axes(pairs)
    states = pooled_states(model, tokenizer, pairs.texts, poolings, batch_size)
    counts = order_probes.bootstrap_counts(int(pairs.fit.sum()), directions, split_seed) if published else None
    device = next(model.parameters()).device
    rows = []
    for p in poolings:
        h = states[p].double().numpy()
        for layer in range(h.shape[0]):
            summary = (_published_layer(h[layer], pairs, counts, bootstrap, seed, device) if published
                       else _per_axis_layer(h[layer], pairs, C, bootstrap, seed))
            rows.append({"model": name, "method": method, "layer": layer, "pooling": p, **summary,
                         "n_pairs": int((~pairs.fit).sum()), "n_fit_pairs": int(pairs.fit.sum()),
                         "n_directions": directions if published else len(pairs.axes), "split": pairs.split})
    return pd.DataFrame(rows)


def order_table(model_dirs: dict, chains, *, device: str = "cpu", attn_implementation: str = "sdpa",
                **kwargs) -> pd.DataFrame:
    """order_preservation of the four models, one table (one row per model x layer x pooling).

    model_dirs: each of MODELS -> a directory written by models.save (verified on load);
    chains: a list of chains or the name / path that order_chains.load_chains reads;
    kwargs: order_preservation's keywords (method, pooling, seed, split_seed, bootstrap,
    fit_fraction, directions, C, batch_size), the same for every model."""
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
    """What the card and the console say of an order_preservation table: the method (a table
    without the column is per_axis, the only method there was) and its number of directions;
    for the primary pooling (the first measured: "last" by default) and the deepest layer, each
    model's share of checks that keep the order with its 95% bootstrap CI, and monotonic minus
    baseline (a difference of the two estimates; their CIs are each model's own)."""
    pooling = table["pooling"].iloc[0]
    rows = table[table["pooling"] == pooling]
    deepest = rows[rows["layer"] == rows["layer"].max()].set_index("model")
    out = {"method": str(table["method"].iloc[0]) if "method" in table else "per_axis",
           "pooling": pooling, "layer": int(rows["layer"].max()), "n_pairs": int(deepest["n_pairs"].iloc[0]),
           "models": {m: {k: float(deepest.loc[m, k]) for k in ("preserved", "ci_low", "ci_high")}
                      for m in deepest.index}}
    if "n_directions" in table:
        out["n_directions"] = int(deepest["n_directions"].iloc[0])
    if {"baseline", "monotonic"} <= set(deepest.index):
        out["monotonic_minus_baseline"] = float(deepest.loc["monotonic", "preserved"] - deepest.loc["baseline", "preserved"])
    return out
