"""A sweep's report: per cell the perplexity cost, the robustness above control per attack and
the downstream tasks' cost (mean and 95% t-interval across seeds), and contrasts between the values of each grid key,
paired by seed, per combination of the other keys' values and pooled over them; as CSV files
and one standalone HTML file with a forest plot (inline SVG: no script, no network, it renders
in any browser).

The numbers are those of `compare.key_numbers`; the functions here take plain tables, so the
statistics are tested on synthetic numbers without Metaflow.
"""
from __future__ import annotations

import html
import math
import os

import pandas as pd

from monollm import stats

NLL_COST = "NLL cost monotonic - baseline (nats/token)"
PPL_RATIO = "perplexity ratio monotonic/baseline"
ABOVE = "dNLL above control "  # + "<attack> baseline - monotonic"
WORST = "worst case above control "  # + "<family> baseline - monotonic" (compare.WORST_CASE)
DOWNSTREAM = "downstream "  # + "<task> <metric> monotonic - baseline"
READING = {NLL_COST: "positive: the constraint costs perplexity",
           PPL_RATIO: "above 1: the constraint costs perplexity",
           ABOVE: "positive: the monotonic model is damaged less than the baseline, beyond random control",
           WORST: "positive: the monotonic model is damaged less than the baseline in the worst case over every "
                  "perturbation found, beyond random control",
           DOWNSTREAM: "negative: the constraint costs accuracy on the task"}


def pick(numbers: dict) -> dict:
    """The numbers a sweep reports, from one run's `compare.key_numbers`: the perplexity cost
    (NLL cost and perplexity ratio); per threat-model family, the worst case above control, and per
    attack, damage above control, baseline minus monotonic;
    per downstream task, the constraint's cost (monotonic minus baseline, where the run has tasks)."""
    worst = {k: v for k, v in numbers.items() if k.startswith(WORST) and k.endswith(" baseline - monotonic")}
    above = {k: v for k, v in numbers.items() if k.startswith(ABOVE) and k.endswith(" baseline - monotonic")}
    cost = {k: v for k, v in numbers.items() if k.startswith(DOWNSTREAM) and k.endswith(" monotonic - baseline")}
    return {NLL_COST: numbers[NLL_COST], PPL_RATIO: numbers[PPL_RATIO], **dict(sorted(worst.items())),
            **dict(sorted(above.items())),
            **dict(sorted(cost.items()))}


def metric_columns(per_run: pd.DataFrame) -> list[str]:
    """per_run's metric columns, in the order `pick` gives them."""
    return [c for c in per_run.columns if c not in ("cell", "seed", "run")]


def _interval(x) -> dict:
    mean, lo, hi = stats.t_interval(x)
    return {"n": len(x), "mean": mean, "ci_low": lo, "ci_high": hi}


def cell_table(per_run: pd.DataFrame, cells) -> pd.DataFrame:
    """One row per cell and metric: the grid values, n seeds, mean and 95% t-interval across seeds.

    per_run: one row per (cell, seed) with columns cell, seed and one per metric;
    cells: the sweep's cells (monollm.experiments.plan.Cell), in order."""
    rows = []
    for cell in cells:
        mine = per_run[per_run.cell == cell.name]
        for metric in metric_columns(per_run):
            x = mine[metric].dropna().to_numpy(float)
            rows.append({"cell": cell.name, **dict(cell.values), "metric": metric, **_interval(x)})
    keys = [k for k, _ in cells[0].values] if cells else []
    return pd.DataFrame(rows, columns=["cell", *keys, "metric", "n", "mean", "ci_low", "ci_high"])


PER_COMBINATION, POOLED = "per combination", "pooled"
"""The `scope` of a contrast row: the other grid keys held at one combination of values, or
averaged over all of their combinations."""


def contrasts(per_run: pd.DataFrame, cells, grid: dict) -> pd.DataFrame:
    """For each grid key with several values, each later value against the first listed.

    Per combination (scope "per combination"): the other grid keys held at one combination of
    values; per metric, the first value's number minus the later value's for every seed both
    cells have, then the mean and 95% t-interval across seeds of those differences.

    Pooled (scope "pooled", only where the grid has other keys): the same difference, paired by
    seed and by the other keys' values, averaged over every combination of the other keys' values
    within each seed; then the mean and 95% t-interval across seeds of that per-seed average.
    Held fixed in each difference: the seed and every other key's value; a seed counts only
    where it has the difference at every combination (so each seed averages the same set of
    combinations, with equal weight).

    Columns: key, first, value, scope, held (the other keys' values; for a pooled row, the values
    averaged over), metric, n, mean, ci_low, ci_high, seeds (the paired seeds, comma-separated)."""
    by_values = {cell.values: cell.name for cell in cells}
    table = per_run.set_index(["cell", "seed"])
    rows = []
    for key, values in grid.items():
        others = [k for k in grid if k != key]
        for value in values[1:]:
            diffs = {}  # metric -> [seed -> difference, one series per combination of the other keys]
            for cell in cells:
                if dict(cell.values)[key] != value:
                    continue
                first = by_values[tuple((k, values[0] if k == key else v) for k, v in cell.values)]
                held = ", ".join(f"{k}={v}" for k, v in cell.values if k != key)
                for metric in metric_columns(per_run):
                    d = _paired(table, first, cell.name, metric)
                    diffs.setdefault(metric, []).append(d)
                    rows.append(_row(key, values[0], value, PER_COMBINATION, held, metric, d))
            if others:
                held = "mean over " + "; ".join(f"{k} in {list(grid[k])}" for k in others)
                for metric, series in diffs.items():
                    pooled = pd.concat(series, axis=1).dropna().mean(axis=1)  # seeds with every combination
                    rows.append(_row(key, values[0], value, POOLED, held, metric, pooled))
    columns = ["key", "first", "value", "scope", "held", "metric", "n", "mean", "ci_low", "ci_high", "seeds"]
    return pd.DataFrame(rows, columns=columns)


def _row(key, first, value, scope: str, held: str, metric: str, diffs: pd.Series) -> dict:
    return {"key": key, "first": first, "value": value, "scope": scope, "held": held, "metric": metric,
            **_interval(diffs.to_numpy(float)), "seeds": ",".join(map(str, diffs.index))}


def _paired(table: pd.DataFrame, a: str, b: str, metric: str) -> pd.Series:
    """seed -> a's metric minus b's, for the seeds where both have it (sorted by seed)."""
    def of(cell):
        return table.xs(cell, level="cell")[metric] if cell in table.index.get_level_values("cell") else pd.Series()
    both = pd.concat({"a": of(a), "b": of(b)}, axis=1).dropna().sort_index()
    return both["a"] - both["b"]


def verdict(lo: float, hi: float) -> str:
    """What a 95% interval of a difference supports."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no interval: fewer than two seeds"
    if lo > 0:
        return "above 0"
    if hi < 0:
        return "below 0"
    return "includes 0"


def reading(metric: str) -> str:
    """How to read a metric's sign."""
    return next((text for prefix, text in READING.items() if metric.startswith(prefix)), "")


def forest_svg(table: pd.DataFrame, metric: str, width: int = 640) -> str:
    """A forest plot of one metric's contrasts: a row per contrast, its mean (a dot) and 95%
    t-interval (a line), a dashed line at 0. table: `contrasts`' rows."""
    rows = table[table.metric == metric].reset_index(drop=True)
    label_w, row_h, top = 260, 24, 30
    height = top + row_h * len(rows) + 24
    ends = [v for v in pd.concat([rows["mean"], rows["ci_low"], rows["ci_high"]]) if math.isfinite(v)] + [0.0]
    lo, hi = min(ends), max(ends)
    pad = (hi - lo) * 0.08 or 1.0
    lo, hi = lo - pad, hi + pad

    def x(v):
        return label_w + (v - lo) / (hi - lo) * (width - label_w - 20)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12"><text x="4" y="16" font-weight="bold">{html.escape(metric)}</text>',
             f'<line x1="{x(0):.1f}" y1="{top - 6}" x2="{x(0):.1f}" y2="{height - 20}" stroke="#888" '
             'stroke-dasharray="4 3"/>']
    for i, r in rows.iterrows():
        y = top + row_h * i + row_h / 2
        label = f"{r['first']} \u2212 {r['value']}" + (f" ({r['held']})" if r["held"] else "")
        parts.append(f'<text x="4" y="{y + 4:.1f}">{html.escape(label)}</text>')
        if math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"]):
            parts.append(f'<line x1="{x(r["ci_low"]):.1f}" y1="{y:.1f}" x2="{x(r["ci_high"]):.1f}" y2="{y:.1f}" '
                         'stroke="#4c78a8" stroke-width="2"/>')
        if math.isfinite(r["mean"]):
            parts.append(f'<circle cx="{x(r["mean"]):.1f}" cy="{y:.1f}" r="4" fill="#e45756"><title>'
                         f'{r["mean"]:+.4g} [{r["ci_low"]:+.4g}, {r["ci_high"]:+.4g}], n={r["n"]}</title></circle>')
    parts += [f'<text x="{label_w}" y="{height - 4}" fill="#555">{lo:+.3g}</text>',
              f'<text x="{width - 20}" y="{height - 4}" text-anchor="end" fill="#555">{hi:+.3g}</text>', "</svg>"]
    return "\n".join(parts)


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}td,th{border:1px solid #ddd;padding:3px 8px}
th{background:#f4f4f4;text-align:left}td{text-align:right}td:first-child{text-align:left}
.note{color:#555;font-size:13px}"""


def _fmt(df: pd.DataFrame) -> str:
    return df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:+.4g}", border=0)


def _with_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(verdict=[verdict(lo, hi) for lo, hi in zip(table["ci_low"], table["ci_high"])])


def html_report(title: str, lines: list[str], cells: pd.DataFrame, contrast: pd.DataFrame,
                per_run: pd.DataFrame) -> str:
    """The report as one standalone HTML page: `lines` (what ran, failures, notes), the contrasts
    with a forest plot per metric, the per-cell table and every run's numbers."""
    body = [f"<h1>{html.escape(title)}</h1>"] + [f'<p class="note">{html.escape(x)}</p>' for x in lines]
    if len(contrast):
        body.append("<h2>Contrasts, paired by seed</h2><p class=\"note\">Each row: the first listed value of a grid "
                    "key minus another value, per seed, then the mean and 95% t-interval across seeds. Scope "
                    "'per combination': the other grid keys held at the values in 'held'. Scope 'pooled': "
                    "the difference paired by seed and by the other keys' values, averaged over every "
                    "combination of those values within each seed (seeds with every combination only), "
                    "then the interval across seeds of that average. The verdict says where the interval "
                    "lies.</p>")
        for metric in contrast["metric"].unique():
            note = f"{metric}: in a cell, {reading(metric)}; a contrast above 0: the first value's number is the larger"
            body.append(f'<p class="note">{html.escape(note)}</p>' + forest_svg(contrast, metric))
        body.append(_fmt(_with_verdicts(contrast)))
    body.append("<h2>Per cell, across seeds</h2>" + _fmt(_with_verdicts(cells)))
    body.append("<h2>Per run</h2>" + _fmt(per_run))
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write(folder: str, title: str, lines: list[str], per_run: pd.DataFrame, cells, grid: dict) -> dict:
    """Compute the tables and write report.csv (per cell), contrasts.csv, runs.csv and report.html
    to `folder`; returns {"cells", "contrasts", "runs"} DataFrames and {"html"} its path."""
    os.makedirs(folder, exist_ok=True)
    by_cell, contrast = cell_table(per_run, cells), contrasts(per_run, cells, grid)
    by_cell.to_csv(os.path.join(folder, "report.csv"), index=False)
    contrast.to_csv(os.path.join(folder, "contrasts.csv"), index=False)
    per_run.to_csv(os.path.join(folder, "runs.csv"), index=False)
    path = os.path.join(folder, "report.html")
    with open(path, "w") as f:
        f.write(html_report(title, lines, by_cell, contrast, per_run))
    return {"cells": by_cell, "contrasts": contrast, "runs": per_run, "html": path}
