"""The worst case, the diagnostics and the budget curves as a reader sees them: the same tables
and lines for the console summary (results.client) and the experiment card (results.cards)."""
from __future__ import annotations

import pandas as pd

from monollm.results import diagnostics

WORST_CASE_TITLE = ("Worst case per threat-model family over every distinct perturbation found against either model "
                    "(dNLL in nats per continuation token above a control of the same statistic, 95% bootstrap CI "
                    "over examples; one seed; passes: forward passes of the family's own searches on the model). "
                    "Families: triggers (universal triggers), edits (per-input edits), @tokens for a threat model "
                    "after the first. per-example: each example's member chosen on half of its scored tokens and "
                    "read on the other half (the lead number); in-sample: chosen and read on all of them "
                    "(optimistic); universal: one trigger per model, chosen on attack_opt. above: above control; "
                    "carried most by: the member worst on the most examples (how many):")
COMPUTE_TITLE = ("Attack compute: each family's worst case (cross-fitted, above its matched control) over the "
                 "members found within each fraction of the searches' forward passes; findings[\"compute\"] "
                 "holds the passes each model needs per target and their ratio:")
CURVE_TITLE = "Budget curves (the best-so-far perturbation at a fraction of each search's forward passes, on test):"


def _ci(lo: float, hi: float) -> str:
    return f"[{lo:+.3f}, {hi:+.3f}]"


def worst_case_view(table: pd.DataFrame) -> pd.DataFrame:
    """The worst_case artifact with its interval as one text column and the member that carried
    the most examples (`top`, e.g. "uat transfer (40)": its attack, kind and examples)."""
    if table is None or not len(table):
        return pd.DataFrame()
    # attack and kind only ("from <the other model>" goes without saying on a transfer): 120 columns; a
    # cross-fitted example chosen differently on its two halves counts half for each member (22.5)
    # the threat model goes with the family (triggers@printable), not with every member's attack
    top = [f"{m.split()[0].partition('@')[0]} {m.split()[1]} ({float(k):g})"
           for m, k in zip(table["top_member"], table["top_examples"])]
    first = table["threat_model"].iloc[0] if "threat_model" in table.columns else None
    return table.assign(ci=[_ci(lo, hi) for lo, hi in zip(table["ci_low"], table["ci_high"])], top=top,
                        passes=[_count(p) for p in table["forward_passes"]],
                        shown_variant=[SHORT_VARIANTS.get(v, v) for v in table["variant"]],
                        shown_family=[SHORT_FAMILIES.get(f, f) + ("" if first is None or tm == first else f"@{tm}")
                                      for f, tm in zip(table["family"], table.get("threat_model", table["family"]))])


SHORT_VARIANTS = {"per-example, in-sample": "in-sample"}
SHORT_FAMILIES = {"universal triggers": "triggers", "per-input edits": "edits"}
"""Variant and family names shortened in the tables (the title says what each is), so that the console's
table fits 120 columns whatever member carried the most examples."""


def _count(n: int) -> str:
    """38400 -> '38.4k', 1900000 -> '1.9M'."""
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k" if n >= 1e3 else str(n)


WORST_CASE_COLUMNS = {"shown_family": ("family", None), "shown_variant": ("variant", None), "model": ("model", None),
                      "above_control": ("above", "+.3f"), "ci": ("CI", None), "passes": ("passes", None),
                      "top": ("carried most by", None)}
"""Columns of worst_case_view on the console (120 columns): column -> (title, format or None for text)."""
CARD_COLUMNS = {"threat_model": ("tokens", None), **WORST_CASE_COLUMNS, "control_dnll": ("control dNLL", "+.3f"),
                "members": ("members", "d")}
"""The card's wider view of the same table (the worst dNLL itself is above + control dNLL); every
member's share (`carried_by`, a long list) goes to the lines under it (`carried_by_lines`), so that the
rows keep one line's height. `card_columns` leaves out the tokens of a run with one threat model."""


def card_columns(worst: pd.DataFrame) -> dict:
    """CARD_COLUMNS, without the threat model's column where the table holds one threat model (it is
    in the answer): the card's table then fits a 1400-pixel window."""
    one = "threat_model" not in worst.columns or worst["threat_model"].nunique() <= 1
    return {k: v for k, v in CARD_COLUMNS.items() if not (one and k == "threat_model")}
CARRIED_BY_TITLE = "Carried by: per row of the table, each member and the examples on which it did the most damage:"


def carried_by_lines(worst: pd.DataFrame) -> list[str]:
    """One line per row of the worst-case table that names its members: tokens, family, variant,
    model, then `carried_by` ([] for a table without the column)."""
    if "carried_by" not in worst.columns:
        return []
    return [f"{r.threat_model}, {r.family}, {r.variant}, {r.model}: {r.carried_by}" for r in worst.itertuples()]


def curve_view(curve: pd.DataFrame) -> pd.DataFrame:
    """The budget_curve artifact with its interval as one text column."""
    if curve is None or not len(curve):
        return pd.DataFrame()
    return curve.assign(ci=[_ci(lo, hi) for lo, hi in zip(curve["ci_low"], curve["ci_high"])])


CURVE_COLUMNS = {"attack": ("attack", None), "model": ("model", None), "fraction": ("budget", ".3g"),
                 "forward_passes": ("passes", "d"), "dnll": ("dNLL", "+.3f"), "ci": ("CI", None)}


def _flag_detail(flag: str, v: dict) -> str:
    if flag == "weak_guidance":
        return f"Spearman {v['spearman']:+.2f}"
    if flag == "hit_budget_cap":
        return f"ended at the cap, {v['budget']:,} passes"
    if flag == "not_converged":
        return f"last doubling {v['rise']:+.3f} {_ci(v['ci_low'], v['ci_high'])}, paired"
    extra = (f" at {v['gradient_free_forward_passes']} vs {v['forward_passes']} passes"
             if flag == "gradient_free_beats_gradient" else "")
    return f"{v['diff']:+.3f} {_ci(v['ci_low'], v['ci_high'])}{extra}"


def diagnostic_lines(findings: dict) -> list[str]:
    """One line per attack and model with a flag raised (diagnostics.FLAGS), with the numbers
    behind it; one line saying none was raised otherwise; [] for a run without diagnostics."""
    diag = findings.get("diagnostics")
    if diag is None:
        return []
    lines = []
    for attack, models in diag.items():
        for model, flags in models.items():
            raised = [f"{f} ({_flag_detail(f, v)})" for f, v in flags.items() if v.get("flag")]
            if raised:
                lines.append(f"{attack} on {model}: " + "; ".join(raised))
    unknown = sorted({f for models in diag.values() for flags in models.values() for f, v in flags.items()
                      if v.get("flag") is None})
    head = ("Masking diagnostics (a flag makes an attack's own verdict on that model no evidence of robustness):"
            if lines else "Masking diagnostics: no flag raised (" + ", ".join(diagnostics.FLAGS) + ").")
    tail = [f"not computable for some attack or model: {', '.join(unknown)}"] if unknown else []
    return [head] + lines + tail


COMPUTE_COLORS = {"baseline": "#4c78a8", "monotonic": "#e45756"}


def compute_chart(curve: pd.DataFrame, family: str, targets: dict, n_boot: int, seed: int) -> dict:
    """Vega-Lite: the family's worst-case damage above control (mean over examples, 95% bootstrap band)
    against forward passes per model on a log axis, both models, the targets as dotted rules.
    curve: worst_case.compute_curve's table of one family and threat model."""
    from monollm.results.card_sections import VEGA, clean
    from monollm.results.compute import curve_bands

    bands = clean(curve_bands(curve, n_boot, seed).to_dict("records"))
    x = {"field": "passes", "type": "quantitative", "scale": {"type": "log"}, "title": "forward passes per model"}
    color = {"field": "model", "type": "nominal", "scale": {"domain": list(COMPUTE_COLORS),
                                                            "range": list(COMPUTE_COLORS.values())}}
    y = {"field": "above_control", "type": "quantitative", "title": "damage above control (nats/token)"}
    layers = [{"mark": {"type": "area", "opacity": 0.2},
               "encoding": {"x": x, "y": {**y, "field": "ci_low"}, "y2": {"field": "ci_high"}, "color": color}},
              {"mark": {"type": "line", "point": True}, "encoding": {"x": x, "y": y, "color": color}}]
    if targets:
        layers.append({"data": {"values": [{"target": t, "name": k} for k, t in targets.items()]},
                       "mark": {"type": "rule", "strokeDash": [2, 3], "color": "#555"},
                       "encoding": {"y": {"field": "target", "type": "quantitative"}}})
    return {"$schema": VEGA, "title": f"{family}: worst case against attack compute (95% CI; dotted: targets)",
            "height": 240, "data": {"values": bands}, "layer": layers}


def compute_charts(data, n_boot: int = 1000) -> list[dict]:
    """One compute chart per family of the first threat model (data.compute_curve); [] for a run without it."""
    curve, found = getattr(data, "compute_curve", None), data.findings.get("compute") or {}
    if curve is None or not len(curve):
        return []
    first = curve[curve.threat_model == curve["threat_model"].iloc[0]]
    return [compute_chart(g, family, {k: e["target"] for k, e in found.get(family, {}).items()}, n_boot,
                          data.resolved_config["seed"])
            for family, g in first.groupby("family", sort=False)]


def card_section(data, table) -> list:
    """The worst case per family, the masking diagnostics and the budget curves ([] for a run made
    before them): the verdict's own evidence, right after the answer. `table(df)` makes a card
    table of a DataFrame."""
    from metaflow.cards import Markdown, VegaChart

    worst = worst_case_view(getattr(data, "worst_case", None))
    if not len(worst):
        return []
    curve = curve_view(getattr(data, "budget_curve", None))
    lines = diagnostic_lines(data.findings)
    out = [Markdown("## Worst case\n" + WORST_CASE_TITLE), table(_shown(worst, card_columns(worst)))]
    carried = carried_by_lines(worst)
    out += [Markdown(CARRIED_BY_TITLE + "\n" + "\n".join(f"* {line}" for line in carried))] if carried else []
    out += [Markdown(lines[0] + "\n" + "\n".join(f"* {line}" for line in lines[1:]))] if lines else []
    charts = compute_charts(data)
    out += [Markdown(COMPUTE_TITLE)] + [VegaChart(c) for c in charts] if charts else []
    return out + ([Markdown(CURVE_TITLE), table(_shown(curve, CURVE_COLUMNS))] if len(curve) else [])


def _shown(df: pd.DataFrame, columns: dict) -> pd.DataFrame:
    """df's `columns` (column -> (title, format)), formatted and titled."""
    return pd.DataFrame({title: [v if fmt is None else format(v, fmt) for v in df[c]] for c, (title, fmt) in columns.items()})
