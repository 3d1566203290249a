"""Verdicts: baseline against monotonic on the same examples, a paired bootstrap CI of the
difference of their damage, and what it supports ("monotonic more robust", "baseline more
robust", "no significant difference")."""
from __future__ import annotations

import pandas as pd

from monollm import stats
from monollm.results import wording
from monollm.results.report import PRIMARY_CONTROL, per_example


def robustness_comparison(df: pd.DataFrame, attack: str, kind: str, n_boot: int, seed: int) -> dict:
    """dNLL(baseline) - dNLL(monotonic) on the same examples, paired bootstrap CI, and a verdict."""
    ex = per_example(df[(df.attack == attack) & (df.kind == kind) & (df.model == df.source_model)])
    wide = ex.pivot(index="example", columns="model", values="dnll")
    if not {"baseline", "monotonic"} <= set(wide.columns):
        return {}
    return compare_models(wide, n_boot, seed)


def compare_models(wide: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """wide: per-example dNLL, columns baseline and monotonic -> difference, paired CI, verdict."""
    diff = (wide["baseline"] - wide["monotonic"]).to_numpy()
    lo, hi = stats.bootstrap_ci(diff, n_boot, seed)
    verdict = wording.read(lo, hi, wording.ROBUSTNESS)
    return {"dnll_baseline": float(wide["baseline"].mean()), "dnll_monotonic": float(wide["monotonic"].mean()),
            "diff": float(diff.mean()), "ci_low": lo, "ci_high": hi, "examples": len(diff), "verdict": verdict}


def robustness_above_control(df: pd.DataFrame, attack: str, n_boot: int, seed: int) -> dict:
    """The same comparison on dNLL above each model's own primary control (per example, trials
    averaged): the robustness claim docs/method.md allows. {} without a control or without both models."""
    ex = per_example(df[(df.attack == attack) & (df.model == df.source_model)])
    own = ex[ex.kind == "attack"].pivot(index="example", columns="model", values="dnll")
    ctrl = ex[ex.kind == PRIMARY_CONTROL].pivot(index="example", columns="model", values="dnll")
    if not {"baseline", "monotonic"} <= set(own.columns) & set(ctrl.columns):
        return {}
    return compare_models(own - ctrl.reindex(own.index), n_boot, seed)
