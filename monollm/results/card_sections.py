"""Sections of the experiment card that lead it or fold away: the headline, the key numbers,
the most and least damaged examples of each attack, the data's sources and contamination, and
the configuration (collapsed).

Tables are pandas DataFrames of formatted strings; the per-example view and the collapsed
configuration are HTML blocks (a Markdown component renders them as they are). An estimate
and its interval are one cell joined by no-break spaces, so a narrow column never wraps it.
"""
from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd

from monollm.data import contamination
from monollm.data.documents import split_sources
from monollm.results import report, wording
from monollm.results.wording import interval
from monollm.schema import flatten

VEGA = "https://vega.github.io/schema/vega-lite/v5.json"
NBSP = "\u00a0"
PER_EXAMPLE = 3
"""Most and least damaged examples shown per attack and model."""


def data_section(cfg: dict, found: dict | None) -> str:
    """The card's Data section (Markdown): where each split's documents come from, and how many
    held-out windows share an n-gram with the training tokens (the `contamination` artifact)."""
    lines = [f"* `{split}`: {where}" for split, where in split_sources(cfg.get("data", {})).items()]
    return "## Data\n" + "\n".join(lines + [f"* {contamination.describe(found)}"])


def nowrap(text: str) -> str:
    """`text` with no-break spaces: a browser keeps an estimate and its interval on one line."""
    return text.replace(" ", NBSP)


def estimate(x, lo, hi, decimals: int = 3) -> str:
    """'+0.120 [+0.030, +0.210]' in one unbreakable cell; '-' where there is no estimate."""
    if any(v is None or v != v for v in (x, lo, hi)):
        return "-"
    return nowrap(interval(x, lo, hi, decimals))


def clean(x):
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None (a card's JSON must parse in a browser)."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def arms_differ(cfg: dict) -> bool:
    """Whether the monotonic arm was trained with another lr or warmup than the baseline (`cfg`:
    a resolved config dict, where the monotonic_* settings hold the values used)."""
    t = cfg["train"]
    return t["monotonic_lr"] != t["lr"] or t["monotonic_warmup_frac"] != t["warmup_frac"]


def fmt(x, digits: int = 4) -> str:
    """A number for a table: ints with separators, floats to `digits` significant digits."""
    if x is None or (isinstance(x, (float, np.floating)) and not np.isfinite(x)):
        return "-"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{digits}g}"
    return str(x)


def ci(lo, hi, digits: int = 4) -> str:
    """'[lo, hi]' joined by a no-break space: a table cell never wraps an interval."""
    return nowrap(f"[{fmt(lo, digits)}, {fmt(hi, digits)}]")


def signed(x, decimals: int = 3) -> str:
    """A difference in nats: fixed decimals with its sign, so numbers in a sentence line up."""
    return f"{x:+.{decimals}f}" if x is not None and np.isfinite(x) else "-"


def signed_ci(lo, hi, decimals: int = 3) -> str:
    return f"[{signed(lo, decimals)}, {signed(hi, decimals)}]"


# ---- the most and least damaged examples ----------------------------------------------------

def token_text(table: pd.DataFrame, tokenizer) -> dict[int, str]:
    """id -> decoded text of every token id in an attack table (clean, attacked and trigger ids),
    for showing examples without the tokenizer: decoded at attack time, where it is loaded.
    A byte-level token holding part of a character decodes to U+FFFD."""
    ids = sorted({int(t) for col in ("input_ids", "attacked_ids", "trigger_ids") if col in table
                  for row in table[col] for t in row})
    return dict(zip(ids, tokenizer.batch_decode([[i] for i in ids])))


def extreme_examples(attacks: pd.DataFrame, attack: str, model: str, n: int = PER_EXAMPLE) -> pd.DataFrame:
    """The attack rows (kind "attack", found on and scored on `model`) of the n most and n least
    damaged examples, by dNLL averaged over trials, most damaged first; one row per example
    (its first trial), with `dnll` the trial mean and `rank` "most" or "least"."""
    rows = attacks[(attacks.attack == attack) & (attacks.kind == "attack") & (attacks.model == model)
                   & (attacks.source_model == model)]
    if rows.empty:
        return rows.assign(rank=[])
    mean = rows.groupby("example")["dnll"].mean().sort_values(ascending=False)
    most, least = list(mean.index[:n]), [e for e in mean.index[::-1][:n] if e not in mean.index[:n]][::-1]
    first = rows.sort_values("trial").drop_duplicates("example").set_index("example")
    out = first.loc[most + least].reset_index()
    out["dnll"] = mean.loc[most + least].to_numpy()
    out["rank"] = ["most"] * len(most) + ["least"] * len(least)
    return out


def marked_tokens(row, text: dict) -> str:
    """HTML of one attacked input: a prepended trigger highlighted, each flipped token as the
    clean one struck through and the new one highlighted, the scored continuation in bold."""
    def tok(i):
        s = text.get(int(i), f"#{int(i)}")
        return html.escape(s).replace("\n", "\u21b5")

    clean = [int(t) for t in row["input_ids"]]
    attacked = [int(t) for t in row["attacked_ids"]]
    changed = set(int(p) for p in row["changed_positions"])
    k = int(row["scored_tokens"])
    parts = [f"<mark>{''.join(tok(t) for t in row['trigger_ids'])}</mark>"] if len(row["trigger_ids"]) else []
    for pos, t in enumerate(clean):
        piece = (f"<del>{tok(t)}</del><mark>{tok(attacked[pos])}</mark>" if pos in changed else tok(t))
        parts.append(f"<b>{piece}</b>" if pos >= len(clean) - k else piece)
    return "".join(parts)


def examples_html(attacks: pd.DataFrame, attack: str, text: dict | None) -> str:
    """One HTML table (no blank lines: Markdown keeps it one block) of the most and least damaged
    examples of `attack` on each model, with their dNLL and marked text."""
    head = ("<tr><th>model</th><th>damaged</th><th>example</th><th>dNLL</th>"
            "<th style='text-align:left'>attacked input</th></tr>")
    body = []
    for model in ("baseline", "monotonic"):
        for r in extreme_examples(attacks, attack, model).to_dict("records"):
            body.append(f"<tr><td>{model}</td><td>{r['rank']}</td><td>#{r['example']}</td>"
                        f"<td style='white-space:nowrap'>{r['dnll']:+.3f}</td><td style='text-align:left;"
                        f"font-family:monospace;white-space:pre-wrap;overflow-wrap:anywhere'>"
                        f"{marked_tokens(r, text or {})}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def examples_note(text: dict | None) -> str:
    base = ("Highlighted: the trigger (prepended) or the flipped tokens (the clean token struck through); "
            "bold: the scored continuation. dNLL: nats per continuation token on that model, trials averaged.")
    if not text:
        return base + " This run stored no token text (it predates `token_text`): tokens are shown as #id."
    return base + " Each token is decoded on its own (\u21b5: a newline)."


# ---- gradient guidance --------------------------------------------------------------------------

RANKINGS = {
    "gradient": ("the search scored exactly only the candidates this estimate ranked highest, so the "
                 "candidates it never scored were passed over on the estimate's word"),
    "random": "the search scored exactly randomly drawn candidates (as many), so the estimate chose none of them",
    "exact": ("the search scored exactly every allowed token at the positions it searched, so the estimate "
              "chose nothing and the number only describes the model"),
}
"""What each `ranking` means for how much a search's results rest on the first-order estimate."""


def guidance_view(summary: pd.DataFrame, attack: str) -> pd.DataFrame | None:
    """The models `attack` searched on, with the ranking, the Spearman rho of the first-order
    estimate against the exact loss change ("-" where not measured) and the swaps behind it;
    None where no model has a measurement (or the run predates it)."""
    g = report.guidance_table(summary)
    g = g[g["attack"] == attack]
    measured = np.isfinite(g["guidance_spearman"].astype(float))
    if not measured.any():
        return None
    return pd.DataFrame({"model": g["model"], "ranking": g["ranking"],
                         "Spearman rho": [signed(r, 2) for r in g["guidance_spearman"]],
                         "swaps sampled": [fmt(n) if m else "-" for n, m in zip(g["guidance_n"], measured)]
                         }).reset_index(drop=True)


def guidance_text(view: pd.DataFrame, found: dict) -> str:
    """One paragraph on what the rho means, what the ranking was, and (`found`: the attack's
    findings["guidance"] entry) the sentence when it is weak."""
    rankings = "; ".join(f"ranking `{r}`: {RANKINGS.get(r, 'see docs/method.md')}"
                         for r in dict.fromkeys(view["ranking"]))
    return ("Spearman rho between the first-order (gradient) estimate of a single-token swap's loss change and "
            "the exact change when the swap is scored, over a random sample of swaps on the model the search ran "
            f"on: 1 orders swaps as their real effect does, 0 no better than chance, below 0 worse (rho below "
            f"{report.WEAK_GUIDANCE:g} counts as weak). {rankings[0].upper()}{rankings[1:]}."
            + (f" {found['note']}" if found.get("note") else ""))


def guidance_section(data, attack: str) -> list:
    """`attack`'s gradient-guidance table and its explanation; [] where nothing was measured."""
    from metaflow.cards import Markdown, Table

    view = guidance_view(data.attack_summary, attack)
    if view is None:
        return []
    found = (data.findings or {}).get("guidance", {}).get(attack, {})
    return [Markdown(f"### `{attack}`: gradient guidance\n" + guidance_text(view, found)),
            Table(data=[list(r) for r in view.itertuples(index=False)], headers=list(view.columns))]


# ---- configuration ------------------------------------------------------------------------------

def applies(key: str, cfg: dict) -> bool:
    """Whether flattened config `key` has any effect in this run (unused sections are hidden)."""
    built, data_src = cfg["model"]["source"] == "build", cfg["data"]["source"]
    if key.startswith(("model.build.", "pretrain.")):
        return built and not key.startswith("pretrain.monotonic_")
    if key in ("model.name", "model.revision"):
        return not built and (key == "model.name" or cfg["model"]["source"] == "hub")
    if key.startswith("attack.") and key.count(".") == 2:
        return key.split(".")[1] in cfg["attacks"]
    if key == "data.builtin_docs":
        return data_src == "builtin"
    if key in ("data.name", "data.path", "data.split", "data.text_field", "data.shuffle_buffer", "data.revision"):
        return data_src != "builtin" and (key != "data.revision" or data_src == "hub")
    if key.endswith("_from") and key.startswith("data."):
        return bool(cfg["data"].get(key.split(".")[1]))
    if key.startswith("parallel."):
        r = cfg.get("resources", {})
        return r.get("train_gpu", 0) > 1 or cfg.get("parallel", {}).get("processes", 0) > 1
    return True


def config_summary(cfg: dict) -> pd.DataFrame:
    """The settings a reader needs to interpret the numbers, one row each; per-arm overrides shown."""
    m, t, a = cfg["model"], cfg["train"], cfg["attack"]
    built = "built GPT-NeoX " + ", ".join(f"{k} {v}" for k, v in m["build"].items())
    model = m["name"] if m["source"] != "build" else built
    rows = [("profile", cfg["name"]), ("seed", cfg["seed"]), ("model", f"{m['source']}: {model}"),
            ("data", f"{cfg['data']['source']} {cfg['data'].get('name') or cfg['data'].get('path') or ''}".strip()),
            ("block length", cfg["data"]["block_len"]),
            ("constraint", report.constraint_setting(cfg["monotonic"])),
            ("training tokens", fmt(t["tokens"])),
            ("tokens per step", fmt(t["batch_size"] * t["grad_accum"] * cfg["data"]["block_len"])),
            ("lr baseline / monotonic", f"{t['lr']:g} / {t['monotonic_lr']:g}"),
            ("warmup baseline / monotonic", f"{t['warmup_frac']:g} / {t['monotonic_warmup_frac']:g}"),
            ("schedule", f"{t['schedule']}, weight decay {t['weight_decay']:g}, clip {t['max_grad_norm']:g}"),
            ("attacks", ", ".join(cfg["attacks"])),
            ("attack examples", f"{a['examples']} x ({a['context_len']} context + {a['continuation_len']} scored)"),
            ("bootstrap resamples", cfg["eval"]["bootstrap"])]
    return pd.DataFrame([(k, str(v)) for k, v in rows], columns=["setting", "value"])


def arm_differences(cfg: dict) -> list[str]:
    """Sentences for every deliberate difference between the two arms' training (resolved `cfg`)."""
    t, out = cfg["train"], []
    if t["monotonic_lr"] != t["lr"]:
        out.append(f"The monotonic arm trains at lr {t['monotonic_lr']:g}, the baseline at {t['lr']:g}.")
    if t["monotonic_warmup_frac"] != t["warmup_frac"]:
        out.append(f"The monotonic arm warms up for {t['monotonic_warmup_frac']:g} of training, "
                   f"the baseline for {t['warmup_frac']:g}.")
    return out or ["Both arms train with the same settings on the same token stream."]


def schedule_caveat(cfg: dict) -> list[str]:
    """A leading finding when the arms were trained differently: the comparison is then not
    about the constraint alone ([] when both arms share one schedule)."""
    if not arms_differ(cfg):
        return []
    return ["**The arms differ by more than the constraint**: " + " ".join(arm_differences(cfg))
            + " Every difference below mixes the constraint with the schedule."]


def configuration(cfg: dict) -> list:
    """The configuration, collapsed: the settings that matter for reading the numbers, and every
    key that applies to this run (sections the run did not use are left out)."""
    from metaflow.cards import Markdown

    summary = [tuple(r) for r in config_summary(cfg).itertuples(index=False)]
    keys = [(k, v) for k, v in sorted(flatten(cfg).items()) if applies(k, cfg)]
    return [Markdown("## Configuration\n" + " ".join(arm_differences(cfg))),
            Markdown(config_html(summary, "Settings that matter for reading the numbers")),
            Markdown(config_html(keys, f"Every key that applies to this run ({len(keys)})"))]


def config_html(rows: list[tuple[str, object]], summary: str) -> str:
    """A collapsed (<details>) two-column table of settings, one HTML block."""
    cells = "".join(f"<tr><td style='text-align:left'>{html.escape(str(k))}</td>"
                    f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<details><summary>{html.escape(summary)}</summary><table>{cells}</table></details>"


# ---- downstream tasks ---------------------------------------------------------------------------

def downstream_view(data) -> tuple[pd.DataFrame, list[str]] | None:
    """The downstream tasks for the card: per task and metric, each model's score with its stderr,
    the items and chance; and one line per task with the constraint's cost (monotonic minus
    baseline, paired bootstrap 95% CI over items). None for a run without them (none listed, or
    older)."""
    from monollm.constants import MODELS

    table = getattr(data, "downstream", None)
    if table is None or not len(table):
        return None
    rows = []
    for (task, metric), g in table.groupby(["task", "metric"], sort=False):
        by = g.set_index("model")
        scores = {m: f"{fmt(by.loc[m, 'value'])} ± {fmt(by.loc[m, 'stderr'], 2)}" for m in MODELS if m in by.index}
        rows.append({"task": task, "metric": metric, "n": fmt(by["n"].iloc[0]), "chance": fmt(by["chance"].iloc[0]),
                     **scores})
    lines = [f"* `{task}`: {c['metric']} {fmt(c['monotonic'])} (monotonic) vs {fmt(c['baseline'])} (baseline), "
             f"difference {signed(c['diff'])} {signed_ci(c['ci_low'], c['ci_high'])} over {c['items']} items"
             for task, c in data.findings.get("downstream", {}).items()]
    return pd.DataFrame(rows), lines


# ---- order preservation -------------------------------------------------------------------------

METHOD_WORDS = {"published": "K bootstrap directions pooled over every axis, pairs split by chain",
                "per_axis": "one direction per axis, every pair against every axis, pairs split by topic"}
"""How the card and the console describe each order-preservation method (docs/method.md)."""


def order_method(found: dict) -> str:
    """The method of order-preservation findings in words, e.g. "published method (64 bootstrap
    directions pooled over every axis, pairs split by chain)"; findings without a method are
    per_axis, the only method there was."""
    method = found.get("method", "per_axis")
    words = METHOD_WORDS.get(method, "")
    if method == "published" and found.get("n_directions"):
        words = words.replace("K ", f"{found['n_directions']} ", 1)
    return f"{method} method ({words})" if words else f"{method} method"


def order_section(data) -> list:
    """Order preservation: per-layer curves of the share of held-out checks that keep the order,
    one line per model (95% CI band), primary pooling; and the findings in one sentence, each
    number with the method that measured it. [] for a run without it."""
    from metaflow.cards import Markdown, VegaChart

    table, found = getattr(data, "order_preservation", None), (data.findings or {}).get("order_preservation")
    if table is None or not len(table) or not found:
        return []
    method = found.get("method", "per_axis")
    rows = table[table["pooling"] == found["pooling"]]
    values = clean(rows[["model", "layer", "preserved", "ci_low", "ci_high"]].to_dict("records"))
    x = {"field": "layer", "type": "ordinal", "title": "layer (0: embeddings)"}
    color = {"field": "model", "type": "nominal", "sort": list(dict.fromkeys(rows["model"]))}
    spec = {"$schema": VEGA, "height": 220,
            "title": f"Held-out checks that keep the order, by layer ({method} method, {found['pooling']}-token "
                     "pooling, 95% CI)",
            "data": {"values": values},
            "layer": [{"mark": {"type": "area", "opacity": 0.15},
                       "encoding": {"x": x, "y": {"field": "ci_low", "type": "quantitative"},
                                    "y2": {"field": "ci_high"}, "color": color}},
                      {"mark": {"type": "line", "point": True},
                       "encoding": {"x": x, "y": {"field": "preserved", "type": "quantitative",
                                                  "title": "share preserved", "scale": {"domain": [0, 1]}},
                                    "color": color}}]}
    at = ", ".join(f"{m} {fmt(v['preserved'], 3)} [{fmt(v['ci_low'], 3)}, {fmt(v['ci_high'], 3)}] ({method})"
                   for m, v in found["models"].items())
    return [Markdown(f"## Order preservation\nMeasured by the {order_method(found)}. At the deepest layer "
                     f"({found['layer']}), over {found['n_pairs']} held-out pairs: {at}. Probes are fit per model, "
                     f"so this measures whether order stays linearly readable, not whether the model is monotone "
                     f"(docs/method.md)."),
            VegaChart(spec)]
