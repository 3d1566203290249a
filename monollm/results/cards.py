"""What the cards show, built from the run's tables; Metaflow's cards only render it.

    current.card["experiment"].extend(cards.experiment(self))            # join_attacks
    pipeline.train_arm(..., on_step=cards.live_training(current.card["training"], cfg, arm))

Tables are pandas DataFrames of formatted strings and plots are Vega-Lite specs (plain
dicts), so a notebook shows the same things: `display(cards.perplexity_view(ppl))`,
`cards.show(cards.perplexity_chart(ppl))`.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from monollm.results import card_sections as sections
from monollm.results import provenance, report
from monollm.results import robustness_views as views
from monollm.results.card_sections import (VEGA, arm_differences, ci, clean, config_summary, fmt,  # noqa: F401
                                   schedule_caveat, signed, signed_ci)
from monollm.results.headline import headline
from monollm.results.key_numbers import key_numbers
from monollm.results.client import card_commands_text
from monollm.results.wording import pipeline_check_line

MAX_POINTS = 400  # per curve: a 20-hour run logs ~100k steps, a browser wants a few hundred
# one colour per model (and arm) in every chart
COLORS = {"reference": "#9d9d9d", "baseline": "#4c78a8", "monotonic_init": "#f2b36b", "monotonic": "#e45756"}
CONDITIONS = {"attack": "attack (own)", "control": "control (random)",
              "control_random_positions": "control (random positions)", "transfer": "transfer (other's)"}
# a table's kind column: the table keeps the attack table's names, which can wrap between words
KIND_LABELS = {"attack": "attack", "control": "control", "transfer": "transfer",
               "control_random_positions": "control random positions"}


class show:
    """Displays a Vega-Lite spec in Jupyter: `cards.show(spec)` as a cell's last line."""

    def __init__(self, spec: dict, width: int = 560):
        self.spec = clean({"width": width, **spec})

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"application/vnd.vegalite.v5+json": self.spec,
                "text/plain": f"<Vega-Lite chart: {chart_title(self.spec)}>"}


def chart_title(spec: dict) -> str:
    """A Vega-Lite spec's title text (titles may be strings or {"text": ..., "subtitle": ...})."""
    title = spec.get("title", "")
    return title.get("text", "") if isinstance(title, dict) else str(title)


# ---- tables ---------------------------------------------------------------------------

def perplexity_view(ppl: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"model": ppl["model"], "perplexity": ppl["perplexity"].map(fmt),
                         "95% CI": [ci(lo, hi) for lo, hi in zip(ppl["ppl_ci_low"], ppl["ppl_ci_high"])],
                         "mean NLL": ppl["mean_nll"].map(fmt), "tokens": ppl["tokens"].map(fmt),
                         "blocks": ppl["blocks"].map(fmt)})


def constraint_view(constraint: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({c: constraint[c].map(fmt) for c in constraint.columns})


def attack_view(summary: pd.DataFrame, attack: str) -> pd.DataFrame:
    """One attack's damage per row: dNLL mean with CI and median, and the
    damage above the matched control with CI (nats per continuation token, 3 decimals)."""
    s = summary[summary.attack == attack]
    out = pd.DataFrame({"kind": s["kind"].map(lambda k: KIND_LABELS.get(k, k)), "model": s["model"],
                        "trigger from": s["source_model"],
                        "dNLL mean [95% CI]": [sections.estimate(*v) for v in
                                               zip(s["dnll_mean"], s["dnll_ci_low"], s["dnll_ci_high"])],
                        "dNLL median": s["dnll_median"].map(signed)})
    if "above_control" in s.columns:  # the attack's dNLL minus its matched control's, paired by example
        out["above control [95% CI]"] = [sections.estimate(*v) for v in zip(
            s["above_control"], s["above_control_ci_low"], s["above_control_ci_high"])]
    return out.reset_index(drop=True)


def attack_search_view(summary: pd.DataFrame, attack: str, success: bool = False) -> pd.DataFrame:
    """The same rows' examples, clean and attacked NLL and the compute spent finding the
    perturbations (on "trigger from"); with `success`, their success rates with Wilson intervals
    instead (two tables: one would be too wide for a laptop screen)."""
    s = summary[summary.attack == attack]
    out = pd.DataFrame({"kind": s["kind"].map(lambda k: KIND_LABELS.get(k, k)), "model": s["model"],
                        "trigger from": s["source_model"]})
    if success:
        for col in s.columns:
            if col.startswith("success@") and not col.endswith(("_low", "_high")):
                out[col] = [sections.nowrap(f"{100 * p:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]") for p, lo, hi in
                            zip(s[col], s[col + "_ci_low"], s[col + "_ci_high"])]
        return out.reset_index(drop=True)
    out = out.assign(examples=s["examples"].map(fmt), **{
        "clean NLL": s["clean_nll"].map("{:.3f}".format), "attacked NLL": s["attacked_nll"].map("{:.3f}".format),
        "ppl increase": s["rel_ppl_increase"].map(lambda x: f"{100 * x:+.1f}%")})
    for col, name in (("trials", "trials"), ("forward_passes", "forward passes"), ("candidate_evals", "candidates")):
        if col in s.columns:
            out[name] = s[col].map(fmt).to_numpy()
    return out.reset_index(drop=True)


# ---- plots (Vega-Lite) ------------------------------------------------------------------

def _color(field: str, names, legend=True) -> dict:
    names = [n for n in COLORS if n in set(names)] + sorted(set(names) - set(COLORS))
    return {"field": field, "type": "nominal", "title": field,
            "scale": {"domain": names, "range": [COLORS.get(n, "#72b7b2") for n in names]},
            **({} if legend else {"legend": None})}


def perplexity_chart(ppl: pd.DataFrame) -> dict:
    """Perplexity by model as points with the 95% bootstrap CI as error bars, on a log scale:
    the constrained-but-untrained model can be many times worse than the others, and a linear
    axis would flatten the differences that matter between the other three."""
    values = clean(ppl[["model", "perplexity", "ppl_ci_low", "ppl_ci_high"]].to_dict("records"))
    x = {"field": "model", "type": "nominal", "sort": list(ppl["model"]), "title": None, "axis": {"labelAngle": 0}}
    y = {"field": "perplexity", "type": "quantitative", "title": "perplexity (log scale)",
         "scale": {"type": "log", "zero": False}}
    return {"$schema": VEGA, "title": "Test perplexity by model (95% CI, log scale)", "height": 220,
            "data": {"values": values},
            "layer": [{"mark": {"type": "point", "filled": True, "size": 90},
                       "encoding": {"x": x, "y": y, "color": _color("model", ppl["model"], False),
                                    "tooltip": [{"field": f} for f in values[0]] if values else []}},
                      {"mark": "errorbar", "encoding": {"x": x, "y": {**y, "field": "ppl_ci_low"},
                                                        "y2": {"field": "ppl_ci_high"}}},
                      {"mark": {"type": "text", "dx": 28, "align": "left"},
                       "encoding": {"x": x, "y": y, "text": {"field": "perplexity", "format": ".4g"}}}]}


def _thin(df: pd.DataFrame, n: int = MAX_POINTS) -> pd.DataFrame:
    """At most ~n evenly spaced rows, always keeping the last."""
    if len(df) <= n:
        return df
    keep = np.unique(np.r_[np.linspace(0, len(df) - 1, n).round().astype(int), len(df) - 1])
    return df.iloc[keep]


def loss_chart(training: pd.DataFrame, title: str = "Recovery training") -> dict:
    """Training loss (line) and validation loss (line with points) against tokens, per arm."""
    rows = []
    for arm, g in (training.groupby("arm", sort=False) if len(training) else []):
        for r in _thin(g).itertuples():
            rows.append({"arm": arm, "tokens": r.tokens, "step": r.step, "series": "train loss", "loss": r.loss})
        for r in g[np.isfinite(g["val_loss"])].itertuples():
            rows.append({"arm": arm, "tokens": r.tokens, "step": r.step, "series": "val loss", "loss": r.val_loss})
    enc = {"x": {"field": "tokens", "type": "quantitative"},
           "y": {"field": "loss", "type": "quantitative", "scale": {"zero": False}, "title": "loss (nats/token)"},
           "color": _color("arm", [r["arm"] for r in rows]),
           "strokeDash": {"field": "series", "type": "nominal", "legend": None},
           "tooltip": [{"field": f} for f in ("arm", "series", "step", "tokens", "loss")]}
    subtitle = "solid: training loss, dashed with points: validation loss"
    return {"$schema": VEGA, "title": {"text": title, "subtitle": subtitle},
            "height": 240, "data": {"values": clean(rows)}, "encoding": enc,
            "layer": [{"transform": [{"filter": "datum.series == 'train loss'"}], "mark": "line"},
                      {"transform": [{"filter": "datum.series == 'val loss'"}],
                       "mark": {"type": "line", "point": True}}]}


def dnll_chart(attacks: pd.DataFrame, attack: str) -> dict:
    """Distribution of per-example dNLL (trials averaged) for each condition and model:
    the attack on each model, its control and transfer, baseline and monotonic side by side."""
    from monollm.results.report import per_example

    ex = per_example(attacks[attacks.attack == attack])
    # one control box per model: its control for its own perturbation (controls matched to the
    # other model's flips pair with the transfer rows in the summary table)
    ex = ex[~ex["kind"].str.startswith("control") | (ex["model"] == ex["source_model"])]
    values = clean([{"condition": CONDITIONS.get(k, k), "model": m, "trigger from": s, "dnll": d}
                    for k, m, s, d in zip(ex["kind"], ex["model"], ex["source_model"], ex["dnll"])])
    order = [c for c in CONDITIONS.values() if c in {v["condition"] for v in values}]
    return {"$schema": VEGA, "title": f"{attack}: dNLL per example (nats per continuation token)",
            "height": 260, "data": {"values": values},
            "layer": [{"mark": {"type": "boxplot", "extent": "min-max", "size": 28},
                       "encoding": {"x": {"field": "condition", "type": "nominal", "sort": order, "title": None,
                                          "axis": {"labelAngle": 0}},
                                    "xOffset": {"field": "model", "type": "nominal"},
                                    "y": {"field": "dnll", "type": "quantitative", "title": "dNLL"},
                                    "color": _color("model", ex["model"])}},
                      {"data": {"values": [{"zero": 0}]}, "mark": {"type": "rule", "strokeDash": [4, 4]},
                       "encoding": {"y": {"field": "zero", "type": "quantitative"}}}]}


def source_lines(sources: dict | None, origin_run_id=None, setup_origin=None) -> list[str]:
    """Sentences on where the model and the documents came from, at which revision and hub
    commit (pipeline.sources), the run this one took its setup from (--reuse-setup) and the
    run it was resumed from; runs that recorded no sources say so."""
    out = []
    if sources:
        for what, key in (("model", "name"), ("data", "path")):
            s = sources[what]
            where = {"build": "built from [model.build] and pretrained on the corpus",
                     "builtin": "the built-in corpus"}.get(s["source"], f"{s['source']} `{s[key]}`")
            where += " (local files: no hub revision, no commit)" if s["source"] == "local" else ""
            if s["revision"]:
                where += f", revision `{s['revision']}`, " + (f"commit `{s['commit']}`" if s["commit"] else
                                                              "commit not recorded")
            out.append(f"{what}: {where}")
        if any(s["commit"] and s["commit"] != s["revision"] for s in sources.values()):  # a branch was asked for
            out.append("to repeat the run exactly, pin these commits into a copy of its profile: "
                       "`python -m monollm.experiments.pin RUN PROFILE OUT.toml` (docs/results.md)")
    else:
        out.append("this run recorded no sources (it predates `sources`)")
    if setup_origin:
        out.append(f"setup (splits, blocks, attack examples, reference model) taken from run {setup_origin}, "
                   "whose setup configuration and code are this run's (monollm/setup_reuse.py)")
    if origin_run_id:
        out.append(f"resumed from run {origin_run_id}: steps that had finished there were cloned, not recomputed")
    return out


# ---- findings in words --------------------------------------------------------------------

def finding_sentences(findings: dict, ppl: pd.DataFrame, summary: pd.DataFrame, constraint: pd.DataFrame) -> list[str]:
    """The findings in plain words, each with its number and 95% CI, computed from the tables."""
    p = ppl.set_index("model")

    def pp(m):
        return f"{fmt(p.loc[m, 'perplexity'])} {ci(p.loc[m, 'ppl_ci_low'], p.loc[m, 'ppl_ci_high'])}"

    cost = findings["nll_cost_monotonic_minus_baseline"]
    out = [f"Perplexity cost: the monotonic model's test perplexity is {pp('monotonic')} against the baseline's "
           f"{pp('baseline')} (ratio {findings['perplexity_ratio_monotonic_vs_baseline']:.3f}); the NLL difference "
           f"is {signed(cost['diff'], 4)} nats/token {signed_ci(cost['ci_low'], cost['ci_high'], 4)}, "
           + ("a significant difference." if findings["perplexity_cost_significant"] else
              "not significantly different from zero.")]
    out.append(f"Applying the constraint moved perplexity from {pp('reference')} (reference) to "
               f"{pp('monotonic_init')}; recovery training brought it to {pp('monotonic')}.")
    if findings.get("convergence_note"):  # runs made before it was measured have none
        out.append(findings["convergence_note"])
    out += report.constraint_sentences(findings, constraint)
    for attack, comp in findings.get("robustness_above_control", {}).items():  # the claim docs/method.md allows
        rows = _own(summary, attack, "attack")
        each = "; ".join(f"{r.model} {signed(r.above_control)} "
                         f"{signed_ci(r.above_control_ci_low, r.above_control_ci_high)}" for r in rows.itertuples())
        out.append(f"{attack}, damage above each model's own random control (nats per continuation token): {each}; "
                   f"baseline minus monotonic {signed(comp['diff'])} {signed_ci(comp['ci_low'], comp['ci_high'])} "
                   f"over {comp['examples']} examples: {comp['verdict']}.")
    for key, comp in findings["robustness"].items():
        attack, kind = key.split("/")
        each = "; ".join(f"{r.model} {signed(r.dnll_mean)} {signed_ci(r.dnll_ci_low, r.dnll_ci_high)}"
                         for r in _own(summary, attack, kind).itertuples())
        out.append(f"{attack} ({kind}), mean dNLL per continuation token: {each}; baseline minus monotonic "
                   f"{signed(comp['diff'])} {signed_ci(comp['ci_low'], comp['ci_high'])} over {comp['examples']} "
                   f"examples: {comp['verdict']}.")
    out += [g["note"] for g in findings.get("guidance", {}).values() if g.get("note")]  # a weak gradient ranking
    out.append(findings["activation_note"])
    return out


def _own(summary: pd.DataFrame, attack: str, kind: str) -> pd.DataFrame:
    """Summary rows of `attack`/`kind` on the model the perturbation was found on (no transfer)."""
    return summary[(summary.attack == attack) & (summary.kind == kind) & (summary.model == summary.source_model)]


# ---- cards -----------------------------------------------------------------------------------

def _table(df: pd.DataFrame):
    from metaflow.cards import Table

    return Table(data=[[str(v) for v in row] for row in df.itertuples(index=False)], headers=list(df.columns))


def experiment(data, run_id: str = "") -> list:
    """Components of the experiment card (`run_id`: for the attack cards' commands). data: the flow
    at join_attacks (or run.data) with resolved_config, perplexity, training, constraint, attacks, attack_summary and findings
    (and token_text where the run stored it). The answer and its key numbers come first, the
    details after, the configuration last and collapsed."""
    from metaflow.cards import Markdown, VegaChart

    cfg = data.resolved_config
    mode = cfg["monotonic"].get("mode", "nonneg")
    branches = card_commands_text(run_id, getattr(data, "attack_tasks", None) or {})
    out = lead(data) + ([Markdown(branches)] if branches else []) + views.card_section(data, _table) + [
        Markdown("## Findings\n" + "\n".join(f"* {s}" for s in schedule_caveat(cfg) + finding_sentences(
            data.findings, data.perplexity, data.attack_summary, data.constraint))),
        Markdown("## Sources\n" + "\n".join(f"* {line}" for line in source_lines(
            getattr(data, "sources", None), getattr(data, "origin_run_id", None),
            getattr(data, "setup_origin", None)))), *provenance.ran_on_section(data, _table),
        Markdown(sections.data_section(cfg, getattr(data, "contamination", None))),
        Markdown("## Perplexity on the test blocks (95% bootstrap CI over blocks)"),
        _table(perplexity_view(data.perplexity)), VegaChart(perplexity_chart(data.perplexity)),
        Markdown("## Recovery training"), VegaChart(loss_chart(data.training)),
        Markdown(f"## Constraint verification (mode `{mode}`: `{report.promise_column(mode)}` must be 0)"),
        _table(constraint_view(data.constraint))]
    for attack in data.attack_summary["attack"].unique() if len(data.attack_summary) else []:
        out += attack_section(data, attack)
    return out + downstream_section(data) + sections.order_section(data) + sections.configuration(cfg)


def downstream_section(data) -> list:
    """The downstream tasks' table and the constraint's cost per task ([] for a run without them)."""
    from metaflow.cards import Markdown

    parts = sections.downstream_view(data)
    if parts is None:
        return []
    view, lines = parts
    return [Markdown("## Downstream tasks (lm-evaluation-harness; value ± stderr)"), _table(view),
            Markdown("Cost of the constraint per task (monotonic minus baseline, paired bootstrap 95% CI "
                     "over items; negative = the constraint costs):\n" + "\n".join(lines))]


def lead(data) -> list:
    """The title, the answer in two sentences (headline.headline) and the table of its numbers."""
    from metaflow.cards import Markdown

    cfg, f = data.resolved_config, data.findings
    title = (f"# MonoFlow: profile `{cfg['name']}`, variant `{cfg['monotonic']['variant']}`, "
             f"mode `{cfg['monotonic'].get('mode', 'nonneg')}`, seed {cfg['seed']}")
    answer = "**Answer.** " + " ".join(headline(f, sections.arms_differ(cfg)))
    caveat = [Markdown(f"**{pipeline_check_line(cfg)}**")] if pipeline_check_line(cfg) else []
    return [Markdown(title), Markdown(answer),
            _table(key_numbers(f, data.perplexity, data.attack_summary, getattr(data, "worst_case", None))), *caveat]


def worst_case_table(data) -> pd.DataFrame:
    """The worst case per family (`data.worst_case`) as the card shows it; empty for a run made before it."""
    worst = views.worst_case_view(getattr(data, "worst_case", None))
    return views._shown(worst, views.card_columns(worst)) if len(worst) else worst


def attack_section(data, attack: str) -> list:
    """One attack: its damage table, the search and success tables, how far its gradient ranking can
    be trusted (where measured), the dNLL distribution, and the most and least damaged examples of
    each model."""
    from metaflow.cards import Markdown, VegaChart

    text = getattr(data, "token_text", None)
    return [Markdown(f"## Attack `{attack}` (dNLL in nats per continuation token)"),
            _table(attack_view(data.attack_summary, attack)),
            Markdown(f"### `{attack}`: examples, NLL and search compute"),
            _table(attack_search_view(data.attack_summary, attack)),
            Markdown(f"### `{attack}`: success rates (share of examples with dNLL >= t, Wilson 95% CI)"),
            _table(attack_search_view(data.attack_summary, attack, success=True)),
            *sections.guidance_section(data, attack), VegaChart(dnll_chart(data.attacks, attack)),
            Markdown(f"### `{attack}`: the {sections.PER_EXAMPLE} most and least damaged examples of each model\n"
                     + sections.examples_note(text)),
            Markdown(sections.examples_html(data.attacks, attack, text))]


class LiveTraining:
    """on_step callback that keeps a training card current: tokens done / budget with ETA, and
    loss and validation-loss curves. Components are rebuilt and the card refreshed at most
    every `every` seconds (and at the last step), so a long run pays nothing per step."""

    def __init__(self, card, arm: str, total_steps: int, tokens_per_step: int, every: float = 5.0,
                 clock=time.time):
        from metaflow.cards import Markdown, ProgressBar, VegaChart

        self.card, self.arm, self.total, self.every, self.clock = card, arm, total_steps, every, clock
        self.budget = total_steps * tokens_per_step
        self.rows, self.last, self.t0, self.tokens0 = [], -math.inf, None, 0
        self.bar = ProgressBar(max=self.budget, label=f"{arm}: tokens", value=0, unit="tokens")
        self.status = Markdown(f"## Training `{arm}`: waiting for the first step")
        self.chart = VegaChart(loss_chart(pd.DataFrame(), title=f"{arm}: loss"))
        card.extend([self.status, self.bar, self.chart])
        card.refresh()

    def __call__(self, row: dict):
        self.rows.append({k: row[k] for k in ("arm", "step", "tokens", "loss", "val_loss", "lr", "grad_norm")})
        if row.get("replayed"):  # a resumed task's steps from its checkpoint: curves only, no rate
            return
        now = self.clock()
        if self.t0 is None:  # rate from this task's own steps (a resumed task starts mid-way)
            self.t0, self.tokens0 = now, row["tokens"]
        if now - self.last < self.every and row["step"] < self.total:
            return
        self.last = now
        rate = (row["tokens"] - self.tokens0) / max(now - self.t0, 1e-9)
        eta = (self.budget - row["tokens"]) / rate if rate > 0 else math.nan
        self.bar.update(int(row["tokens"]), metadata=f"step {row['step']}/{self.total}, {rate:,.0f} tok/s, "
                                                     f"ETA {_duration(eta)}")
        val = [r["val_loss"] for r in self.rows if np.isfinite(r["val_loss"])]
        self.status.update(f"## Training `{self.arm}`: step {row['step']}/{self.total}, loss {row['loss']:.4f}"
                           + (f", val loss {val[-1]:.4f}" if val else "")
                           + f", lr {row['lr']:.2e}, grad norm {row['grad_norm']:.2f}")
        self.chart.update(loss_chart(pd.DataFrame(self.rows), title=f"{self.arm}: loss"))
        self.card.refresh(force=row["step"] >= self.total)


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def live_training(card, cfg, arm: str, every: float = 5.0) -> LiveTraining:
    """The live training card of one arm (`card`: current.card[id]), sized from the config."""
    from monollm.train.loop import steps_for

    t = cfg.train
    return LiveTraining(card, arm, steps_for(t, cfg.data.block_len),
                        t.batch_size * t.grad_accum * cfg.data.block_len, every)
