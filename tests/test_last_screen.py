"""The last screen of a run as a 120-column terminal shows it, with Metaflow's prefix before every
line: no row wider than the terminal, no number, interval or command split across rows."""
import re

from test_cards import synthetic_run

from monollm.results import headline, last_screen, wording

TERMINAL = 120
PREFIX = "2026-12-07 10:00:00.000 [1733565600123456/end/123 (pid 12345)] "
"""A prefix as Metaflow writes it before each line of a local run's `end` (63 characters)."""


def terminal_rows(text: str, prefix: str = PREFIX, columns: int = TERMINAL) -> list[str]:
    """What a terminal of `columns` shows: each line prefixed, then cut into rows of `columns` characters."""
    rows = []
    for line in text.splitlines():
        shown = prefix + line
        rows += [shown[i:i + columns] for i in range(0, max(len(shown), 1), columns)]
    return rows


def test_the_terminal_model_cuts_a_long_line():
    assert terminal_rows("x" * 100, "p" * 63) == ["p" * 63 + "x" * 57, "x" * 43]


def test_the_last_screen_fits_120_columns_with_the_prefix_and_splits_no_number_or_command():
    data = synthetic_run()
    kept = "/tmp/monollm-MonoFlow-1733565600123456-summary.txt"
    text = last_screen.render(data, "1733565600123456", kept)
    rows = terminal_rows(text)
    assert len(PREFIX) == 63 and len(last_screen.PREFIX) >= len(PREFIX)
    assert len(rows) == len(text.splitlines())  # the terminal wraps no line
    # every number the answer states, with its interval, stands whole on one row
    f = data.findings
    wanted = [wording.interval(c["diff"], c["ci_low"], c["ci_high"])
              for c in [*f["worst_case"].values(), *f["robustness_above_control"].values()]]
    cost = f["nll_cost_monotonic_minus_baseline"]
    wanted.append(wording.interval(cost["diff"], cost["ci_low"], cost["ci_high"], wording.NLL_DECIMALS))
    for number in wanted:
        assert any(number in row for row in rows), number
    # and no row ends in the middle of a number: the next row never continues it
    for row, after in zip(rows, rows[1:]):
        body, following = row[len(PREFIX):], after[len(PREFIX):]
        assert not (re.search(r"[\d.]$", body) and re.match(r"[\d.]", following)), (row, after)
    # the commands: each a row of its own, whole
    commands = [f"make card RUN=1733565600123456", "make cards RUN=1733565600123456", f"cat {kept}", "make run SEED=1",
                "make compare"]
    for command in commands:
        assert PREFIX + command in rows, command
    # the answer is all there, in order: the caveat of the micro profile, then the headline
    body = " ".join(row[len(PREFIX):] for row in rows)
    joined = " ".join(body.split())
    caveat = wording.pipeline_check_line(data.resolved_config)
    assert caveat.startswith("Profile 'micro' checks the pipeline: a 2-layer model built here and trained on "
                             "generated text")
    for sentence in [caveat, *headline.headline(f)]:
        assert " ".join(sentence.split()) in joined
    # a command inside a sentence stays whole on its row too
    for command in ("make run SEED=N", "make compare"):
        assert any(command in row for row in rows if not row.endswith(command) or row == PREFIX + command)
    assert not any(row.endswith(" make") for row in rows)


def test_a_remote_datastore_gets_the_summary_command_and_a_paper_profile_no_caveat():
    data = synthetic_run()
    data.resolved_config = {**data.resolved_config, "pipeline_check": False}
    text = last_screen.render(data, "42", None)
    assert "make summary RUN=42" in text.splitlines()
    assert "checks the pipeline" not in text
    assert wording.pipeline_check_line({"name": "pythia-1.4b", "model": {"source": "hub"}}) == ""


def test_wrapping_keeps_an_interval_whole_even_at_the_edge():
    sentence = "uat no significant difference -0.005 [-0.056, +0.049] and more words"
    for width in range(20, 60):
        rows = last_screen.wrap(sentence + " (make run SEED=N) and (make compare).", width)
        assert any("make run SEED=N" in row for row in rows) and any("make compare" in row for row in rows)
        assert " ".join(rows) == sentence + " (make run SEED=N) and (make compare)."
        rows = last_screen.wrap(sentence, width)
        assert any("-0.005 [-0.056, +0.049]" in row for row in rows), width
        assert " ".join(rows) == sentence
