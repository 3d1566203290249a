"""Masking diagnostics: when an attack's own verdict is no evidence of robustness.

A model can look robust because the attack failed against it. The field's checklists (Athalye
et al. 2018, "Obfuscated gradients"; Carlini et al. 2019, "On evaluating adversarial
robustness"; Tramer et al. 2020, "On adaptive attacks") name the signs, and each is a flag per
attack and model, computed from the attack table:

* `transfer_beats_attack`: the perturbation found on the other model damages this model more
  than this model's own search did (paired by example, 95% bootstrap CI of the difference
  above 0);
* `gradient_free_beats_gradient`: the family's gradient-free search (GRADIENT_FREE: `random_search`
  for triggers, `random_flips` for per-input edits) damages this model more than the
  gradient-ranked search at equal forward passes (at most EQUAL_PASSES times the gradient
  search's; paired CI above 0), under the same threat model;
* `not_converged`: the last doubling of the search's budget still raised the damage: the paired
  rise per example from the budget curve's second-to-last point (half the passes) to its last
  (all of them), scored on test on the searched model, has a 95% bootstrap CI above 0 (a test,
  not a threshold on the size of the rise);
* `weak_guidance`: the first-order estimate's Spearman rho with the exact loss change of a
  swap is below report.WEAK_GUIDANCE;
* `hit_budget_cap`: with `attack.budget = "auto"`, the search doubled its budget up to
  `attack.max_budget` without its last doubling becoming insignificant (on attack_opt): the cap,
  not convergence, ended it.

A flag is True, False, or None where it cannot be computed (no transfer rows, no
gradient-free search at equal passes, no budget curve, guidance not measured).

A family's worst-case verdict is flagged too (`family_flags`), on the model it favours: when the
family has no gradient-free member on that model, and when its strongest member (the attack that
carried most of that model's examples) is not converged there.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from monollm import stats
from monollm.attacks import attack_of
from monollm.results.report import PRIMARY_CONTROL, WEAK_GUIDANCE
from monollm.results.members import CURVE, FAMILIES

GRADIENT_FREE = {"uat": "random_search", "gcg": "random_search", "hotflip": "random_flips"}
"""Gradient-ranked search -> the gradient-free search of its family it is checked against."""
EQUAL_PASSES = 1.1
"""random_search counts as run at equal forward passes when it spent at most this factor of the
gradient search's passes (budgets are met up to one step's overshoot)."""
FLAGS = ("transfer_beats_attack", "gradient_free_beats_gradient", "not_converged", "weak_guidance", "hit_budget_cap")
CURVE_COLUMNS = ["attack", "model", "fraction", "forward_passes", "examples", "dnll", "ci_low", "ci_high",
                 "control_dnll", "above_control"]


def _per_example(rows: pd.DataFrame) -> pd.Series:
    return rows.groupby("example")["dnll"].mean()


def _own(df: pd.DataFrame, attack: str, model: str, kind: str = "attack") -> pd.DataFrame:
    return df[(df.attack == attack) & (df.kind == kind) & (df.model == model) & (df.source_model == model)]


def budget_curve(df: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Damage versus budget: one row per attack x model x budget fraction (the best-so-far trigger
    at that fraction of the search's forward passes, scored on test on the model it was searched
    on), with the passes spent, the mean dNLL and its 95% bootstrap CI, and the attack's own
    primary control on that model and the damage above it. Empty without curve rows."""
    if "budget_fraction" not in df.columns:  # a table made before the curves existed
        return pd.DataFrame(columns=CURVE_COLUMNS)
    curve, rows = df[(df.kind == CURVE) & (df.model == df.source_model)], []
    for (attack, model, fraction), g in curve.groupby(["attack", "model", "budget_fraction"], sort=True):
        d = _per_example(g).to_numpy(float)
        lo, hi = stats.bootstrap_ci(d, n_boot, seed)
        ctrl = df[(df.attack == attack) & (df.kind == PRIMARY_CONTROL) & (df.model == model)]
        control = float(ctrl["dnll"].mean()) if len(ctrl) else np.nan
        rows.append({"attack": attack, "model": model, "fraction": float(fraction),
                     "forward_passes": int(g["forward_passes"].iloc[0]), "examples": len(d), "dnll": float(d.mean()),
                     "ci_low": lo, "ci_high": hi, "control_dnll": control, "above_control": float(d.mean()) - control})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def not_converged(df: pd.DataFrame, attack: str, model: str, n_boot: int, seed: int) -> dict:
    """{"flag", "rise", "ci_low", "ci_high", "fractions"}: the paired rise per example of the damage
    over the last doubling of the search's budget (the budget curve's two largest fractions, on the
    searched model), with its 95% bootstrap CI; flagged when the CI lies above 0. flag None with
    fewer than two curve points."""
    if "budget_fraction" not in df.columns:
        return {"flag": None}
    own = _own(df, attack, model, CURVE)
    fractions = sorted(own["budget_fraction"].unique())
    if len(fractions) < 2:
        return {"flag": None}
    before, last = (_per_example(own[own.budget_fraction == f]) for f in fractions[-2:])
    rise = (last - before).dropna().to_numpy(float)
    lo, hi = stats.bootstrap_ci(rise, n_boot, seed)
    return {"flag": bool(lo > 0), "rise": float(rise.mean()), "ci_low": lo, "ci_high": hi,
            "fractions": [float(f) for f in fractions[-2:]]}


def _beats(a: pd.DataFrame, b: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """{"flag", "diff", "ci_low", "ci_high"}: a's per-example damage minus b's, paired by example;
    flag when the CI lies above 0. flag None when either is empty."""
    if a.empty or b.empty:
        return {"flag": None}
    diff = (_per_example(a) - _per_example(b)).dropna().to_numpy(float)
    lo, hi = stats.bootstrap_ci(diff, n_boot, seed)
    return {"flag": bool(lo > 0), "diff": float(diff.mean()), "ci_low": lo, "ci_high": hi}


def transfer_beats_attack(df: pd.DataFrame, attack: str, model: str, n_boot: int, seed: int) -> dict:
    """The other model's perturbation against this model's own search, on this model (`_beats`)."""
    transfer = df[(df.attack == attack) & (df.kind == "transfer") & (df.model == model)]
    return _beats(transfer, _own(df, attack, model), n_boot, seed)


def gradient_free_beats_gradient(df: pd.DataFrame, attack: str, model: str, n_boot: int, seed: int) -> dict:
    """The family's gradient-free search (GRADIENT_FREE) against a gradient-ranked search on this model,
    at equal forward passes (`_beats`, plus both searches' passes); flag None for a search not ranked
    by gradient, one without a gradient-free twin, or without that twin at equal passes."""
    twin = GRADIENT_FREE.get(attack_of(attack))
    if twin is None:
        return {"flag": None}
    # the gradient-free search of the same threat model: "random_search@printable" beside "uat@printable"
    own, free = _own(df, attack, model), _own(df, twin + attack[len(attack_of(attack)):], model)
    if own.empty or free.empty or own["ranking"].iloc[0] != "gradient":
        return {"flag": None}
    passes = {"forward_passes": int(own["forward_passes"].iloc[0]),
              "gradient_free_forward_passes": int(free["forward_passes"].iloc[0])}
    if passes["gradient_free_forward_passes"] > EQUAL_PASSES * passes["forward_passes"]:
        return {"flag": None, **passes}
    return {**_beats(free, own, n_boot, seed), **passes}


def weak_guidance(df: pd.DataFrame, attack: str, model: str) -> dict:
    """{"flag", "spearman"}: the search's measured guidance on this model; flag None where not measured."""
    own = _own(df, attack, model)
    rho = float(own["guidance_spearman"].iloc[0]) if len(own) and "guidance_spearman" in own.columns else np.nan
    return {"flag": bool(rho < WEAK_GUIDANCE), "spearman": rho} if np.isfinite(rho) else {"flag": None}


def hit_budget_cap(df: pd.DataFrame, attack: str, model: str) -> dict:
    """{"flag", "budget", "converged_at"}: whether the search's auto budget ended at its cap (the rows'
    `budget_capped`); flag None for a search without an auto budget (no `budget_capped` column, or a
    search that neither converged nor hit a cap: a fixed budget)."""
    own = _own(df, attack, model)
    if own.empty or "budget_capped" not in own.columns:
        return {"flag": None}
    capped, at = bool(own["budget_capped"].iloc[0]), int(own["budget_converged_at"].iloc[0])
    if not capped and not at:
        return {"flag": None}
    return {"flag": capped, "budget": int(own["budget"].iloc[0]), "converged_at": at}


def diagnostics(df: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """attack -> model -> flag -> {"flag": True/False/None, and the numbers behind it}, for every
    attack that searched (its own rows carry a `ranking`) on every model it searched."""
    if not len(df) or "ranking" not in df.columns:
        return {}
    searched = df[(df.kind == "attack") & (df.model == df.source_model) & (df["ranking"].fillna("") != "")]
    out: dict = {}
    for (attack, model), _ in searched.groupby(["attack", "model"], sort=False):
        out.setdefault(attack, {})[model] = {
            "transfer_beats_attack": transfer_beats_attack(df, attack, model, n_boot, seed),
            "gradient_free_beats_gradient": gradient_free_beats_gradient(df, attack, model, n_boot, seed),
            "not_converged": not_converged(df, attack, model, n_boot, seed),
            "weak_guidance": weak_guidance(df, attack, model),
            "hit_budget_cap": hit_budget_cap(df, attack, model)}
    return out


def raised(diag: dict, attack: str, model: str) -> list[str]:
    """The flags set (True) for `attack` on `model`."""
    return [f for f, v in diag.get(attack, {}).get(model, {}).items() if v.get("flag")]


def undermining(diag: dict, attack: str, verdict: str) -> list[str]:
    """The flags that make `attack`'s own verdict no evidence of robustness, as "flag on model":
    those of the model it calls more robust, or of either model when it finds no difference
    (a failed search against one model can hide a real difference)."""
    return [f"{flag} on {m}" for m in favoured(verdict) for flag in raised(diag, attack, m)]


def favoured(verdict: str) -> tuple[str, ...]:
    """The models a verdict calls more robust: either model where it finds no difference (a failed
    search against one model can hide a real difference)."""
    return {"monotonic more robust": ("monotonic",), "baseline more robust": ("baseline",)}.get(
        verdict, ("baseline", "monotonic"))


def family_flags(df: pd.DataFrame, diag: dict, family: str, comp: dict, suffix: str = "") -> list[str]:
    """What makes a family's worst-case verdict `comp` (worst_case.verdicts) no evidence of robustness,
    as "flag on model", on the model(s) it favours: "no_gradient_free_member" when none of the
    family's gradient-free searches ran against that model under this threat model (`suffix`: the
    branch suffix, "" or "@printable"), and "not_converged (<attack>)" when the attack that carried
    most of that model's examples is not converged there."""
    free = {GRADIENT_FREE[a] + suffix for a in FAMILIES[family] if a in GRADIENT_FREE}
    out = []
    for model in favoured(comp["verdict"]):
        if not any(len(_own(df, a, model)) for a in free):
            out.append(f"no_gradient_free_member on {model}")
        carried = comp.get("carried_by", {}).get(model) or {}
        if carried:  # a transfer's search ran on the other model: its convergence is checked there
            label = max(carried, key=carried.get)
            top, searched = label.split(" ")[0], label.rsplit(" from ", 1)[1] if " from " in label else model
            if diag.get(top, {}).get(searched, {}).get("not_converged", {}).get("flag"):
                out.append(f"not_converged ({top} on {searched}) on {model}")
    return out