"""The last screen of a run: what `end` prints to the console, read in a 120-column terminal.

Metaflow puts a prefix of about 63 characters (time, run id, step, task and pid) before every
line a step prints, so a line of the step's own may take only WIDTH columns for the terminal not
to wrap it. The screen holds the answer (the headline, with the perplexity cost and the seeds),
the profile's caveat where it has one, and the next commands, each on a row of its own; the full
tables stay in the run's `summary` (client.summary_text) and the file `end` writes it to.
"""
from __future__ import annotations

import re
import textwrap

PREFIX = "2026-12-07 10:00:00.000 [1733565600123456/end/123 (pid 4194304)] "
"""Metaflow's prefix at its widest for a local run's `end` (16-digit run id, a 7-digit pid)."""
WIDTH = 120 - len(PREFIX)
"""Columns a line of the last screen may take: 120 with the prefix."""
TITLE = "Answer (the experiment card opens with it):"
_GLUE = "\x00"
"""Stands for a space that wrapping must not break at (inside an interval '[-0.012, +0.130]')."""


def _glued(text: str) -> str:
    """`text` with the spaces inside [...] and before a '[' glued, so an estimate and its interval
    stay on one row, and those of a `make` command in a sentence ('make run SEED=N')."""
    text = re.sub(r"\[[^\[\]]*\]", lambda m: m.group(0).replace(" ", _GLUE), text)
    text = re.sub(r"\bmake [a-z]+(?: [A-Z]+=[^\s)]+)*", lambda m: m.group(0).replace(" ", _GLUE), text)  # commands
    return re.sub(r"(?<=\d) (?=\[)", _GLUE, text)


def wrap(text: str, width: int = WIDTH, indent: str = "") -> list[str]:
    """`text` as rows of at most `width` columns, broken at spaces only (never inside a number, a
    word, a command or an interval); a single unbreakable piece wider than `width` keeps its row.
    `indent` starts every row after the first (Metaflow strips it from a step's output)."""
    rows = textwrap.wrap(_glued(text), width, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)
    return [row.replace(_GLUE, " ") for row in rows] or [""]


def next_commands(run_id: str, tables: str) -> list[tuple[str, str]]:
    """(what it does, command) for each next step after run `run_id`, all from the repository root
    in the shell `make run` ran in (the Makefile sets the user and the interpreter); `tables`: the
    command that prints the full summary."""
    return [("The experiment card (report.html, any browser):", f"make card RUN={run_id}"),
            ("Every card (attacks, training), the experiment card first: open cards-RUN/index.html",
             f"make cards RUN={run_id}"),
            ("Every table, without the log prefixes:", tables),
            ("More seeds, then the verdicts across them:", "make run SEED=1"), ("", "make compare")]


def tables_command(kept: str | None, run_id: str) -> str:
    """How to print the full summary: `cat` its file (`kept`, written by client.keep_summary), or
    read the run's `summary` artifact where the datastore is remote (kept None)."""
    return f"cat {kept}" if kept else f"make summary RUN={run_id}"


def lines(headline: list[str], caveat: str, run_id: str, tables: str) -> list[str]:
    """The last screen's rows: the title, the caveat (a pipeline-check profile's line, "" for none),
    each headline sentence, then the next commands, each command on a row of its own."""
    out = [TITLE] + (wrap(caveat) if caveat else [])
    for sentence in headline:  # a blank row between sentences: Metaflow strips a row's leading spaces
        out += ["", *wrap(sentence)]
    out += ["", "Next, from the repository root:"]
    for what, command in next_commands(run_id, tables):
        out += (wrap(what) if what else []) + ([command] if command else [])
    return out


def render(data, run_id: str, kept: str | None) -> str:
    """The last screen of run `run_id` (`data`: the flow at `end`, or run.data); `kept`: the file
    holding the full summary (None: a remote datastore)."""
    from monollm.results.card_sections import arms_differ
    from monollm.results.headline import headline
    from monollm.results.wording import pipeline_check_line

    cfg = data.resolved_config
    return "\n".join(lines(headline(data.findings, arms_differ(cfg)), pipeline_check_line(cfg), run_id,
                           tables_command(kept, run_id)))
