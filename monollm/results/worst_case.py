"""The worst case: a robustness verdict that stands on the strongest attack the run holds.

One search per model is a lower bound on what an attacker can do, and a weak one where the
search fails against one model only (a weaker gradient, a worse start, less budget), which
then looks "more robust". So, per threat-model family (FAMILIES), model and test example,
the damage is the largest over every perturbation of the family the run found against
*either* model: each attack's own search, the other model's (transfer), every restart's
final trigger and every best-so-far trigger of the budget curve. It is taken above the
family's matched control (the mean over the family's primary control rows for that model and
example: random tokens of the same length at the same place, or at the flips' positions), and
baseline minus monotonic gets a paired 95% bootstrap CI over the examples.

The strictly universal variant chooses one trigger per model, on `attack_opt` (its `opt_dnll`,
the mean damage on the attack_opt examples), among every trigger of the family scored on that
model, and reports it once on `test`.

When a single attack's own verdict is no evidence of robustness is monollm.results.diagnostics.

Everything here is a pure function of the attack table (report.attack_table).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from monollm import stats
from monollm.attacks import attack_of
from monollm.results.report import PRIMARY_CONTROL
from monollm.results.verdicts import compare_models

FAMILIES = {"universal triggers": ("uat", "gcg", "random_search"), "per-input edits": ("hotflip",)}
"""Threat-model family -> the attacks whose perturbations it pools. Triggers are universal (one
prefix for every input); edits are per input (HotFlip's flips, with one flip budget)."""
MEMBER_KINDS = ("attack", "transfer", "restart", "budget")
"""Kinds of rows that hold a perturbation some search found (controls hold random ones)."""
CURVE = "budget"
"""Kind of the budget-curve rows: the best-so-far trigger at a fraction of the search's budget."""


def member_label(row) -> str:
    """'uat attack', 'gcg transfer from baseline', 'uat restart 2 on monotonic', 'uat budget 1/2'."""
    label = f"{row.attack} {row.kind}"
    if row.kind == "restart":
        label += f" {int(row.trial)}"
    if row.kind == CURVE and "budget_fraction" in row._fields:
        label += f" {row.budget_fraction:g}"
    return label + (f" from {row.source_model}" if row.source_model != row.model else "")


def family_rows(df: pd.DataFrame, family: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(member rows, primary control rows) of `family` in the attack table df."""
    mine = df[df.attack.map(attack_of).isin(FAMILIES[family])]
    return mine[mine.kind.isin(MEMBER_KINDS)], mine[mine.kind == PRIMARY_CONTROL]


def by_threat_model(df: pd.DataFrame, threat_models) -> list[tuple[str, pd.DataFrame, str]]:
    """(threat model, its rows, the suffix of its findings keys) for each of `threat_models`
    (attack.tokens): the first's keys are the family names, the others' "<family> [<tokens>]".
    A table without a `tokens` column (made before it existed) is all the first's."""
    if "tokens" not in df.columns:
        return [(threat_models[0], df, "")]
    return [(tm, df[df.tokens == tm], "" if i == 0 else f" [{tm}]") for i, tm in enumerate(threat_models)]


EXAMPLE_COLUMNS = ["family", "model", "example", "dnll", "member", "control_dnll", "above_control"]
"""Columns of the per-example tables (per_example_worst, universal_choice)."""


def per_example_worst(df: pd.DataFrame, family: str) -> pd.DataFrame:
    """One row per model x example of `family`: the worst member's dNLL (`dnll`), which member it
    was (`member`, member_label), the family control's dNLL there (`control_dnll`) and the damage
    above it (`above_control`). Empty where the family has no rows or no control."""
    members, controls = _labelled(df, family)
    if members.empty or controls.empty:
        return pd.DataFrame(columns=EXAMPLE_COLUMNS)
    # repeated trials of one member (none today) would be averaged before the max: a member is one perturbation
    per_member = members.groupby(["model", "example", "member"], as_index=False)["dnll"].mean()
    worst = per_member.loc[per_member.groupby(["model", "example"])["dnll"].idxmax()]
    return _above_control(worst, controls, family)


def universal_choice(df: pd.DataFrame, family: str) -> pd.DataFrame:
    """The strictly universal variant: per model, the one member trigger with the highest
    `opt_dnll` (mean damage on attack_opt) among those scored on that model, its per-example
    test dNLL and the damage above the family control. Same columns as `per_example_worst`;
    empty without `opt_dnll` (a table made before it existed) or without members."""
    members, controls = _labelled(df, family)
    if "opt_dnll" in members.columns:
        members = members[np.isfinite(members["opt_dnll"].astype(float))]
    if "opt_dnll" not in members.columns or members.empty or controls.empty:
        return pd.DataFrame(columns=EXAMPLE_COLUMNS)
    best = set(members.groupby(["model", "member"])["opt_dnll"].first().groupby("model").idxmax())
    chosen = members[[(m, name) in best for m, name in zip(members.model, members.member)]]
    return _above_control(chosen.groupby(["model", "example", "member"], as_index=False)["dnll"].mean(),
                          controls, family)


def _labelled(df: pd.DataFrame, family: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """family_rows, the members with their `member` label."""
    members, controls = family_rows(df, family)
    return members.assign(member=[member_label(r) for r in members.itertuples()]), controls


def _above_control(rows: pd.DataFrame, controls: pd.DataFrame, family: str) -> pd.DataFrame:
    """rows (model, example, member, dnll) with the family control's mean dNLL per model and example
    and the damage above it (EXAMPLE_COLUMNS), sorted by model and example."""
    ctrl = controls.groupby(["model", "example"])["dnll"].mean().rename("control_dnll")
    out = rows.join(ctrl, on=["model", "example"])
    if out["control_dnll"].isna().any():
        raise ValueError(f"{family}: the control does not cover every example the members were scored on")
    out = out.assign(family=family, above_control=out["dnll"] - out["control_dnll"])
    return out[EXAMPLE_COLUMNS].sort_values(["model", "example"]).reset_index(drop=True)


def _search_passes(df: pd.DataFrame, family: str, model: str) -> int:
    """Forward passes the family's own searches spent against `model` (each attack's search once)."""
    own = df[df.attack.map(attack_of).isin(FAMILIES[family]) & (df.kind == "attack") & (df.model == model)
             & (df.source_model == model)]
    if own.empty or "forward_passes" not in own.columns:
        return 0
    return int(own.groupby("attack")["forward_passes"].first().sum())


def _summary_rows(df: pd.DataFrame, ex: pd.DataFrame, family: str, variant: str, threat_model: str,
                  n_boot: int, seed: int) -> list[dict]:
    """One worst_case row per model of one family and variant (ex: per_example_worst or universal_choice)."""
    rows = []
    for model, g in ex.groupby("model", sort=True):
        lo, hi = stats.bootstrap_ci(g["above_control"].to_numpy(float), n_boot, seed)
        carried = g["member"].value_counts()
        rows.append({"threat_model": threat_model, "family": family, "variant": variant, "model": model,
                     "examples": len(g), "dnll": float(g["dnll"].mean()), "control_dnll": float(g["control_dnll"].mean()),
                     "above_control": float(g["above_control"].mean()), "ci_low": lo, "ci_high": hi,
                     "members": int(family_rows(df[df.model == model], family)[0]
                                    .drop_duplicates(["attack", "kind", "source_model", "trial"]).shape[0]),
                     "forward_passes": _search_passes(df, family, model),
                     "carried_by": ", ".join(f"{m} ({n})" for m, n in carried.items()),
                     "top_member": carried.index[0], "top_examples": int(carried.iloc[0])})
    return rows


def table(df: pd.DataFrame, threat_models, n_boot: int, seed: int) -> pd.DataFrame:
    """The worst-case table: one row per threat model (of `threat_models`, attack.tokens) x family
    x variant ("per-example": the worst member per example; "universal": one trigger per model
    chosen on attack_opt) x model, with the examples, mean worst dNLL, the family control, the
    damage above it with its 95% bootstrap CI, the perturbations considered (`members`), the
    forward passes the family's own searches spent on the model, and which members carried the
    worst case (`carried_by`: member (examples); `top_member` and `top_examples`: the one that
    carried most)."""
    rows = []
    for tm, rows_tm, _ in by_threat_model(df, threat_models):
        for family in FAMILIES:
            rows += _summary_rows(rows_tm, per_example_worst(rows_tm, family), family, "per-example", tm, n_boot, seed)
            if family == "universal triggers":
                rows += _summary_rows(rows_tm, universal_choice(rows_tm, family), family, "universal", tm, n_boot,
                                      seed)
    return pd.DataFrame(rows)


def examples(df: pd.DataFrame, threat_models) -> pd.DataFrame:
    """Every threat model's and family's per-example worst case (per_example_worst), stacked: which
    member carried each example."""
    parts = [per_example_worst(rows, family).assign(threat_model=tm)
             for tm, rows, _ in by_threat_model(df, threat_models) for family in FAMILIES]
    return pd.concat(parts, ignore_index=True)


def verdicts(df: pd.DataFrame, threat_models, n_boot: int, seed: int) -> dict:
    """Per threat model and family ("<family>", "<family> [<tokens>]" after the first threat model,
    "<family>, universal..." for the strict variant): baseline minus monotonic of the worst-case
    damage above control, paired by example, with its CI and verdict (verdicts.compare_models),
    plus which members carried it and the passes of the family's own searches per model. Families
    without both models' rows are left out."""
    out = {}
    for tm, rows, suffix in by_threat_model(df, threat_models):
        for family in FAMILIES:
            variants = [("", per_example_worst(rows, family))]
            if family == "universal triggers":
                variants.append((", universal", universal_choice(rows, family)))
            for variant, ex in variants:
                comp = _verdict(rows, ex, family, n_boot, seed)
                if comp:
                    out[family + variant + suffix] = {**comp, "threat_model": tm}
    return out


def _verdict(df: pd.DataFrame, ex: pd.DataFrame, family: str, n_boot: int, seed: int) -> dict:
    wide = ex.pivot(index="example", columns="model", values="above_control")
    if not {"baseline", "monotonic"} <= set(wide.columns) or wide.isna().any().any():
        return {}
    comp = compare_models(wide, n_boot, seed)
    comp["carried_by"] = {m: ex[ex.model == m]["member"].value_counts().to_dict() for m in ("baseline", "monotonic")}
    comp["forward_passes"] = {m: _search_passes(df, family, m) for m in ("baseline", "monotonic")}
    return comp
