"""The per-example member table: what every worst-case number is computed from, built once.

A family (FAMILIES) pools the perturbations of one threat model. For each model and test example,
its *members* are the distinct perturbations some search found, against either model: each
search's reported perturbation, the other model's (transfer), every restart's final trigger and
every point of the budget curves. Members are deduplicated per model and example by what they
change (the trigger's ids, or the edited input's ids): a trigger that two searches, or a search and
a restart, both found is one member, so that the count of members - and with it the matched
control (monollm.results.worst_case) - counts perturbations, not rows.

Each member keeps one label, chosen by a fixed rule that is also the tie rule of every maximum
over members: its own model's searches come before transfers from the other model; then the
search's reported perturbation, then restarts, then budget-curve points; then the attacks in the
family's order; then the larger budget fraction; then the lower trial. So a trigger that the
baseline's random search reported and that a restart on the monotonic model also found is, on the
baseline, "random_search attack", and on the monotonic model "random_search transfer from
baseline" - never a restart.

The family's control draws are its attacks' primary control rows on the scored model (random
perturbations of the members' shape: random triggers of the same length at the same place,
random tokens at the flips' positions of either model's search), every draw with its damage on the
even and the odd continuation positions.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from monollm.attacks import attack_of
from monollm.results.report import PRIMARY_CONTROL

FAMILIES = {"universal triggers": ("uat", "gcg", "random_search"), "per-input edits": ("hotflip", "random_flips")}
"""Threat-model family -> the attacks whose perturbations it pools. Triggers are universal (one
prefix for every input); edits are per input (flips of context tokens, under one flip budget)."""
MEMBER_KINDS = ("attack", "transfer", "restart", "budget")
"""Kinds of rows that hold a perturbation some search found (controls hold random ones)."""
CURVE = "budget"
"""Kind of the budget-curve rows: the best-so-far perturbation at a fraction of the search's passes."""
KIND_RANK = {"attack": 0, "transfer": 0, "restart": 1, CURVE: 2}
"""Second key of the label and tie rule (after own search before transfer)."""
MEMBER_COLUMNS = ["model", "example", "member", "origin", "attack", "kind", "fraction", "dnll", "dnll_even",
                  "dnll_odd", "copies"]
CONTROL_COLUMNS = ["model", "example", "draw", "dnll", "dnll_even", "dnll_odd"]


def family_of(key: str) -> str:
    """The family of a findings["worst_case"] key: 'universal triggers, universal [printable]' ->
    'universal triggers' (for findings stored before each verdict named its "family")."""
    return key.split(",")[0].split(" [")[0]


def member_label(row) -> str:
    """'uat attack', 'gcg transfer from baseline', 'uat restart 2 from monotonic', 'uat budget 0.5'."""
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


def _halves(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(dnll_even, dnll_odd) of rows; NaN for a table made before the halves were recorded."""
    if "dnll_even" not in rows.columns:
        return np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    return rows["dnll_even"].to_numpy(float), rows["dnll_odd"].to_numpy(float)


def perturbation_key(rows: pd.DataFrame) -> list[str]:
    """What each row changes, as a string: its trigger's ids, else its attacked input's ids."""
    trig = rows["trigger_ids"] if "trigger_ids" in rows.columns else pd.Series([[]] * len(rows), index=rows.index)
    edit = rows["attacked_ids"] if "attacked_ids" in rows.columns else pd.Series([[]] * len(rows), index=rows.index)
    return [f"t{list(t)}" if len(t) else f"e{list(e)}" for t, e in zip(trig, edit)]


def members(df: pd.DataFrame, family: str) -> pd.DataFrame:
    """One row per model x example x distinct member of `family` (MEMBER_COLUMNS), in the label
    order (module docstring) within each model and example: `origin` "own" or "transfer",
    `fraction` the budget fraction (1 for reported triggers, restarts and transfers), `copies` the
    rows it stands for. Empty where the family has no member rows."""
    rows, _ = family_rows(df, family)
    if rows.empty:
        return pd.DataFrame(columns=MEMBER_COLUMNS)
    even, odd = _halves(rows)
    fraction = rows["budget_fraction"].to_numpy(float) if "budget_fraction" in rows.columns else np.ones(len(rows))
    order = FAMILIES[family]
    out = pd.DataFrame({
        "model": rows["model"].to_numpy(), "example": rows["example"].to_numpy(int),
        "member": [member_label(r) for r in rows.itertuples()],
        "origin": np.where(rows["source_model"].to_numpy() == rows["model"].to_numpy(), "own", "transfer"),
        "attack": rows["attack"].to_numpy(), "kind": rows["kind"].to_numpy(),
        "fraction": np.where(rows["kind"].to_numpy() == CURVE, fraction, 1.0),
        "dnll": rows["dnll"].to_numpy(float), "dnll_even": even, "dnll_odd": odd,
        "key": perturbation_key(rows), "trial": rows["trial"].to_numpy(int),
        "_rank": [order.index(attack_of(a)) for a in rows["attack"]]})
    out["_origin"] = (out["origin"] == "transfer").astype(int)
    out["_kind"] = out["kind"].map(KIND_RANK)
    out = out.sort_values(["model", "example", "_origin", "_kind", "_rank", "fraction", "trial"],
                          ascending=[True, True, True, True, True, False, True], kind="stable")
    copies = out.groupby(["model", "example", "key"])["key"].transform("size")
    out = out.assign(copies=copies.to_numpy()).drop_duplicates(["model", "example", "key"])
    return out[MEMBER_COLUMNS + ["key"]].reset_index(drop=True)


def controls(df: pd.DataFrame, family: str) -> pd.DataFrame:
    """The family's control draws per model and example (CONTROL_COLUMNS; `draw`: attack, source and trial)."""
    _, rows = family_rows(df, family)
    even, odd = _halves(rows)
    draw = [f"{a}/{s}/{t}" for a, s, t in zip(rows["attack"], rows["source_model"], rows["trial"])]
    return pd.DataFrame({"model": rows["model"].to_numpy(), "example": rows["example"].to_numpy(int), "draw": draw,
                         "dnll": rows["dnll"].to_numpy(float), "dnll_even": even, "dnll_odd": odd},
                        columns=CONTROL_COLUMNS)
