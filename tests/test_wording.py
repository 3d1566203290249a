"""One voice: the experiment card, `compare` and the sweep report give the same numbers the same
verdict words, signs and decimals, and say how many seeds stand behind each verdict."""
import html
import re
import textwrap
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
from test_compare import fake_run
from test_sweep import grid_cells

from monollm.experiments import compare, sweep_report
from monollm.results import headline, verdicts, wording
from monollm.stats import t_interval

ABOVE = "dNLL above control uat baseline - monotonic"
HOTFLIP = "dNLL above control hotflip baseline - monotonic"


def html_rows(page: str) -> list[list[str]]:
    """The text of every table row of an HTML page, cell by cell."""
    cells = r"<t[dh][^>]*>(.*?)</t[dh]>"
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(cells, row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S)]


def report(tmp_path, per_seed: dict, grid=None, cells=None) -> str:
    """The sweep report's HTML page for one cell (or `cells`) with these numbers per seed."""
    grid = grid or {"mode": ("nonneg",)}
    cells = cells or {"mode=nonneg": per_seed}
    per_run = pd.DataFrame([{"cell": c, "seed": s, "run": f"MonoFlow/{s}", **{m: v[s] for m, v in numbers.items()}}
                            for c, numbers in cells.items() for s in range(len(next(iter(numbers.values()))))])
    written = sweep_report.write(str(tmp_path), "Sweep t", ["a line"], per_run, grid_cells(grid), grid)
    return open(written["html"]).read()


@pytest.mark.parametrize("per_seed, word", [([0.10, 0.20, 0.15], "monotonic more robust"),
                                            ([-0.10, -0.20, -0.15], "baseline more robust"),
                                            ([-0.10, 0.10, 0.02], "no significant difference")])
def test_the_card_compare_and_the_sweep_report_say_the_same(tmp_path, per_seed, word):
    mean, lo, hi = t_interval(per_seed)
    text = headline.interval(mean, lo, hi)
    assert re.fullmatch(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", text)
    # the card: an interval on that side of 0 gets this word, and its sentence carries the interval
    card = verdicts.compare_models(pd.DataFrame({"baseline": per_seed, "monotonic": [0.0] * 3}), 200, 0)
    assert card["verdict"] == word
    sentence = headline.attack_verdicts_sentence({"uat": {**card, "diff": mean, "ci_low": lo, "ci_high": hi}})
    assert f"uat {word} {text}" in sentence
    runs = [fake_run(str(30 + i), i) for i in range(3)]
    for run, x in zip(runs, per_seed):
        run.data.findings["robustness_above_control"]["uat"]["diff"] = x
    assert f"{ABOVE}: {text}, 3 seeds: {word}" in compare.format_table(compare.compare(runs))
    # the last cell, seeds needed, is given for worst cases only
    assert ["nonneg", "uat above ctrl", text, "3 seeds", word, ""] in html_rows(report(tmp_path, {ABOVE: per_seed}))


def test_one_seed_is_labelled_an_anecdote_everywhere(tmp_path):
    rows = html_rows(report(tmp_path, {ABOVE: [0.05]}))
    assert ["nonneg", "uat above ctrl", "+0.050", "1 seed", "an anecdote, not a verdict", ""] in rows
    text = compare.format_table(compare.compare([fake_run("30", 0)]))
    assert "1 seed: an anecdote, not a verdict" in text and "run more seeds" in text
    assert wording.seeds(1) == "1 seed: an anecdote, not a verdict" and wording.seeds(3) == "3 seeds"
    assert wording.across_seeds(0, float("nan"), float("nan")) == wording.NO_RESULT
    assert wording.across_seeds(3, 0.2, 0.2) == wording.NO_SPREAD  # every seed the same number: no interval to read


def decimals_of(text: str) -> set[int]:
    """The numbers of decimals of every decimal number in text."""
    return {len(m) for m in re.findall(r"(?<![\w.])[+-]?\d+\.(\d+)", text)}


AWKWARD = [0.05929, -0.004814, 0.0]
"""Numbers whose 4 significant digits once showed as +0.05929, -0.004814 and +0."""


def test_every_number_has_fixed_decimals(tmp_path):
    page = report(tmp_path, {ABOVE: AWKWARD, HOTFLIP: [0.1, 0.2, 0.3]})
    text = html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<style>.*?</style>", "", page, flags=re.S)))
    assert decimals_of(text) == {3}
    assert "+0.059" in text and "-0.005" in text and "+0.000" in text and not re.search(r"[+-]0(?![.\d])", text)
    runs = [fake_run(str(30 + i), i) for i in range(3)]
    for run, x in zip(runs, AWKWARD):
        run.data.findings["robustness_above_control"]["uat"]["diff"] = x
    table = compare.compare(runs)
    out = compare.format_table(table)
    caveat = set(textwrap.wrap(table.attrs["caveat"], 120))  # words, with a profile's file name ("pythia-1.4b")
    for line in (x for x in out.splitlines()[1:] if x not in caveat):  # the NLL cost has one decimal more
        assert decimals_of(line) <= ({4} if line.strip().startswith("NLL cost") else {3}), line
    assert f"{ABOVE}: +0.018 [-0.071, +0.107], 3 seeds: no significant difference" in out


def test_the_answer_per_cell_comes_before_the_contrasts(tmp_path):
    grid = {"mode": ("nonneg", "sign_frozen")}
    page = report(tmp_path, {}, grid, {"mode=nonneg": {ABOVE: [0.1, 0.2, 0.3]},
                                       "mode=sign_frozen": {ABOVE: [0.0, 0.1, 0.1]}})
    first_table = page[page.index("<table"):page.index("</table>")]
    assert page.index("<table") < page.index("<svg")  # the answer, then the contrasts' forest plot
    head, *rows = html_rows(first_table)
    assert head == ["mode", "measure", "mean [95% CI]", "seeds", "verdict", "seeds for 95% off 0"]
    assert [r[0] for r in rows] == list(grid["mode"])
    headers = set(re.findall(r"<th>(.*?)</th>", page))
    assert max(map(len, headers)) <= 24 and "uat above ctrl" in headers
    assert "uat above ctrl: " + ABOVE in html.unescape(page)  # each short header explained once
    assert page.count(wording.SIGNS) == 1  # the sign convention, once
    per_cell = sweep_report.cell_table(pd.DataFrame([{"cell": "mode=nonneg", "seed": 0, "run": "", ABOVE: 0.1}]),
                                       grid_cells(grid))
    contrast = sweep_report.contrasts(pd.DataFrame([{"cell": c.name, "seed": 0, "run": "", ABOVE: 0.1}
                                                    for c in grid_cells(grid)]), grid_cells(grid), grid)
    text = sweep_report.console_text(per_cell, contrast)
    assert text.index("The answer per cell") < text.index("Contrasts")
    assert max(len(line) for line in text.splitlines()) <= 120


def test_the_forest_plot_has_one_labelled_zero_line_and_round_ticks(tmp_path):
    grid = {"mode": ("nonneg", "sign_frozen", "abs_init_free")}
    per_run = pd.DataFrame([{"cell": c.name, "seed": s, "run": "", ABOVE: 0.13 * i + 0.05 * s - 0.07}
                            for i, c in enumerate(grid_cells(grid)) for s in range(3)])
    svg = ET.fromstring(sweep_report.forest_svg(sweep_report.contrasts(per_run, grid_cells(grid), grid), ABOVE))
    ns = "{http://www.w3.org/2000/svg}"
    lines, texts = svg.findall(f"{ns}line"), {t.text: t for t in svg.findall(f"{ns}text")}
    vertical = [ln for ln in lines if ln.get("x1") == ln.get("x2") and float(ln.get("y2")) - float(ln.get("y1")) > 20]
    assert len(vertical) == 1 and vertical[0].get("stroke-dasharray")  # one zero line, dashed, and nothing else
    zero = vertical[0].get("x1")
    assert texts["no difference"].get("x") == zero and texts["0"].get("x") == zero
    ticks = [float(t) for t in texts if t and re.fullmatch(r"[+-]\d\.\d{3}", t)]
    assert len(ticks) >= 2 and all(re.fullmatch(r"[+-]\d\.\d{3}", t) for t in texts if t and t[0] in "+-")
    steps = {round(b - a, 9) for a, b in zip(sorted(ticks + [0.0]), sorted(ticks + [0.0])[1:])}
    assert len(steps) == 1 and next(iter(steps)) in (0.05, 0.1, 0.2)  # evenly spaced round values


def test_the_sweep_report_says_in_how_many_seeds_a_verdict_was_flagged(tmp_path):
    """A cell whose uat verdict was flagged in 2 of its 3 seeds (per_run's `flags` column, as
    sweep.per_run writes it): the report's verdict leads with "not evidence of robustness" and the count."""
    flags = [{ABOVE: ["weak_guidance on monotonic"]}, {ABOVE: []}, {ABOVE: ["not_converged on monotonic"]}]
    per_run = pd.DataFrame([{"cell": "mode=nonneg", "seed": s, "run": f"MonoFlow/{s}", ABOVE: x,
                             sweep_report.FLAGS: flags[s]} for s, x in enumerate([0.10, 0.20, 0.15])])
    grid = {"mode": ("nonneg",)}
    written = sweep_report.write(str(tmp_path), "Sweep t", [], per_run, grid_cells(grid), grid)
    rows = html_rows(open(written["html"]).read())
    verdict = ("not evidence of robustness: flagged in 2 of 3 seeds (weak_guidance on monotonic, not_converged on "
               "monotonic); across them: monotonic more robust")
    assert ["nonneg", "uat above ctrl", "+0.150 [+0.026, +0.274]", "3 seeds", verdict, ""] in rows
    assert sweep_report.FLAGS not in sweep_report.metric_columns(per_run)
