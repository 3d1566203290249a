"""The card of one foreach branch of the attack step (`card get RUN/attack/TASK --id attack`).

    branch_card.fill(current.card["attack"], cfg, self.input, done, log=pipeline.log)   # the attack step

An attack branch's card shows its own rows: the search (forward passes spent, candidates scored,
the trigger or flips it found), the budget curve where the search recorded one (rows of kind
"budget"), the damage with its random control, and the most and least damaged examples. The
downstream and order branches say where their tables are shown (the experiment card).
"""
from __future__ import annotations

import pandas as pd

from monollm.results import card_sections as sections
from monollm.results import cards, report


def fill(card, cfg, branch: str, done, log=print):
    """Add the branch's components to `card` (current.card["attack"]). The card is a view: if
    building it fails, the branch's results stand and one line says why the card is empty."""
    try:
        card.extend(components(cfg, branch, done))
    except Exception as err:  # noqa: BLE001 - the tables are stored; only their view is lost
        log(f"[{branch}] the branch's card could not be built ({type(err).__name__}: {err}); its rows are stored")


def components(cfg, branch: str, done) -> list:
    """The branch's card components. cfg: the run's ExperimentConfig; done: its BranchResult."""
    from metaflow.cards import Markdown

    rows = getattr(done, "attack_rows", None)
    if rows is None or not len(rows):
        what = "downstream tasks" if getattr(done, "downstream_results", None) is not None else "order preservation"
        return [Markdown(f"# Branch `{branch}`\nThis branch measured {what} on all four models; the experiment card "
                         "(`card get RUN_ID/join_attacks`) shows its tables with the rest of the run.")]
    tokens = rows["tokens"].iloc[0] if "tokens" in rows.columns else ""
    summary = report.attack_summary(rows, cfg.attack.thresholds, cfg.eval.bootstrap, cfg.seed)
    text = done.token_text
    out = [Markdown(f"# Attack branch `{branch}`" + (f" ({tokens} tokens)" if tokens else "")),
           Markdown("## Search (forward passes spent on each model, what it found)"), cards._table(search_view(rows, done.token_text))]
    curve = budget_view(rows)
    if len(curve):
        out += [Markdown("## Budget curve (the best-so-far perturbation at a fraction of the search's forward "
                         "passes, scored on test; dNLL in nats per continuation token)"), cards._table(curve)]
    out += [Markdown("## Damage and its random control (dNLL in nats per continuation token, 95% CI)"),
            cards._table(cards.attack_view(summary, branch)),
            Markdown(f"## The {sections.PER_EXAMPLE} most and least damaged examples of each model\n"
                     + sections.examples_note(text)),
            Markdown(sections.examples_html(rows, branch, text))]
    return out


def search_view(rows: pd.DataFrame, text: dict | None = None) -> pd.DataFrame:
    """One row per model the search ran on: its ranking, forward passes and candidates spent, and
    what it found (the trigger of its first trial, its text as stored or decoded token by token
    from `text`; or the mean flips per example)."""
    own = rows[(rows.kind == "attack") & (rows.model == rows.source_model)]
    out = []
    for model, g in own.groupby("model", sort=False):
        ids = [int(i) for i in g["trigger_ids"].iloc[0]]
        trigger = (g["trigger_text"].iloc[0] if "trigger_text" in g else "") or "".join(
            (text or {}).get(i, f"#{i}") for i in ids)
        found = repr(trigger) if ids else f"{g['n_changed'].mean():.2f} flips per example"
        out.append({"model": model, "ranking": g["ranking"].iloc[0] if "ranking" in g else "-",
                    "forward passes": sections.fmt(int(g["forward_passes"].max())),
                    "candidates": sections.fmt(int(g["candidate_evals"].max())), "found": found})
    return pd.DataFrame(out)


def budget_view(rows: pd.DataFrame) -> pd.DataFrame:
    """The budget curve from rows of kind "budget" (budget_fraction, forward passes, dNLL on test),
    one row per model searched, model scored and fraction (a search's curve is scored on every
    model); empty where the search recorded none."""
    if "budget_fraction" not in rows.columns:
        return pd.DataFrame()
    b = rows[rows.kind == "budget"]
    if not len(b):
        return pd.DataFrame()
    g = b.groupby(["source_model", "model", "budget_fraction"], sort=False).agg(
        passes=("forward_passes", "max"), dnll=("dnll", "mean")).reset_index()
    return pd.DataFrame({"searched on": g["source_model"], "scored on": g["model"],
                         "budget": g["budget_fraction"].map("{:g}".format),
                         "forward passes": g["passes"].map(lambda n: sections.fmt(int(n))),
                         "dNLL (mean over examples)": g["dnll"].map(sections.signed)})
