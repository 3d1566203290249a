"""Tidy tables and findings, computed from the data and never written by hand.

Everything here is pure: lists and arrays in, pandas DataFrames and dicts out.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from monollm import stats
from monollm.constants import MODELS
from monollm.evaluation.perplexity import perplexity

# Activations that are monotone non-decreasing; with one of these and W >= 0 in every
# matrix of an MLP it is monotone in its input. GELU (Pythia's) is not.
MONOTONE_ACTIVATIONS = ("relu", "relu2", "sigmoid", "tanh", "softplus", "leaky_relu")
FULL_MLP_VARIANTS = ("mlp_both",)
"""Variants that constrain every matrix of a (non-gated) MLP. A gated MLP's act(gate x) * (up x)
is not monotone even with every matrix >= 0: up x may be negative."""
DEFAULT_SETTING = {"variant": "mlp_both", "mode": "nonneg", "layers": "all", "init": "abs", "activation": "keep"}
"""The [monotonic] settings a run without them (or a caller passing none) had."""
MODE_NOTES = {
    "nonneg": ("Mode nonneg: the constrained matrices are W = softplus(V) >= 0, started at max(|W0|, floor). "
               "Against the baseline this changes two things, the weights at init (every sign lost) and the "
               "constraint during training; the controls sign_frozen and abs_init_free each keep one of them."),
    "sign_frozen": ("Mode sign_frozen (a control): W = sign(W0) * softplus(V), started at W0 itself (no change of "
                    "the weights at init) with the reference's sign pattern frozen while magnitudes train. It "
                    "isolates a fixed-sign constraint without non-negativity and without the init disruption."),
    "abs_init_free": ("Mode abs_init_free (a control): the constrained matrices start at max(|W0|, floor), as under "
                      "the constraint, then train unconstrained ({negative} negative entries after training). It "
                      "isolates the init disruption plus recovery training, without W >= 0."),
}
"""What each monotonic.mode holds fixed against the baseline, for the findings."""


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


KEYS = ["attack", "kind", "model", "source_model"]
PRIMARY_CONTROL = "control"
"""The control every "above control" number and robustness claim is measured against. For
HotFlip: random tokens at exactly the attack's positions; for UAT: random triggers of the same
length at the same place (monollm.attacks)."""
CONTROLS = (PRIMARY_CONTROL, "control_random_positions")
"""Control kinds (control rows are never compared with a control)."""
SEARCH_TRACE = ("restart", "budget")
"""Row kinds of a search's way to its trigger: read by results.worst_case and diagnostics only."""


def reported(df: pd.DataFrame) -> pd.DataFrame:
    """The rows the summary and the per-attack verdicts describe: all but SEARCH_TRACE."""
    return df[~df.kind.isin(SEARCH_TRACE)] if len(df) else df


def per_example(df: pd.DataFrame) -> pd.DataFrame:
    """Average repeated trials (e.g. several random triggers) per example, keeping pairing."""
    keys = KEYS + ["example"]
    return df.groupby(keys, as_index=False)[["clean_nll", "attacked_nll", "dnll"]].mean()


def success_rates(g: pd.DataFrame, threshold: float) -> tuple[float, float, float]:
    """(rate, Wilson low, high): the share of examples with dNLL >= threshold, computed per trial
    over *all* examples, then averaged over the trials. g: the rows of one attack x kind x model
    x source (one per trial and example).

    The Wilson interval takes n = the number of examples and k = rate * n: the examples are the
    independent units, while trials re-use the same examples, so pooling n * trials would
    overstate the sample size (with one trial k and n are the plain counts).
    """
    rate = float(g.groupby("trial")["dnll"].apply(lambda d: (d >= threshold).mean()).mean())
    n = g["example"].nunique()
    lo, hi = stats.wilson(rate * n, n)
    return rate, lo, hi


def compute_spent(g: pd.DataFrame) -> dict:
    """Forward passes and exact candidate evaluations spent finding the perturbations of one
    attack x kind x model x source (on `source_model`; scoring them is not counted): the sum over
    trials of each trial's search. 0 for random controls; a transfer row shows its source's search.
    A table without the compute columns (made by hand) gives none."""
    per_trial = g.groupby("trial")[[c for c in ("forward_passes", "candidate_evals") if c in g.columns]].first()
    return {k: int(per_trial[k].sum()) for k in per_trial.columns}


GUIDANCE = ("ranking", "guidance_spearman", "guidance_n")
"""The attack table's columns on how the search ranked its candidates (AttackResult)."""
WEAK_GUIDANCE = 0.3
"""Spearman rho below which the first-order estimate is said to barely predict the exact loss
change of a single-token swap: a ranking that weak orders candidates little better than chance
(a negative rho: worse than chance), so the damage a search that ranks by it finds is a lower
bound. (Over uniformly sampled swaps; the top of the ranking may still beat random picks, which
benchmarks/attacks.py measures.)"""


def weak_guidance(rho: float) -> bool:
    """Whether a measured Spearman rho counts as weak guidance (below WEAK_GUIDANCE, negatives included)."""
    return rho < WEAK_GUIDANCE


def search_guidance(g: pd.DataFrame) -> dict:
    """`ranking`, `guidance_spearman` and `guidance_n` of one attack x kind x model x source: its
    first row's (one search gives every row of a group the same). A table without the columns
    (made by hand, or before they existed) gives none; a row without them (a table concatenated
    from older and newer branches) gives "", NaN and 0."""
    first = g.iloc[0]
    convert = {"ranking": lambda v: "" if pd.isna(v) else str(v), "guidance_spearman": float,
               "guidance_n": lambda v: 0 if pd.isna(v) else int(v)}
    return {c: convert[c](first[c]) for c in GUIDANCE if c in g.columns}


def attack_summary(df: pd.DataFrame, thresholds, n_boot: int, seed: int) -> pd.DataFrame:
    """Per attack x kind x model x source: clean/attacked NLL, dNLL (mean, median, CI over examples,
    trials averaged per example), relative perplexity increase exp(dNLL) - 1, success rates with
    Wilson intervals (per trial over *all* examples, then averaged: `success_rates`), the compute
    spent, how the search ranked its candidates (`search_guidance`) and the damage above the
    primary control (`above_control`). Rows of SEARCH_TRACE kinds are left out.
    """
    rows, df = [], reported(df)
    for key, g in df.groupby(KEYS, sort=False):
        ex = per_example(g)
        d = ex["dnll"].to_numpy()
        lo, hi = stats.bootstrap_ci(d, n_boot, seed)
        row = dict(zip(KEYS, key))
        row.update({"examples": len(d), "trials": g["trial"].nunique(), "clean_nll": ex["clean_nll"].mean(),
                    "attacked_nll": ex["attacked_nll"].mean(), "dnll_mean": d.mean(),
                    "dnll_median": float(np.median(d)), "dnll_ci_low": lo, "dnll_ci_high": hi,
                    "rel_ppl_increase": float(np.expm1(d.mean()))})
        for t in thresholds:
            rate, w_lo, w_hi = success_rates(g, t)
            row.update({f"success@{t:g}": rate, f"success@{t:g}_ci_low": w_lo, f"success@{t:g}_ci_high": w_hi})
        row.update(compute_spent(g))
        row.update(search_guidance(g))
        row.update(above_control(df, row["attack"], row["kind"], row["model"], row["source_model"], n_boot, seed))
        rows.append(row)
    return pd.DataFrame(rows)


def matched_control(df: pd.DataFrame, attack: str, model: str, source: str,
                    kind: str = PRIMARY_CONTROL) -> pd.DataFrame:
    """The `kind` control rows on `model` that rows of `attack` found on `source` are compared with.

    An attack whose controls are matched to where the perturbation was found (HotFlip: the flip
    positions found on `source`, also when scored on another model) has control rows with
    `source_model` == source, and those are used. An attack whose control does not depend on it
    (UAT: random triggers of the same length at the same place) has one control per model,
    `source_model` == model, used for every source. Empty when there is no such control.
    """
    controls = df[(df.attack == attack) & (df.kind == kind)]
    per_source = bool((controls.source_model != controls.model).any())
    return controls[(controls.model == model) & (controls.source_model == (source if per_source else model))]


def above_control(df: pd.DataFrame, attack: str, kind: str, model: str, source: str, n_boot: int, seed: int) -> dict:
    """The primary control's mean dNLL on `model` (`matched_control`) and the attack's dNLL above
    it, paired by example (trials averaged), with a bootstrap 95% CI: the part of the damage that
    random perturbations of the same size, at the same place, do not do. `control_source` says
    whose perturbation the control was matched to; `control_random_positions_dnll` is the second
    control's mean where the attack has one.

    NaN where there is no control (the control rows themselves, attacks without one).
    """
    out = {"control_source": "", "control_dnll": np.nan, "control_random_positions_dnll": np.nan,
           "above_control": np.nan, "above_control_ci_low": np.nan, "above_control_ci_high": np.nan}
    if kind in CONTROLS:
        return out
    second = matched_control(df, attack, model, source, "control_random_positions")
    if len(second):
        out["control_random_positions_dnll"] = float(per_example(second)["dnll"].mean())
    ctrl = per_example(matched_control(df, attack, model, source))
    if ctrl.empty:
        return out
    this = per_example(df[(df.attack == attack) & (df.kind == kind) & (df.model == model)
                          & (df.source_model == source)]).set_index("example")["dnll"]
    diff = (this - ctrl.set_index("example")["dnll"].reindex(this.index)).to_numpy()
    if np.isnan(diff).any():
        raise ValueError(f"{attack} on {model}: the control does not cover the attack's examples")
    lo, hi = stats.bootstrap_ci(diff, n_boot, seed)
    out.update({"control_source": ctrl["source_model"].iloc[0], "control_dnll": float(ctrl["dnll"].mean()),
                "above_control": float(diff.mean()), "above_control_ci_low": lo, "above_control_ci_high": hi})
    return out


def guidance_table(df: pd.DataFrame) -> pd.DataFrame:
    """How far each search's first-order ranking can be trusted: one row per attack x model a
    search ran on (kind "attack" rows found on their own model with a `ranking`; controls, transfers
    and search-free attacks such as `random` have none), with attack, model, ranking,
    guidance_spearman (NaN where not measured) and guidance_n. df: the attack table or its summary;
    one without the columns (an older run) gives an empty table."""
    columns = ["attack", "model", *GUIDANCE]
    if not len(df) or not set(GUIDANCE) <= set(df.columns):
        return pd.DataFrame(columns=columns)
    own = df[(df.kind == "attack") & (df.model == df.source_model)]
    rows = [{"attack": a, "model": m, **search_guidance(g)}
            for (a, m), g in own.groupby(["attack", "model"], sort=False)]
    out = pd.DataFrame(rows, columns=columns)
    return out[out["ranking"] != ""].reset_index(drop=True)


def guidance_findings(attacks: pd.DataFrame) -> dict:
    """Per attack with a search (`guidance_table`): the `ranking` it used, the Spearman rho per
    model and the swaps (`swaps`) behind it, both only where measured, and a `note` when some
    measured rho is below WEAK_GUIDANCE."""
    out = {}
    for attack, g in guidance_table(attacks).groupby("attack", sort=False):
        measured = g[np.isfinite(g["guidance_spearman"].astype(float))]
        entry = {"ranking": ", ".join(dict.fromkeys(g["ranking"])),
                 "spearman": {m: float(r) for m, r in zip(measured["model"], measured["guidance_spearman"])},
                 "swaps": {m: int(n) for m, n in zip(measured["model"], measured["guidance_n"])}}
        weak = {m: r for m, r in entry["spearman"].items() if weak_guidance(r)}
        if weak:
            entry["note"] = weak_guidance_note(attack, entry["ranking"], weak, entry["swaps"])
        out[attack] = entry
    return out


def weak_guidance_note(attack: str, ranking: str, weak: dict, swaps: dict) -> str:
    """The sentence for models (`weak`: model -> rho) whose first-order estimate barely predicts
    the exact loss change, saying whether `attack`'s results rest on it (ranking "gradient") or not."""
    each = ", ".join(f"{m} (Spearman {r:+.2f} over {swaps[m]} swaps)" for m, r in weak.items())
    out = (f"{attack}: the first-order estimate barely predicts the exact loss change of a single-token swap "
           f"on {each}, rho below {WEAK_GUIDANCE:g}.")
    if ranking == "gradient":
        return out + (" The search ranks its candidates by that estimate, so its damage is a lower bound on what a "
                      "better-guided search could find; `ranking = \"random\"` or `\"exact\"` at the same budget "
                      "shows how much the ranking matters (benchmarks/attacks.py).")
    return out + f" This search did not rank by it (ranking: {ranking}), so its results do not rest on it."


def constraint_holds(constraint: pd.DataFrame, mode: str) -> bool:
    """Every verification stage found > 0 matrices and nothing that breaks `mode`'s promise
    (monotonic.PROMISE: negative entries, flipped signs, or a start other than max(|W0|, floor))."""
    column = promise_column(mode)
    broken = constraint[column].fillna(0) if column in constraint.columns else pd.Series(0, index=constraint.index)
    return bool((broken == 0).all() and (constraint["matrices"] > 0).all())


def mode_note(constraint: pd.DataFrame, mode: str) -> str:
    """MODE_NOTES[mode], with abs_init_free's negative entries after training."""
    after = constraint.loc[constraint["stage"] == "after_training", "negative"] if "stage" in constraint else []
    return MODE_NOTES[mode].format(negative=int(after.iloc[0]) if len(after) else "unknown")


def activation_findings(hidden_act: str, setting: dict, swap: dict | None, reference_ppl: float) -> dict:
    """`activation`, `mlp_monotone` (a monotone activation and every MLP matrix of every layer
    under W >= 0: mode nonneg, a FULL_MLP_VARIANTS variant, layers "all") and `activation_note` (with what a swap did to the reference's perplexity,
    `reference_ppl` the reference row's)."""
    monotone = hidden_act in MONOTONE_ACTIVATIONS
    full = (setting["mode"] == "nonneg" and setting["variant"] in FULL_MLP_VARIANTS
            and setting["layers"] == "all")
    if not monotone:
        note = f"The MLP activation is {hidden_act!r}, which is not monotone: W >= 0 alone does not make the MLP a monotone function."
    elif full:
        note = f"The MLP activation is {hidden_act!r}, which is monotone, so W >= 0 makes each constrained MLP monotone."
    else:
        note = (f"The MLP activation is {hidden_act!r}, which is monotone, but not every MLP matrix is held >= 0 "
                f"(mode {setting['mode']}, variant {setting['variant']}, layers {setting['layers']}), so the MLPs "
                f"are not monotone functions.")
    if swap:
        note += (f" {swap['to']!r} replaced {swap['from']!r} in the reference model, so both arms have it; the swap "
                 f"moved the reference's test perplexity from {swap['perplexity_before']:.4g} to "
                 f"{reference_ppl:.4g} (the reference row).")
    return {"activation": hidden_act, "mlp_monotone": bool(monotone and full), "activation_note": note}


def constraint_setting(m: dict) -> str:
    """The [monotonic] table in one line; a run made before the modes existed shows its variant
    and floor only."""
    extra = ", ".join(f"{k} {m[k]}" for k in ("mode", "layers", "init", "activation") if k in m)
    return f"{m['variant']} (floor {m['floor']:g}{', ' + extra if extra else ''})"


def promise_column(mode: str) -> str:
    """The constraint-table column that must be 0 under `mode` (monotonic.PROMISE)."""
    from monollm.model.monotonic import PROMISE

    return PROMISE[mode]


def constraint_sentences(findings: dict, constraint: pd.DataFrame) -> list[str]:
    """The constraint check in words, for what the run's mode promises, and what the mode isolates."""
    mode = findings.get("mode", "nonneg")
    column = promise_column(mode)
    counted = int(constraint[column].fillna(0).sum()) if column in constraint.columns else 0
    what = {"nonneg": "negative entries", "sign_frozen": "entries off the reference's sign pattern",
            "abs_init_free": "entries off max(|W0|, floor) at init"}[mode]
    promise = {"nonneg": "W >= 0 holds.", "sign_frozen": "the sign pattern holds.",
               "abs_init_free": "the start matches the constraint's."}[mode]
    out = [f"Constraint check: {findings['constrained_matrices']} constrained matrices, {counted} {what} "
           f"over {len(constraint)} checks ({', '.join(constraint['stage'])})"
           + (f": {promise}" if findings["constraint_holds"] else ": the constraint FAILED.")]
    return out + ([findings["mode_note"]] if "mode_note" in findings else [])
