"""A sweep's report: per cell the perplexity cost, the robustness above control per attack and
the downstream tasks' cost (mean and 95% t-interval across seeds), and contrasts between the values of each grid key,
paired by seed, per combination of the other keys' values and pooled over them; as CSV files
and one standalone HTML file with a forest plot (inline SVG: no script, no network, it renders
in any browser).

The report speaks as the experiment card does (results.wording): the sign convention once at
its head, the card's verdict words, fixed decimals, and for every number how many seeds stand
behind it (one seed: an anecdote, not a verdict). The answer per cell comes first, then the
contrasts, then every run's numbers.

The numbers are those of `compare.key_numbers`; the functions here take plain tables, so the
statistics are tested on synthetic numbers without Metaflow.
"""
from __future__ import annotations

import html
import math
import os
import textwrap

import pandas as pd

from monollm import stats
from monollm.experiments import across, compare, flagged
from monollm.results import seeds, wording

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


FLAGS = "flags"
"""per_run's column of each run's verdict flags (flagged.run_flags: metric -> flags), where present."""


def metric_columns(per_run: pd.DataFrame) -> list[str]:
    """per_run's metric columns, in the order `pick` gives them."""
    return [c for c in per_run.columns if c not in ("cell", "seed", "run", FLAGS)]


def _interval(x) -> dict:
    mean, lo, hi = stats.t_interval(x)
    return {"n": len(x), "mean": mean, "ci_low": lo, "ci_high": hi}


def cell_table(per_run: pd.DataFrame, cells) -> pd.DataFrame:
    """One row per cell and metric: the grid values, n seeds, mean and 95% t-interval across seeds, and
    for a worst case the seeds a 95% interval off zero would need (results.seeds; "" for the others).

    per_run: one row per (cell, seed) with columns cell, seed and one per metric;
    cells: the sweep's cells (monollm.experiments.plan.Cell), in order. "flagged": in how many of the
    cell's runs the verdict was flagged (flagged.count; None without a `flags` column or for a cost)."""
    rows = []
    for cell in cells:
        mine = per_run[per_run.cell == cell.name]
        counted = flagged.count(list(mine[FLAGS])) if FLAGS in mine.columns else {}
        for metric in metric_columns(per_run):
            x = mine[metric].dropna().to_numpy(float)
            rows.append({"cell": cell.name, **dict(cell.values), "metric": metric, **_interval(x),
                         "seeds_needed": seeds.seeds_needed(x).short() if metric.startswith(WORST) else "",
                         "flagged": counted.get(metric)})
    keys = [k for k, _ in cells[0].values] if cells else []
    return pd.DataFrame(rows, columns=["cell", *keys, "metric", "n", "mean", "ci_low", "ci_high", "seeds_needed",
                                       "flagged"])


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


def reading(metric: str) -> str:
    """How to read a metric's sign."""
    return next((text for prefix, text in READING.items() if metric.startswith(prefix)), "")


def short(metric: str) -> str:
    """A header that fits: 'NLL cost', 'ppl ratio', 'worst universal triggers', 'uat above ctrl', 'piqa acc'."""
    if metric in (NLL_COST, PPL_RATIO):
        return {NLL_COST: "NLL cost", PPL_RATIO: "ppl ratio"}[metric]
    for prefix, end, fmt in ((WORST, " baseline - monotonic", "worst {}"), (ABOVE, " baseline - monotonic",
                             "{} above ctrl"), (DOWNSTREAM, " monotonic - baseline", "{}")):
        if metric.startswith(prefix) and metric.endswith(end):
            return fmt.format(metric[len(prefix):-len(end)])
    return metric


def legend(metrics) -> list[str]:
    """One line per metric: its short name, what it is and how to read its sign."""
    return [f"{short(m)}: {m}" + (f"; {reading(m)}" if reading(m) else "") for m in metrics]


def verdict(metric: str, n: int, lo: float, hi: float) -> str:
    """What a cell's 95% interval across n seeds supports, in the card's words (wording.across_seeds);
    "" for a number that is not a difference between the models (the perplexity ratio: the NLL cost
    carries its verdict)."""
    words = compare.words(metric)
    return wording.across_seeds(n, lo, hi, words) if words else ""


def _estimate(metric: str, r, difference: bool = False) -> str:
    """Mean and interval to the metric's decimals, signed where it is a difference (a contrast always is)."""
    return wording.interval(r["mean"], r["ci_low"], r["ci_high"], compare.decimals(metric),
                            sign=difference or compare.words(metric) is not None)


ESTIMATE = "mean [95% CI]"
NEEDED = "seeds for 95% off 0"


def cell_view(cells: pd.DataFrame) -> pd.DataFrame:
    """The answer per cell, grouped by metric: the grid values, the metric's short name, mean and
    95% t-interval across seeds, how many seeds, the verdict, led by "not evidence of robustness"
    and in how many seeds it was flagged where any was (flagged.reading), and (a worst case) the seeds
    needed for a 95% interval off zero (t-based estimate). cells: `cell_table`'s rows."""
    keys = [c for c in cells.columns
            if c not in ("cell", "metric", "n", "mean", "ci_low", "ci_high", "seeds_needed", "flagged")]
    rows = [{**{k: r[k] for k in keys}, "measure": short(metric), ESTIMATE: _estimate(metric, r),
             "seeds": wording.count(int(r["n"])),
             "verdict": flagged.reading(verdict(metric, int(r["n"]), r["ci_low"], r["ci_high"]), r.get("flagged"),
                                        "seed"),
             NEEDED: r.get("seeds_needed", "")}
            for metric in cells["metric"].unique() for _, r in cells[cells.metric == metric].iterrows()]
    return pd.DataFrame(rows, columns=[*keys, "measure", ESTIMATE, "seeds", "verdict", NEEDED])


def contrast_view(contrast: pd.DataFrame) -> pd.DataFrame:
    """The contrasts as a reader sees them: measure, key, 'first \u2212 value', the other keys (held
    or averaged over; left out for a grid of one key), mean and 95% t-interval across seeds, how
    many seeds and which value's number is larger."""
    rows = [{"measure": short(r["metric"]), "key": r["key"], "contrast": _label(r), "other keys": r["held"],
             ESTIMATE: _estimate(r["metric"], r, difference=True), "seeds": wording.count(int(r["n"])),
             "verdict": wording.across_seeds(int(r["n"]), r["ci_low"], r["ci_high"],
                                             (f"{r['first']} larger", f"{r['value']} larger"))}
            for _, r in contrast.iterrows()]
    order = {m: i for i, m in enumerate(contrast["metric"].unique())}  # grouped by measure, as the forest plots
    view = pd.DataFrame(rows, columns=["measure", "key", "contrast", "other keys", ESTIMATE, "seeds", "verdict"])
    view = view.iloc[sorted(range(len(view)), key=lambda i: order[contrast["metric"].iloc[i]])]
    return view if (view["other keys"] != "").any() else view.drop(columns="other keys")


def run_view(per_run: pd.DataFrame) -> pd.DataFrame:
    """Every run's numbers under short headers, to each metric's fixed decimals."""
    out = per_run[[c for c in ("cell", "seed", "run") if c in per_run.columns]].copy()
    for m in metric_columns(per_run):
        out[short(m)] = [wording.number(v, compare.decimals(m), compare.words(m) is not None) for v in per_run[m]]
    return out


def _label(r) -> str:
    return f"{r['first']} \u2212 {r['value']}"


def _ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round values between lo and hi, at most `most` of them (steps of 1, 2 or 5 times a power of ten)."""
    raw = (hi - lo) / max(most - 1, 1)
    step = next(f * 10 ** math.floor(math.log10(raw)) for f in (1, 2, 5, 10)
                if f * 10 ** math.floor(math.log10(raw)) >= raw)
    first = math.ceil(lo / step)
    return [round(i * step, 12) for i in range(first, math.floor(hi / step) + 1)]


ZERO_LABEL = "no difference"


def forest_svg(table: pd.DataFrame, metric: str, width: int = 720) -> str:  # long: one SVG, element by element
    """A forest plot of one metric's contrasts: a row per contrast, its mean (a dot) and 95%
    t-interval (a line); one dashed line at 0 labelled ZERO_LABEL, round ticks on the axis below.
    table: `contrasts`' rows."""
    rows = table[table.metric == metric].reset_index(drop=True)
    labels = [_label(r) + (f" ({r['held']})" if r["held"] else "") for _, r in rows.iterrows()]
    label_w = int(min(max([len(x) for x in labels] + [20]) * 6.6 + 12, width * 0.55))
    row_h, top = 24, 44
    bottom = top + row_h * len(rows)
    height = bottom + 34
    ends = [v for v in pd.concat([rows["mean"], rows["ci_low"], rows["ci_high"]]) if math.isfinite(v)] + [0.0]
    lo, hi = min(ends), max(ends)
    pad = (hi - lo) * 0.08 or 1.0
    lo, hi = lo - pad, hi + pad
    d = compare.decimals(metric)

    def x(v):
        return label_w + (v - lo) / (hi - lo) * (width - label_w - 30)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12"><text x="4" y="16" font-weight="bold">{html.escape(short(metric))}</text>',
             f'<line x1="{label_w}" y1="{bottom}" x2="{width - 30}" y2="{bottom}" stroke="#555"/>']
    # the label of the zero line stays inside the picture when 0 is near an end of the axis
    anchor = "end" if x(0) > width - 80 else "start" if x(0) < label_w + 40 else "middle"
    for t in _ticks(lo, hi):
        parts.append(f'<line x1="{x(t):.1f}" y1="{bottom}" x2="{x(t):.1f}" y2="{bottom + 5}" stroke="#555"/>'
                     f'<text x="{x(t):.1f}" y="{bottom + 18}" text-anchor="middle" fill="#555">'
                     f'{"0" if t == 0 else wording.signed(t, d)}</text>')
    parts.append(f'<line class="zero" x1="{x(0):.1f}" y1="{top - 6}" x2="{x(0):.1f}" y2="{bottom}" stroke="#888" '
                 f'stroke-dasharray="4 3"/><text x="{x(0):.1f}" y="{top - 10}" text-anchor="{anchor}" fill="#555">'
                 f'{ZERO_LABEL}</text>')
    for i, r in rows.iterrows():
        y = top + row_h * i + row_h / 2
        parts.append(f'<text x="4" y="{y + 4:.1f}">{html.escape(labels[i])}</text>')
        if math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"]):
            parts.append(f'<line x1="{x(r["ci_low"]):.1f}" y1="{y:.1f}" x2="{x(r["ci_high"]):.1f}" y2="{y:.1f}" '
                         'stroke="#4c78a8" stroke-width="2"/>')
        if math.isfinite(r["mean"]):
            parts.append(f'<circle cx="{x(r["mean"]):.1f}" cy="{y:.1f}" r="4" fill="#e45756"><title>'
                         f'{_estimate(metric, r)}, {wording.seeds(int(r["n"]))}</title></circle>')
    return "\n".join(parts + ["</svg>"])


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}td,th{border:1px solid #ddd;padding:3px 8px}
th{background:#f4f4f4;text-align:left;white-space:nowrap}td{text-align:right;white-space:nowrap}
td:first-child{text-align:left}.note{color:#555;font-size:13px}"""
HOW_TO_READ = ("Each number: the mean across seeds and its 95% t-interval (+0.059 [-0.012, +0.130]); the seeds column "
               "says how many seeds stand behind it, and one seed gives no interval: an anecdote, not a verdict. "
               "'seeds for 95% off 0' (a worst case): about how many seeds would give a 95% t-interval that leaves 0 "
               "out if the mean and spread stayed as observed (a t-based estimate). ")
CONTRAST_NOTE = ("Each row: the first listed value of a grid key minus another value, per seed, then the mean and 95% "
                 "t-interval across seeds. 'other keys': the other grid keys held at these values, or (pooled) the "
                 "difference averaged within each seed over every combination of their values (seeds with every "
                 "combination only). The verdict names the value whose number is larger, where the interval "
                 "excludes 0.")


def _html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, na_rep="", border=0)


def html_report(title: str, lines: list[str], cells: pd.DataFrame, contrast: pd.DataFrame,
                per_run: pd.DataFrame, compute: pd.DataFrame | None = None) -> str:
    """The report as one standalone HTML page: `lines` (what ran, failures, notes), how to read it
    (the sign convention, once, and each measure's short name), the answer per cell, the attack
    compute multiplier per cell (`compute`: experiments.across.by_cell, where the runs have it), then
    the contrasts with a forest plot per metric, then every run's numbers."""
    metrics = metric_columns(per_run) or list(cells["metric"].unique())
    body = [f"<h1>{html.escape(title)}</h1>"] + [f'<p class="note">{html.escape(x)}</p>' for x in lines]
    body.append(f'<h2>How to read it</h2><p class="note">{html.escape(HOW_TO_READ + wording.SIGNS)}</p>'
                '<ul class="note">' + "".join(f"<li>{html.escape(x)}</li>" for x in legend(metrics)) + "</ul>")
    body.append("<h2>The answer per cell, across seeds</h2>" + _html_table(cell_view(cells)))
    if compute is not None and len(compute):  # the runs' findings["compute"] (experiments.across)
        body.append(f'<h2>Attack compute multiplier</h2><p class="note">{html.escape(across.COMPUTE_HEAD)}</p>'
                    + _html_table(across.compute_view(compute)))
    if len(contrast):
        body.append(f'<h2>Contrasts, paired by seed</h2><p class="note">{html.escape(CONTRAST_NOTE)}</p>')
        body += [forest_svg(contrast, metric) for metric in contrast["metric"].unique()]
        body.append(_html_table(contrast_view(contrast)))
    body.append("<h2>Per run</h2>" + _html_table(run_view(per_run)))
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def console_text(cells: pd.DataFrame, contrast: pd.DataFrame, compute: pd.DataFrame | None = None) -> str:
    """The answer per cell, the seeds each cell's worst case needs, the compute multiplier per cell
    (where the runs have it), then the contrasts, as text (what `python -m monollm.sweep` prints)."""
    from monollm.results.client import text_table

    def lines(view):
        return text_table(view, {c: (c, None) for c in view.columns})
    out = [*textwrap.wrap(wording.SIGNS, 120), "", "The answer per cell (mean and 95% t-interval across seeds):",
           *lines(cell_view(cells).drop(columns=NEEDED))]  # the seeds needed below it, so the table fits
    worst = cells[cells["metric"].str.startswith(WORST)] if "seeds_needed" in cells else cells.iloc[:0]
    out += across.needed_block([f"{r['cell']}, {short(r['metric'])[len('worst '):]}: {r['seeds_needed']}"
                                for _, r in worst.iterrows()])
    if compute is not None and len(compute):
        out += ["", *textwrap.wrap(across.COMPUTE_HEAD, 120), *lines(across.compute_view(compute))]
    if len(contrast):
        out += ["", "Contrasts (first listed value minus the other, paired by seed):", *lines(contrast_view(contrast))]
    return "\n".join(out)


def write(folder: str, title: str, lines: list[str], per_run: pd.DataFrame, cells, grid: dict) -> dict:
    """Compute the tables and write report.csv (per cell), contrasts.csv, runs.csv, compute.csv (the
    compute multiplier per cell, from per_run.attrs["compute"]: cell -> its runs' findings["compute"])
    and report.html to `folder`; returns {"cells", "contrasts", "runs", "compute"} DataFrames and
    {"html"} its path."""
    os.makedirs(folder, exist_ok=True)
    by_cell, contrast = cell_table(per_run, cells), contrasts(per_run, cells, grid)
    compute = across.by_cell(per_run.attrs.get("compute", {}))  # cell -> the runs' findings["compute"]
    compute.to_csv(os.path.join(folder, "compute.csv"), index=False)
    by_cell.to_csv(os.path.join(folder, "report.csv"), index=False)
    contrast.to_csv(os.path.join(folder, "contrasts.csv"), index=False)
    per_run.to_csv(os.path.join(folder, "runs.csv"), index=False)
    path = os.path.join(folder, "report.html")
    with open(path, "w") as f:
        f.write(html_report(title, lines, by_cell, contrast, per_run, compute))
    return {"cells": by_cell, "contrasts": contrast, "runs": per_run, "compute": compute, "html": path}
