"""The worst case: a robustness verdict that stands on the strongest attack the run holds.

One search per model is a lower bound on what an attacker can do, and a weak one where the
search fails against one model only (a weaker gradient, a worse start, less budget), which
then looks "more robust". So, per threat-model family, model and test example, the damage is the
largest over every distinct perturbation of the family found against *either* model
(monollm.results.members: own searches, transfers, restarts, budget-curve points).

Two corrections make that maximum a number a reviewer can trust:

* **Held out from its own selection (cross-fitted).** A maximum chosen on the tokens it reports
  is optimistic, and more so for the noisier model. So an example's member is chosen on the even
  continuation positions and its damage read on the odd ones, and the other way round, and the
  two readings are averaged. The in-sample maximum (chosen and read on all tokens) is kept as the
  labelled, optimistic variant "per-example, in-sample".
* **A control matched to the statistic.** The control is the same statistic over random
  perturbations of the members' shape: for an example with K distinct members, the expected
  (cross-fitted, or in-sample) maximum over K random draws, taken without replacement from the
  family's control draws on that model and example - exactly, over every K-subset
  (`max_weights`), so it carries no sampling noise of its own. An attack no better than random then
  reads 0 above control, in expectation. Where there are fewer draws than members, the draws are
  taken with replacement, and the row says so (`control_short`).

Ties (equal damage on the selecting half) go to the member first in the label order
(members.py). baseline minus monotonic gets a paired 95% bootstrap CI over the examples.

The strictly universal variant chooses one trigger per model, on `attack_opt` (its `opt_dnll`),
among every trigger of the family scored on that model, and reports it once on `test`, above the
mean control (the expected maximum over one draw).

Everything here is a pure function of the attack table (report.attack_table), through the member,
control and per-example tables built once per threat model and family (`families`), which the
table, the verdicts, the examples and the compute curve all read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import gammaln

from monollm import stats
from monollm.results import members as mem
from monollm.results.members import CURVE, FAMILIES, MEMBER_KINDS, family_rows, member_label  # noqa: F401
from monollm.results.verdicts import compare_models

VARIANTS = ("per-example", "per-example, in-sample", "universal")
"""The worst-case table's variants: the cross-fitted per-example maximum (the lead number), the
in-sample one (optimistic), and one trigger per model chosen on attack_opt."""
EXAMPLE_COLUMNS = ["family", "model", "example", "dnll", "member", "control_dnll", "above_control"]
"""Columns of a variant's per-example table."""
DETAIL_COLUMNS = ["family", "model", "example", "members", "control_draws", "control_short", "dnll_in_sample",
                  "member_in_sample", "control_in_sample", "dnll_cross", "member_even", "member_odd", "control_cross"]
"""Columns of `example_table`: both variants per model and example."""


def max_weights(n: int, k: int) -> np.ndarray:
    """(n,) weights w such that sum(w * sorted_ascending(x)) is the expected maximum of k draws from the
    n values x: without replacement (every k-subset equally likely) when k <= n, with replacement
    otherwise. The same weights, applied to another column ordered by x, give the expected value of
    that column at the argmax (the cross-fitted reading)."""
    r = np.arange(1, n + 1, dtype=float)
    if k <= n:
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            logw = gammaln(r) - gammaln(k) - gammaln(r - k + 1) - (gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1))
        return np.where(r >= k, np.exp(logw), 0.0)
    return (r / n) ** k - ((r - 1) / n) ** k


def matched_null(draws: np.ndarray, k: int) -> tuple[float, float]:
    """(in-sample, cross-fitted) expected maximum over k of the control draws (n, 3): columns full,
    even, odd damage. Cross-fitted: chosen on even and read on odd, and the other way, averaged."""
    w = max_weights(len(draws), k)
    full, even, odd = draws[:, 0], draws[:, 1], draws[:, 2]
    in_sample = float(np.sum(w * np.sort(full)))
    cross = (np.sum(w * odd[np.argsort(even, kind="stable")]) + np.sum(w * even[np.argsort(odd, kind="stable")])) / 2
    return in_sample, float(cross)


def _choose(values: np.ndarray) -> int:
    """Index of the largest value; ties to the first (the label order); NaN never chosen."""
    return int(np.nanargmax(values)) if np.isfinite(values).any() else 0


def _example(m: pd.DataFrame, draws: np.ndarray) -> dict:
    """Both variants for one model and example: m its members (label order), draws its controls (n, 3)."""
    full, even, odd = (m[c].to_numpy(float) for c in ("dnll", "dnll_even", "dnll_odd"))
    i, ie, io = _choose(full), _choose(even), _choose(odd)
    ctrl_in, ctrl_cross = matched_null(draws, len(m))
    labels = m["member"].tolist()
    return {"members": len(m), "control_draws": len(draws), "control_short": len(draws) < len(m),
            "dnll_in_sample": float(full[i]), "member_in_sample": labels[i], "control_in_sample": ctrl_in,
            "dnll_cross": float((odd[ie] + even[io]) / 2), "member_even": labels[ie], "member_odd": labels[io],
            "control_cross": ctrl_cross}


def example_table(df: pd.DataFrame, family: str, max_fraction: float = np.inf) -> pd.DataFrame:
    """Per model and example (DETAIL_COLUMNS): the cross-fitted and the in-sample worst member and their
    matched controls, over the members found within `max_fraction` of the searches' budgets (curve
    points up to it; everything else counts as found at the full budget). Empty without members or
    controls."""
    return detail_of(mem.members(df, family), mem.controls(df, family), family, max_fraction)


def detail_of(found: pd.DataFrame, ctrl: pd.DataFrame, family: str, max_fraction: float = np.inf) -> pd.DataFrame:
    """example_table from the family's member table `found` (members.members) and control draws
    `ctrl` (members.controls), built once by the caller."""
    found = found[found["fraction"] <= max_fraction]
    if found.empty or ctrl.empty:
        return pd.DataFrame(columns=DETAIL_COLUMNS)
    pools = {key: g[["dnll", "dnll_even", "dnll_odd"]].to_numpy(float) for key, g in ctrl.groupby(["model", "example"])}
    rows = []
    for (model, example), m in found.groupby(["model", "example"], sort=True):
        if (model, example) not in pools:
            raise ValueError(f"{family}: the control does not cover example {example} on {model}")
        rows.append({"family": family, "model": model, "example": int(example), **_example(m, pools[model, example])})
    return pd.DataFrame(rows, columns=DETAIL_COLUMNS)


def variant_rows(detail: pd.DataFrame, variant: str) -> pd.DataFrame:
    """A per-example variant of `example_table` in EXAMPLE_COLUMNS: "per-example" (cross-fitted; its
    `member` names the member chosen on the even half, and the odd half's where they differ) or
    "per-example, in-sample"."""
    if detail.empty:
        return pd.DataFrame(columns=EXAMPLE_COLUMNS)
    if variant == "per-example, in-sample":
        out = detail.assign(dnll=detail["dnll_in_sample"], member=detail["member_in_sample"],
                            control_dnll=detail["control_in_sample"])
    else:
        both = [a if a == b else f"{a} / {b}" for a, b in zip(detail["member_even"], detail["member_odd"])]
        out = detail.assign(dnll=detail["dnll_cross"], member=both, control_dnll=detail["control_cross"])
    return out.assign(above_control=out["dnll"] - out["control_dnll"])[EXAMPLE_COLUMNS]


def per_example_worst(df: pd.DataFrame, family: str, variant: str = "per-example") -> pd.DataFrame:
    """One row per model x example of `family` (EXAMPLE_COLUMNS) for a per-example `variant`."""
    return variant_rows(example_table(df, family), variant)


def universal_choice(df: pd.DataFrame, family: str) -> pd.DataFrame:
    """The strictly universal variant: per model, the one member trigger with the highest `opt_dnll`
    (mean damage on attack_opt) among those scored on that model, its per-example test dNLL and the
    damage above the family's mean control. EXAMPLE_COLUMNS; empty without `opt_dnll` or members."""
    rows, ctrl = family_rows(df, family)
    if "opt_dnll" in rows.columns:
        rows = rows[np.isfinite(rows["opt_dnll"].astype(float))]
    if "opt_dnll" not in rows.columns or rows.empty or ctrl.empty:
        return pd.DataFrame(columns=EXAMPLE_COLUMNS)
    rows = rows.assign(member=[member_label(r) for r in rows.itertuples()])
    best = set(rows.groupby(["model", "member"])["opt_dnll"].first().groupby("model").idxmax())
    chosen = rows[[(m, name) in best for m, name in zip(rows.model, rows.member)]]
    out = chosen.groupby(["model", "example", "member"], as_index=False)["dnll"].mean()
    out = out.join(ctrl.groupby(["model", "example"])["dnll"].mean().rename("control_dnll"), on=["model", "example"])
    if out["control_dnll"].isna().any():
        raise ValueError(f"{family}: the control does not cover every example the members were scored on")
    out = out.assign(family=family, above_control=out["dnll"] - out["control_dnll"])
    return out[EXAMPLE_COLUMNS].sort_values(["model", "example"]).reset_index(drop=True)


def by_threat_model(df: pd.DataFrame, threat_models) -> list[tuple[str, pd.DataFrame, str]]:
    """(threat model, its rows, the suffix of its findings keys) for each of `threat_models`
    (attack.tokens): the first's keys are the family names, the others' "<family> [<tokens>]".
    A table without a `tokens` column (made before it existed) is all the first's."""
    if "tokens" not in df.columns:
        return [(threat_models[0], df, "")]
    return [(tm, df[df.tokens == tm], "" if i == 0 else f" [{tm}]") for i, tm in enumerate(threat_models)]


@dataclass(frozen=True)
class Family:
    """One threat model's family, with its per-example table built once: what `table`, `verdicts`,
    `examples` and `compute_curve` all read."""
    threat_model: str
    suffix: str
    """Of its findings keys: "" for the first threat model, " [<tokens>]" for the others."""
    family: str
    rows: pd.DataFrame
    """The threat model's attack rows (every family's)."""
    members: pd.DataFrame
    """members.members of the family: every distinct perturbation per model and example."""
    controls: pd.DataFrame
    """members.controls of the family: its control draws per model and example."""
    detail: pd.DataFrame
    """example_table: both per-example variants and their matched controls."""

    @property
    def key(self) -> str:
        """The family's key in findings["worst_case"] and findings["compute"]."""
        return self.family + self.suffix


def families(df: pd.DataFrame, threat_models) -> list[Family]:
    """Every threat model's families (by_threat_model x FAMILIES), each with its member and control
    tables and its per-example table, computed once."""
    out = []
    for tm, rows, suffix in by_threat_model(df, threat_models):
        for family in FAMILIES:
            found, ctrl = mem.members(rows, family), mem.controls(rows, family)
            out.append(Family(tm, suffix, family, rows, found, ctrl, detail_of(found, ctrl, family)))
    return out


def _variants(fam: Family, with_in_sample: bool = True) -> list[tuple[str, pd.DataFrame, dict]]:
    """(variant, its per-example table, per model {"members", "control_draws", "control_short"}) of a family."""
    detail = fam.detail
    counts = {m: {"members": int(g["members"].median()), "control_draws": int(g["control_draws"].min()),
                  "control_short": bool(g["control_short"].any())} for m, g in detail.groupby("model")}
    out = [("per-example", variant_rows(detail, "per-example"), counts)]
    if with_in_sample:
        out.append(("per-example, in-sample", variant_rows(detail, "per-example, in-sample"), counts))
    if fam.family == "universal triggers":
        out.append(("universal", universal_choice(fam.rows, fam.family), {m: {"members": 1} for m in counts}))
    return out


def carried(members: pd.Series) -> pd.Series:
    """Examples each member carried, most first: a cross-fitted example chosen differently on its two
    halves ("a / b") counts half for each."""
    parts = [(name, 1.0 / len(split)) for m in members for split in [m.split(" / ")] for name in split]
    counts = pd.Series([w for _, w in parts], index=[n for n, _ in parts], dtype=float)
    return counts.groupby(level=0).sum().sort_values(ascending=False, kind="stable")


def _search_passes(df: pd.DataFrame, family: str, model: str) -> int:
    """Forward passes the family's own searches spent against `model` (each attack's search once)."""
    own = df[df.attack.map(mem.attack_of).isin(FAMILIES[family]) & (df.kind == "attack") & (df.model == model)
             & (df.source_model == model)]
    if own.empty or "forward_passes" not in own.columns:
        return 0
    return int(own.groupby("attack")["forward_passes"].first().sum())


def _summary_rows(df, ex, counts, family, variant, threat_model, n_boot, seed) -> list[dict]:
    """One worst_case row per model of one family and variant."""
    rows = []
    for model, g in ex.groupby("model", sort=True):
        lo, hi = stats.bootstrap_ci(g["above_control"].to_numpy(float), n_boot, seed)
        by = carried(g["member"])
        rows.append({"threat_model": threat_model, "family": family, "variant": variant, "model": model,
                     "examples": len(g), "dnll": float(g["dnll"].mean()), "control_dnll": float(g["control_dnll"].mean()),
                     "above_control": float(g["above_control"].mean()), "ci_low": lo, "ci_high": hi,
                     "members": counts.get(model, {}).get("members", 0),
                     "control_draws": counts.get(model, {}).get("control_draws", 0),
                     "control_short": counts.get(model, {}).get("control_short", False),
                     "forward_passes": _search_passes(df, family, model),
                     "carried_by": ", ".join(f"{m} ({n:g})" for m, n in by.items()),
                     "top_member": by.index[0], "top_examples": float(by.iloc[0])})
    return rows


def table(built: list[Family], n_boot: int, seed: int) -> pd.DataFrame:
    """The worst-case table of the families `built` (families()): one row per threat model (attack.tokens)
    x family x variant (VARIANTS) x model, with the examples, mean worst dNLL, the matched control, the
    damage above it with its 95% bootstrap CI, the distinct members per example (`members`, median),
    the control draws (`control_draws`, fewest on an example; `control_short` where fewer than the
    members), the forward passes the family's own searches spent on the model, and which members
    carried the worst case (`carried_by`: member (examples); `top_member` and `top_examples`: the one
    that carried most)."""
    rows = []
    for fam in built:
        for variant, ex, counts in _variants(fam):
            rows += _summary_rows(fam.rows, ex, counts, fam.family, variant, fam.threat_model, n_boot, seed)
    return pd.DataFrame(rows)


def examples(built: list[Family]) -> pd.DataFrame:
    """Every threat model's and family's per-example worst case (example_table), stacked: which member
    carried each example, on each half and in-sample, and the matched controls."""
    return pd.concat([fam.detail.assign(threat_model=fam.threat_model) for fam in built], ignore_index=True)


def verdicts(built: list[Family], n_boot: int, seed: int) -> dict:
    """Per threat model and family of `built` ("<family>", "<family> [<tokens>]" after the first threat
    model, "<family>, universal..." for the strict variant): baseline minus monotonic of the
    cross-fitted worst-case damage above the matched control, paired by example, with its CI and
    verdict (verdicts.compare_models), which members carried it and the passes of the family's own
    searches per model, and the family and threat model it belongs to. The in-sample variant is in
    `table` only. Families without both models are left out."""
    out = {}
    for fam in built:
        for variant, ex, _ in _variants(fam, with_in_sample=False):
            comp = _verdict(fam.rows, ex, fam.family, n_boot, seed)
            if comp:
                key = fam.family + ("" if variant == "per-example" else f", {variant}") + fam.suffix
                out[key] = {**comp, "threat_model": fam.threat_model, "family": fam.family}
    return out


def _verdict(df: pd.DataFrame, ex: pd.DataFrame, family: str, n_boot: int, seed: int) -> dict:
    wide = ex.pivot(index="example", columns="model", values="above_control")
    if not {"baseline", "monotonic"} <= set(wide.columns) or wide.isna().any().any():
        return {}
    comp = compare_models(wide, n_boot, seed)
    comp["carried_by"] = {m: carried(ex[ex.model == m]["member"]).to_dict() for m in ("baseline", "monotonic")}
    comp["forward_passes"] = {m: _search_passes(df, family, m) for m in ("baseline", "monotonic")}
    return comp


CURVE_TABLE_COLUMNS = ["family", "model", "example", "fraction", "passes", "above_control"]


def compute_curve(fam: Family) -> pd.DataFrame:
    """The family's worst case against attack compute: per budget fraction f of the searches' curves,
    model and example, the cross-fitted worst case over the members found within f of every search's
    passes (both models' searches: a transfer at f was found with the same passes), above its matched
    control, and `passes`, the forward passes the family's own searches had spent on that model at f.
    Empty without budget-curve rows."""
    if "budget_fraction" not in fam.rows.columns:
        return pd.DataFrame(columns=CURVE_TABLE_COLUMNS)
    rows, _ = family_rows(fam.rows, fam.family)
    own = rows[(rows.kind == CURVE) & (rows.model == rows.source_model)]
    parts = []
    for f in sorted(own["budget_fraction"].dropna().unique()):
        at = own[own.budget_fraction == f].groupby(["model", "attack"])["forward_passes"].first().groupby("model").sum()
        ex = variant_rows(detail_of(fam.members, fam.controls, fam.family, max_fraction=f), "per-example")
        parts.append(ex.assign(fraction=float(f), passes=ex["model"].map(at).fillna(0).astype(int)))
    if not parts:
        return pd.DataFrame(columns=CURVE_TABLE_COLUMNS)
    return pd.concat(parts, ignore_index=True)[CURVE_TABLE_COLUMNS]
