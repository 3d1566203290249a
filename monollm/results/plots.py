"""The cards' charts as matplotlib figures, for notebooks: static PNGs that render wherever
the notebook is opened (Jupyter, nbconvert HTML, GitHub), unlike Vega-Lite specs.

    from monollm.results import plots
    plots.perplexity(run.data.perplexity)      # a matplotlib Figure; Jupyter shows it as a PNG

Each function takes the same table as its `cards` counterpart and returns a new Figure made
without pyplot, so nothing is drawn twice and no global figure state is left behind.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from monollm.results.cards import COLORS, CONDITIONS, _thin

OTHER = "#72b7b2"  # a model or arm without its own colour


def _color(name: str) -> str:
    return COLORS.get(name, OTHER)


def perplexity(ppl: pd.DataFrame) -> Figure:
    """Bars of test perplexity by model with the 95% bootstrap CI as error bars.
    ppl: the run's `perplexity` table (model, perplexity, ppl_ci_low, ppl_ci_high)."""
    fig = Figure(figsize=(6.5, 3.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    y = ppl["perplexity"].to_numpy(float)
    err = np.vstack([y - ppl["ppl_ci_low"].to_numpy(float), ppl["ppl_ci_high"].to_numpy(float) - y])
    ax.bar(ppl["model"], y, yerr=err, capsize=4, color=[_color(m) for m in ppl["model"]])
    ax.set_ylabel("perplexity")
    ax.set_title("Test perplexity by model (95% CI)")
    return fig


def losses(training: pd.DataFrame, title: str = "Recovery training") -> Figure:
    """Training loss (solid) and validation loss (dashed, points) against tokens, per arm.
    training: the run's `training` table (arm, tokens, loss, val_loss)."""
    fig = Figure(figsize=(6.5, 3.4), dpi=100, layout="constrained")
    ax = fig.subplots()
    for arm, g in training.groupby("arm", sort=False):
        thin, val = _thin(g), g[np.isfinite(g["val_loss"])]
        ax.plot(thin["tokens"], thin["loss"], color=_color(arm), label=f"{arm} train")
        ax.plot(val["tokens"], val["val_loss"], "--o", color=_color(arm), markersize=3, label=f"{arm} val")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


def dnll(attacks: pd.DataFrame, attack: str) -> Figure:
    """Per-example dNLL (trials averaged) of one attack: a box per condition (attack, its controls,
    transfer) and model, with a line at zero. attacks: the run's tidy `attacks` table."""
    from monollm.results.report import per_example

    ex = per_example(attacks[attacks.attack == attack])
    # as in the card: one control box per model, its control for its own perturbation
    ex = ex[~ex["kind"].str.startswith("control") | (ex["model"] == ex["source_model"])]
    models = [m for m in COLORS if m in set(ex["model"])] + sorted(set(ex["model"]) - set(COLORS))
    kinds = [k for k in CONDITIONS if k in set(ex["kind"])] + sorted(set(ex["kind"]) - set(CONDITIONS))
    fig = Figure(figsize=(6.5, 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        data = [ex[(ex.kind == k) & (ex.model == model)]["dnll"].to_numpy() for k in kinds]
        pos = [j + (i - (len(models) - 1) / 2) * width for j in range(len(kinds))]
        keep = [(p, d) for p, d in zip(pos, data) if len(d)]
        if not keep:
            continue
        box = ax.boxplot([d for _, d in keep], positions=[p for p, _ in keep], widths=width * 0.9,
                         whis=(0, 100), patch_artist=True, manage_ticks=False,
                         medianprops={"color": "black"})
        for patch in box["boxes"]:
            patch.set_facecolor(_color(model))
        ax.plot([], [], "s", color=_color(model), label=model)  # one legend entry per model
    ax.axhline(0, color="grey", linestyle=":", linewidth=1)
    # several conditions side by side: labels on two lines at most, smaller, so they do not overlap
    ax.set_xticks(range(len(kinds)), [CONDITIONS.get(k, k).replace(" (", "\n(", 1) for k in kinds],
                  fontsize="small" if len(kinds) > 3 else None)
    ax.set_ylabel("dNLL (nats per continuation token)")
    ax.set_title(f"{attack}: dNLL per example")
    ax.legend(fontsize="small")
    return fig


def order(table: pd.DataFrame, pooling: str) -> Figure:
    """Share of held-out order checks preserved per layer (line) with its 95% CI (band), per model.
    table: the run's `order_preservation` table (model, layer, pooling, preserved, ci_low, ci_high)."""
    fig = Figure(figsize=(6.5, 3.4), dpi=100, layout="constrained")
    ax = fig.subplots()
    for model, g in table[table["pooling"] == pooling].groupby("model", sort=False):
        ax.fill_between(g["layer"], g["ci_low"], g["ci_high"], color=_color(model), alpha=0.15)
        ax.plot(g["layer"], g["preserved"], "-o", color=_color(model), markersize=3, label=model)
    ax.set_xlabel("layer (0: embeddings)")
    ax.set_xticks(sorted(table["layer"].unique()))  # whole layers only
    ax.set_ylabel("share preserved")
    ax.set_ylim(0, 1)
    method = f"{table['method'].iloc[0]} method, " if "method" in table else ""
    ax.set_title(f"Order preservation by layer ({method}{pooling}-token pooling, 95% CI)")
    ax.legend(fontsize="small")
    return fig


def compute_plot(curve: pd.DataFrame, targets, n_boot: int = 2000, seed: int = 0,
                 family: str = "universal triggers") -> Figure:
    """A family's worst-case damage above control against the forward passes its searches spent (log
    x), per model: the mean over examples (line) with a 95% paired bootstrap band per point, and each
    damage target (a list, or results.compute.default_targets' dict) as a dotted horizontal line.
    curve: the per-example curve table (model, example, passes, above_control; results.compute)."""
    from monollm.results.compute import curve_bands, target_keys

    bands = curve_bands(curve, n_boot, seed)
    fig = Figure(figsize=(6.5, 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    for model, g in bands.groupby("model", sort=False):
        ax.fill_between(g["passes"], g["ci_low"], g["ci_high"], color=_color(model), alpha=0.15)
        ax.plot(g["passes"], g["above_control"], "-o", color=_color(model), markersize=3, label=model)
    for key, target in target_keys(targets).items():
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        label = f"target {target:.3f}" + ("" if key == f"{target:.3f}" else f" ({key})")
        ax.annotate(label, (0.01, target), xycoords=("axes fraction", "data"),
                    fontsize="x-small", color="grey", va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("forward passes per model (attack compute)")
    ax.set_ylabel("damage above control (nats/token)")
    ax.set_title(f"{family}: worst-case damage against attack compute (95% CI)")
    ax.legend(fontsize="small")
    return fig
