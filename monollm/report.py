"""Tidy tables and findings, computed from the data and never written by hand.

Everything here is pure: lists and arrays in, pandas DataFrames and dicts out.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from monollm import stats
from monollm.evaluate import perplexity

MODELS = ("reference", "baseline", "monotonic_init", "monotonic")
# Activations that are monotone non-decreasing; with one of these and W >= 0 in every
# constrained matrix an MLP is monotone in its input. GELU (Pythia's) is not.
MONOTONE_ACTIVATIONS = ("relu", "relu2", "sigmoid", "tanh", "softplus", "leaky_relu")


def perplexity_table(per_block: dict, n_boot: int, seed: int) -> pd.DataFrame:
    """One row per model: perplexity, mean NLL, tokens, blocks and a 95% bootstrap CI over blocks.

    per_block: model name -> (nll_sum (N,), tokens (N,)).
    """
    rows = []
    for name, (nll, tok) in per_block.items():
        lo, hi = stats.ratio_bootstrap_ci(nll, tok, n_boot, seed)
        rows.append({"model": name, "perplexity": perplexity(nll, tok), "mean_nll": nll.sum() / tok.sum(),
                     "tokens": int(tok.sum()), "blocks": len(tok), "ppl_ci_low": lo, "ppl_ci_high": hi})
    return pd.DataFrame(rows)


def nll_difference(per_block: dict, a: str, b: str, n_boot: int, seed: int) -> dict:
    """Mean NLL of `a` minus `b` on the same blocks, with a paired bootstrap 95% CI."""
    (na, ta), (nb, tb) = per_block[a], per_block[b]
    assert np.array_equal(ta, tb), "models were scored on different blocks"
    diff = na.sum() / ta.sum() - nb.sum() / tb.sum()
    lo, hi = stats.ratio_bootstrap_ci(na - nb, ta, n_boot, seed, transform=lambda x: x)
    return {"diff": float(diff), "ci_low": lo, "ci_high": hi}


def training_table(histories: dict) -> pd.DataFrame:
    """Both arms' histories, one row per optimizer step. histories: arm -> list of dicts."""
    # sorted by arm: a join's inputs arrive in no fixed order
    return pd.concat([pd.DataFrame(histories[arm]) for arm in sorted(histories)], ignore_index=True)


def constraint_table(checks: dict) -> pd.DataFrame:
    """Verification counts per stage. checks: stage -> monotonic.verify() dict."""
    return pd.DataFrame([{"stage": stage, **c} for stage, c in checks.items()])


def attack_table(results) -> pd.DataFrame:
    """One row per attack x kind x model x trial x example, from AttackResults (or their rows)."""
    rows = [row for r in results for row in (r.rows() if hasattr(r, "rows") else [r])]
    return pd.DataFrame(rows)


def per_example(df: pd.DataFrame) -> pd.DataFrame:
    """Average repeated trials (e.g. several random triggers) per example, keeping pairing."""
    keys = ["attack", "kind", "model", "source_model", "example"]
    return df.groupby(keys, as_index=False)[["clean_nll", "attacked_nll", "dnll"]].mean()


def attack_summary(df: pd.DataFrame, thresholds, n_boot: int, seed: int) -> pd.DataFrame:
    """Per attack x kind x model x source: clean/attacked NLL, dNLL (mean, median, CI),
    relative perplexity increase exp(dNLL) - 1 and success rates with Wilson intervals.

    Success is judged per example (trials averaged) over *all* examples.
    """
    rows = []
    for key, g in per_example(df).groupby(["attack", "kind", "model", "source_model"], sort=False):
        d = g["dnll"].to_numpy()
        lo, hi = stats.bootstrap_ci(d, n_boot, seed)
        row = dict(zip(["attack", "kind", "model", "source_model"], key))
        row.update({"examples": len(d), "clean_nll": g["clean_nll"].mean(), "attacked_nll": g["attacked_nll"].mean(),
                    "dnll_mean": d.mean(), "dnll_median": float(np.median(d)), "dnll_ci_low": lo,
                    "dnll_ci_high": hi, "rel_ppl_increase": float(np.expm1(d.mean()))})
        for t in thresholds:
            k = int((d >= t).sum())
            w_lo, w_hi = stats.wilson(k, len(d))
            row.update({f"success@{t:g}": k / len(d), f"success@{t:g}_ci_low": w_lo, f"success@{t:g}_ci_high": w_hi})
        row.update(above_control(df, row["attack"], row["kind"], row["model"], row["source_model"], n_boot, seed))
        rows.append(row)
    return pd.DataFrame(rows)


def above_control(df: pd.DataFrame, attack: str, kind: str, model: str, source: str, n_boot: int, seed: int) -> dict:
    """The control's mean dNLL on `model` and the attack's dNLL above it, paired by example, with a
    bootstrap 95% CI: the part of the damage that random perturbations of the same size do not do.

    NaN where there is no control (the control rows themselves, attacks without one).
    """
    nan = {"control_dnll": np.nan, "above_control": np.nan, "above_control_ci_low": np.nan,
           "above_control_ci_high": np.nan}
    ex = per_example(df[(df.attack == attack) & (df.model == model)])
    ctrl = ex[ex.kind == "control"].set_index("example")["dnll"]
    this = ex[(ex.kind == kind) & (ex.source_model == source)].set_index("example")["dnll"]
    if kind == "control" or ctrl.empty:
        return nan
    diff = (this - ctrl.reindex(this.index)).to_numpy()
    if np.isnan(diff).any():
        raise ValueError(f"{attack} on {model}: the control does not cover the attack's examples")
    lo, hi = stats.bootstrap_ci(diff, n_boot, seed)
    return {"control_dnll": float(ctrl.mean()), "above_control": float(diff.mean()), "above_control_ci_low": lo,
            "above_control_ci_high": hi}


def robustness_comparison(df: pd.DataFrame, attack: str, kind: str, n_boot: int, seed: int) -> dict:
    """dNLL(baseline) - dNLL(monotonic) on the same examples, paired bootstrap CI, and a verdict."""
    ex = per_example(df[(df.attack == attack) & (df.kind == kind) & (df.model == df.source_model)])
    wide = ex.pivot(index="example", columns="model", values="dnll")
    if not {"baseline", "monotonic"} <= set(wide.columns):
        return {}
    return _compare(wide, n_boot, seed)


def _compare(wide: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """wide: per-example dNLL, columns baseline and monotonic -> difference, paired CI, verdict."""
    diff = (wide["baseline"] - wide["monotonic"]).to_numpy()
    lo, hi = stats.bootstrap_ci(diff, n_boot, seed)
    if lo > 0:
        verdict = "monotonic more robust"
    elif hi < 0:
        verdict = "baseline more robust"
    else:
        verdict = "no significant difference"
    return {"dnll_baseline": float(wide["baseline"].mean()), "dnll_monotonic": float(wide["monotonic"].mean()),
            "diff": float(diff.mean()), "ci_low": lo, "ci_high": hi, "examples": len(diff), "verdict": verdict}


def robustness_above_control(df: pd.DataFrame, attack: str, n_boot: int, seed: int) -> dict:
    """The same comparison on dNLL above each model's own matched control (per example, trials
    averaged): the robustness claim METHOD.md allows. {} without a control or without both models."""
    ex = per_example(df[df.attack == attack])
    own = ex[(ex.kind == "attack") & (ex.model == ex.source_model)].pivot(index="example", columns="model", values="dnll")
    ctrl = ex[ex.kind == "control"].pivot(index="example", columns="model", values="dnll")
    if not {"baseline", "monotonic"} <= set(own.columns) & set(ctrl.columns):
        return {}
    return _compare(own - ctrl.reindex(own.index), n_boot, seed)


def findings(ppl: pd.DataFrame, per_block: dict, constraint: pd.DataFrame, attacks: pd.DataFrame,
             hidden_act: str, n_boot: int, seed: int) -> dict:
    """Key numbers and verdicts, each computed from the tables."""
    p = ppl.set_index("model")["perplexity"]
    cost = nll_difference(per_block, "monotonic", "baseline", n_boot, seed)
    out = {
        "perplexity": {m: float(p[m]) for m in p.index},
        "perplexity_ratio_monotonic_vs_baseline": float(p["monotonic"] / p["baseline"]),
        "nll_cost_monotonic_minus_baseline": cost,
        "perplexity_cost_significant": bool(cost["ci_low"] > 0 or cost["ci_high"] < 0),
        "constraint_applied_raises_ppl": bool(p["monotonic_init"] > p["reference"]),
        "recovery_lowers_ppl": bool(p["monotonic"] < p["monotonic_init"]),
        "constraint_holds": bool((constraint["negative"] == 0).all() and (constraint["matrices"] > 0).all()),
        "constrained_matrices": int(constraint["matrices"].max()),
        "activation": hidden_act,
        "mlp_monotone": hidden_act in MONOTONE_ACTIVATIONS,
        "activation_note": (f"The MLP activation is {hidden_act!r}, which is "
                            + ("monotone, so W >= 0 makes each constrained MLP monotone."
                               if hidden_act in MONOTONE_ACTIVATIONS else
                               "not monotone: W >= 0 alone does not make the MLP a monotone function.")),
        "robustness": {},
        "robustness_above_control": {},
    }
    if len(attacks):
        for (attack, kind), _ in attacks.groupby(["attack", "kind"], sort=False):
            comp = robustness_comparison(attacks, attack, kind, n_boot, seed)
            if comp:
                out["robustness"][f"{attack}/{kind}"] = comp
        for attack in attacks["attack"].unique():
            comp = robustness_above_control(attacks, attack, n_boot, seed)
            if comp:
                out["robustness_above_control"][attack] = comp
    return out
