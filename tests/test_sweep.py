"""Sweeps: the sweep file and its checks, the grid of cells, the plan (skip / resume / run) from
run records, the report's statistics against a hand computation, and one real micro sweep."""
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib

import numpy as np
import pandas as pd
import pytest
from conftest import MICRO, ROOT, flow_env
from scipy import stats as st
from test_cards import synthetic_run

from monollm import config
from monollm.experiments import compare, sweep, sweep_report
from monollm.results import client
from monollm.experiments.plan import (Cell, RunRecord, SweepError, check_cells, check_key, expand, load_sweep, plan,
                                resolved, toml_text, write_cell)

MICRO_SWEEP = os.path.join(ROOT, "tests", "sweeps", "micro.toml")
ATTRIBUTION = os.path.join(ROOT, "config", "sweeps", "attribution.toml")


def sweep_file(folder, body: str, profile: str = MICRO) -> str:
    path = os.path.join(str(folder), "s.toml")
    with open(path, "w") as f:
        f.write(f'name = "t"\nprofile = "{os.path.relpath(profile, str(folder))}"\n' + body)
    return path


def micro_raw() -> dict:
    with open(MICRO, "rb") as f:
        return tomllib.load(f)


def test_the_shipped_sweeps_load_and_expand():
    s = load_sweep(ATTRIBUTION)
    assert s.profile == os.path.join(ROOT, "config", "tiny.toml") and s.seeds == (0, 1, 2)
    with open(s.profile, "rb") as f:
        cells = expand(s, tomllib.load(f))
    assert [c.name for c in cells] == ["monotonic.mode=nonneg", "monotonic.mode=sign_frozen",
                                       "monotonic.mode=abs_init_free"]
    resolved_configs = check_cells(cells, 0)
    assert [r["monotonic"]["mode"] for r in resolved_configs.values()] == ["nonneg", "sign_frozen", "abs_init_free"]
    micro = load_sweep(MICRO_SWEEP)
    first = expand(micro, micro_raw())[0].raw  # the micro profile as it is, the mode set
    assert first == {**micro_raw(), "monotonic": {**micro_raw()["monotonic"], "mode": "nonneg"}}


def test_grid_expansion_in_order_with_set_values(tmp_path):
    path = sweep_file(tmp_path, 'seeds = [3]\n[grid]\n"monotonic.mode" = ["nonneg", "sign_frozen"]\n'
                                'train.lr = [0.002, 0.004]\n[set]\n"attack.hotflip.max_flips" = 2\n')
    s = load_sweep(path)
    assert s.grid == {"monotonic.mode": ("nonneg", "sign_frozen"), "train.lr": (0.002, 0.004)}  # dotted = quoted
    cells = expand(s, micro_raw())
    assert [c.values for c in cells] == [
        (("monotonic.mode", m), ("train.lr", lr)) for m in ("nonneg", "sign_frozen") for lr in (0.002, 0.004)]
    assert cells[1].name == "monotonic.mode=nonneg,train.lr=0.004"
    cfg = config.load(cells[3].raw, seed=3)
    assert (cfg.monotonic.mode, cfg.train.lr, cfg.attack.params["hotflip"].max_flips) == ("sign_frozen", 0.004, 2)
    assert micro_raw()["train"]["lr"] == 0.002 and "mode" not in micro_raw()["monotonic"]  # the profile's dict untouched


@pytest.mark.parametrize("key, named", [
    ("monotonic.mdoe", "unknown key 'monotonic.mdoe'"), ("attack.hotflip.flips", "unknown key 'attack.hotflip.flips'"),
    ("attack.nosuch.steps", "unknown key 'attack.nosuch'"), ("monotonic", "key 'monotonic' is a table"),
    ("monotonic.mode.x", "unknown key 'monotonic.mode.x'"), ("seed", "list the seeds in `seeds`")])
def test_a_bad_grid_key_is_named_before_anything_runs(tmp_path, key, named):
    with pytest.raises(SweepError, match=named.replace(".", r"\.").replace("`", ".")):
        check_key(key)
    path = sweep_file(tmp_path, f'seeds = [0, 1]\n[grid]\n"{key}" = [1, 2]\n')
    with pytest.raises(SweepError, match=r"s\.toml: "):
        load_sweep(path)


def test_good_keys_pass():
    for key in ("monotonic.mode", "attack.hotflip.max_flips", "train.monotonic_lr", "eval.order.enabled", "attacks"):
        check_key(key)


def test_a_bad_value_names_the_cell_and_the_key(tmp_path):
    s = load_sweep(sweep_file(tmp_path, '[grid]\n"monotonic.mode" = ["nonneg", "bogus"]\n'))
    with pytest.raises(SweepError, match=r"cell monotonic\.mode=bogus: 'monotonic\.mode' is 'bogus'"):
        check_cells(expand(s, micro_raw()), 0)


def test_nothing_to_vary_fails(tmp_path):
    with pytest.raises(SweepError, match="nothing to vary"):
        load_sweep(sweep_file(tmp_path, "seeds = [0]\n"))
    with pytest.raises(SweepError, match="nothing to vary"):
        load_sweep(sweep_file(tmp_path, ""))  # no seeds: the profile's own, one
    assert load_sweep(sweep_file(tmp_path, "seeds = [0, 1]\n")).grid == {}


def test_other_file_errors_name_their_key(tmp_path):
    for body, named in (('seeds = [0, 0]\n[grid]\n"monotonic.mode" = ["nonneg"]\n', "lists a seed twice"),
                        ('[grid]\n"monotonic.mode" = []\n', "non-empty list"),
                        ('colour = 1\n[grid]\n"monotonic.mode" = ["nonneg"]\n', "unknown key 'colour'"),
                        ('[grid]\n"monotonic.mode" = ["nonneg"]\n[set]\n"monotonic.mode" = "nonneg"\n',
                         "both in \\[grid\\] and in \\[set\\]")):
        with pytest.raises(SweepError, match=named):
            load_sweep(sweep_file(tmp_path, body))


def test_cells_with_the_same_configuration_are_refused(tmp_path):
    s = load_sweep(sweep_file(tmp_path, '[grid]\n"resources.cpu" = [1, 2]\n'))  # where a run runs: not a setting
    with pytest.raises(SweepError, match=r"cells resources\.cpu=1 and resources\.cpu=2 resolve to the same"):
        check_cells(expand(s, micro_raw()), 0)
    s = load_sweep(sweep_file(tmp_path, '[grid]\n"train.lr" = [0.001, 1e-3]\n'))
    with pytest.raises(SweepError, match=r"two cells are named 'train\.lr=0\.001'"):
        check_cells(expand(s, micro_raw()), 0)


def test_cell_profiles_survive_toml_and_load_as_the_flow_loads_them(tmp_path):
    raw = config.to_dict(config.load(micro_raw()))
    raw["name"] = 'quote " and \u00e9'
    raw["monotonic"]["floor"] = 1e-05
    raw["data"]["inner"] = {}
    assert tomllib.loads(toml_text(raw)) == json.loads(json.dumps(raw))
    cell = expand(load_sweep(sweep_file(tmp_path, '[grid]\n"monotonic.init" = ["abs", "clip"]\n')), micro_raw())[1]
    path = write_cell(cell, str(tmp_path / "cells"))
    assert os.path.basename(path) == "monotonic.init=clip.toml"
    assert config.to_dict(config.load_file(path, seed=4)) == resolved(cell, 4)


def two_cells():
    raw = micro_raw()
    return [Cell(f"monotonic.mode={m}", (("monotonic.mode", m),), {**raw, "monotonic": {"mode": m}})
            for m in ("nonneg", "sign_frozen")]


def test_the_plan_skips_resumes_and_runs_by_configuration_not_tags():
    cells, seeds = two_cells(), (0, 1)
    expected = {(c.name, s): resolved(c, s) for c in cells for s in seeds}
    a0, a1, b1 = expected[("monotonic.mode=nonneg", 0)], expected[("monotonic.mode=nonneg", 1)], \
        expected[("monotonic.mode=sign_frozen", 1)]
    elsewhere = copy.deepcopy(a0)
    elsewhere["resources"]["memory"] = 64000  # where a run ran: the same computation
    other_lr = copy.deepcopy(expected[("monotonic.mode=sign_frozen", 0)])
    other_lr["train"]["lr"] = 0.5  # a profile edited since: not this cell
    records = [RunRecord("9", False, a1), RunRecord("8", True, b1), RunRecord("7", False, b1),
               RunRecord("6", True, other_lr), RunRecord("5", False, None), RunRecord("4", False, a1),
               RunRecord("3", True, elsewhere), RunRecord("2", True, a0)]  # newest first
    got = [(t.cell.name, t.seed, t.action, [r.id for r in t.runs]) for t in plan(cells, seeds, records, expected)]
    assert got == [("monotonic.mode=nonneg", 0, "skip", ["2", "3"]),  # oldest first
                   ("monotonic.mode=nonneg", 1, "resume", ["9"]),  # the newest failed run
                   ("monotonic.mode=sign_frozen", 0, "run", []),
                   ("monotonic.mode=sign_frozen", 1, "skip", ["8"])]


def test_the_flow_commands_of_run_and_resume():
    s = load_sweep(MICRO_SWEEP)
    cells = two_cells()
    tasks = plan(cells, (0,), [RunRecord("12", False, resolved(cells[1], 0))],
                 {(c.name, 0): resolved(c, 0) for c in cells})
    paths = {c.name: f"/x/{c.name}.toml" for c in cells}
    tags = ["--tag", "sweep:micro", "--tag"]
    assert sweep.command(s, tasks[0], paths, ["--with", "kubernetes"])[1:] == [
        sweep.FLOW_FILE, "--config", "config", "/x/monotonic.mode=nonneg.toml", "run", "--seed", "0",
        *tags, "cell:monotonic.mode=nonneg", "--with", "kubernetes"]
    assert sweep.command(s, tasks[1], paths, [], run_id_file="/o/running/x.run-id")[1:] == [
        sweep.FLOW_FILE, "resume", "--origin-run-id", "12", *tags, "cell:monotonic.mode=sign_frozen",
        "--run-id-file", "/o/running/x.run-id"]


def test_pick_takes_the_cost_and_robustness_above_control():
    numbers = compare.key_numbers(synthetic_run())
    picked = sweep_report.pick(numbers)
    worst = sweep_report.WORST + "universal triggers"  # the worst case first, then each attack's own claim
    assert list(picked) == [sweep_report.NLL_COST, sweep_report.PPL_RATIO, worst + " baseline - monotonic",
                            "dNLL above control uat baseline - monotonic"]
    assert all(picked[k] == numbers[k] for k in picked)
    assert sweep_report.reading(worst + " baseline - monotonic").startswith("positive: the monotonic model is damaged "
                                                                             "less than the baseline in the worst case")
    task = "downstream corpus_cloze acc "  # a run with downstream tasks: their cost, not each model's score
    picked = sweep_report.pick({**numbers, task + "monotonic - baseline": -0.25, task + "baseline": 0.5})
    assert list(picked)[4:] == [task + "monotonic - baseline"] and picked[task + "monotonic - baseline"] == -0.25
    assert sweep_report.reading(task + "monotonic - baseline").startswith("negative: the constraint costs accuracy")


def grid_cells(grid: dict) -> list[Cell]:
    import itertools

    return [Cell(",".join(f"{k}={v}" for k, v in zip(grid, combo)), tuple(zip(grid, combo)), {})
            for combo in itertools.product(*grid.values())]


def t_by_hand(x):
    x = np.asarray(x, float)
    half = st.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def test_cells_and_contrasts_paired_by_seed_against_a_hand_computation():
    grid = {"mode": ("nonneg", "sign_frozen", "abs_init_free")}
    cells = grid_cells(grid)
    cost = {"mode=nonneg": [0.30, 0.35, 0.20], "mode=sign_frozen": [0.10, 0.05, 0.12],
            "mode=abs_init_free": [0.25, np.nan, 0.21]}  # seed 1 of abs_init_free failed
    above = {"mode=nonneg": [0.5, 0.9, 0.4], "mode=sign_frozen": [0.1, 0.6, 0.3], "mode=abs_init_free": [0.2, 0.0, 0.1]}
    rows = [{"cell": c, "seed": s, "run": f"MonoFlow/{c}{s}", "cost": cost[c][s], "above": above[c][s]}
            for c in cost for s in range(3) if not (c == "mode=abs_init_free" and s == 1)]
    per_run = pd.DataFrame(rows)
    by_cell = sweep_report.cell_table(per_run, cells).set_index(["cell", "metric"])
    r = by_cell.loc[("mode=nonneg", "cost")]
    assert r["n"] == 3 and (r["mean"], r["ci_low"], r["ci_high"]) == pytest.approx(t_by_hand([0.30, 0.35, 0.20]))
    assert by_cell.loc[("mode=abs_init_free", "above"), "n"] == 2
    c = sweep_report.contrasts(per_run, cells, grid).set_index(["value", "metric"])
    sf = c.loc[("sign_frozen", "above")]  # nonneg minus sign_frozen, seed by seed: 0.4, 0.3, 0.1
    assert (sf["n"], sf["seeds"], sf["first"], sf["held"]) == (3, "0,1,2", "nonneg", "")
    assert (sf["mean"], sf["ci_low"], sf["ci_high"]) == pytest.approx(t_by_hand([0.4, 0.3, 0.1]))
    # paired, not two independent means: the unpaired interval of the same numbers is wider
    unpaired = st.ttest_ind([0.5, 0.9, 0.4], [0.1, 0.6, 0.3]).confidence_interval()
    assert sf["ci_high"] - sf["ci_low"] < unpaired.high - unpaired.low
    ab = c.loc[("abs_init_free", "cost")]  # only the seeds both cells have: 0 and 2
    assert (ab["n"], ab["seeds"]) == (2, "0,2")
    assert (ab["mean"], ab["ci_low"], ab["ci_high"]) == pytest.approx(t_by_hand([0.30 - 0.25, 0.20 - 0.21]))
    assert len(c) == 4  # two values against the first, two metrics


def test_contrasts_hold_the_other_grid_keys_fixed():
    grid = {"mode": ("nonneg", "sign_frozen"), "lr": (1, 2)}
    cells = grid_cells(grid)
    value = {"mode=nonneg,lr=1": 1.0, "mode=nonneg,lr=2": 10.0, "mode=sign_frozen,lr=1": 3.0,
             "mode=sign_frozen,lr=2": 40.0}
    per_run = pd.DataFrame([{"cell": c, "seed": s, "run": "", "m": v + s} for c, v in value.items() for s in (0, 1)])
    c = sweep_report.contrasts(per_run, cells, grid)
    per = c[c.scope == sweep_report.PER_COMBINATION]
    got = {(r.key, r.held): r.mean for r in per.itertuples()}
    assert got == pytest.approx({("mode", "lr=1"): 1.0 - 3.0, ("mode", "lr=2"): 10.0 - 40.0,
                                 ("lr", "mode=nonneg"): 1.0 - 10.0, ("lr", "mode=sign_frozen"): 3.0 - 40.0})
    assert (c["ci_low"] == c["mean"]).all()  # both seeds give the same difference: no spread
    pooled = c[c.scope == sweep_report.POOLED].set_index("key")
    assert list(pooled.index) == ["mode", "lr"] and pooled.loc["mode", "held"] == "mean over lr in [1, 2]"


def test_pooled_contrasts_average_the_paired_difference_over_the_other_keys():
    """Three keys; the pooled contrast of mode against a hand computation: per seed, the mean over
    the four (lr, init) combinations of nonneg minus sign_frozen at that seed and combination,
    then the t-interval across seeds. Seed 2 lacks one cell, so it is left out of the pooled row
    (not averaged over fewer combinations) but kept where its pairs are complete."""
    grid = {"mode": ("nonneg", "sign_frozen"), "lr": (1, 2), "init": ("abs", "clip")}
    cells = grid_cells(grid)
    rng = np.random.default_rng(5)
    value = {(c.name, s): float(rng.normal()) for c in cells for s in range(4)}
    missing = ("mode=sign_frozen,lr=2,init=clip", 2)
    per_run = pd.DataFrame([{"cell": c, "seed": s, "run": "", "m": v} for (c, s), v in value.items()
                            if (c, s) != missing])
    c = sweep_report.contrasts(per_run, cells, grid)
    pooled = c[(c.scope == sweep_report.POOLED) & (c.key == "mode")].iloc[0]
    combos = [(lr, init) for lr in (1, 2) for init in ("abs", "clip")]
    by_hand = [np.mean([value[(f"mode=nonneg,lr={lr},init={i}", s)] - value[(f"mode=sign_frozen,lr={lr},init={i}", s)]
                        for lr, i in combos]) for s in (0, 1, 3)]
    assert (pooled["n"], pooled["seeds"], pooled["first"], pooled["value"]) == (3, "0,1,3", "nonneg", "sign_frozen")
    assert (pooled["mean"], pooled["ci_low"], pooled["ci_high"]) == pytest.approx(t_by_hand(by_hand))
    assert pooled["held"] == "mean over lr in [1, 2]; init in ['abs', 'clip']"
    per = c[(c.scope == sweep_report.PER_COMBINATION) & (c.key == "mode")].set_index("held")
    assert list(per.index) == ["lr=1, init=abs", "lr=1, init=clip", "lr=2, init=abs", "lr=2, init=clip"]
    assert per.loc["lr=1, init=abs", "seeds"] == "0,1,2,3" and per.loc["lr=2, init=clip", "seeds"] == "0,1,3"
    lr = c[(c.scope == sweep_report.POOLED) & (c.key == "lr")].iloc[0]  # lr=1 minus lr=2 over mode x init
    assert lr["seeds"] == "0,1,3"
    assert lr["held"] == "mean over mode in ['nonneg', 'sign_frozen']; init in ['abs', 'clip']"
    assert len(c) == 3 * (4 + 1)  # per key: four combinations of the other two, and the pooled row
    one_key = sweep_report.contrasts(per_run[per_run.cell.str.contains("lr=1,init=abs")],
                                     [x for x in cells if x.name.endswith("lr=1,init=abs")], {"mode": grid["mode"]})
    assert (one_key.scope == sweep_report.PER_COMBINATION).all()  # one key: nothing to pool over


def test_the_html_report_is_standalone_with_a_forest_plot(tmp_path):
    grid = {"mode": ("nonneg", "sign_frozen")}
    per_run = pd.DataFrame([{"cell": c.name, "seed": s, "run": "", sweep_report.NLL_COST: 0.1 * s + i}
                            for i, c in enumerate(grid_cells(grid)) for s in range(3)])
    written = sweep_report.write(str(tmp_path), "Sweep t", ["a line"], per_run, grid_cells(grid), grid)
    page = open(written["html"]).read()
    assert "<script" not in page and page.count("<svg") == 1 and page.count("<circle") == 1
    assert "nonneg \u2212 sign_frozen" in page and "positive: the constraint costs perplexity" in page
    assert pd.read_csv(tmp_path / "report.csv")["cell"].tolist() == ["mode=nonneg", "mode=sign_frozen"]
    assert pd.read_csv(tmp_path / "contrasts.csv")["mean"].tolist() == pytest.approx([-1.0])


def test_the_report_says_the_seeds_needed_and_the_compute_multiplier_per_cell(tmp_path):
    """One cell, worst cases 0.1, 0.2, 0.3 across seeds: about 4 seeds (t_3 * 0.1 / 2 = 0.159 < 0.2 <
    t_2 * 0.1 / sqrt(3) = 0.248). Multipliers 2 and 8 (geometric mean 4) and a lower bound, counted apart."""
    grid = {"mode": ("nonneg",)}
    cells = grid_cells(grid)
    worst = sweep_report.WORST + "universal triggers baseline - monotonic"
    per_run = pd.DataFrame([{"cell": cells[0].name, "seed": s, "run": "", worst: v, sweep_report.NLL_COST: 0.1}
                            for s, v in enumerate((0.1, 0.2, 0.3))])
    entry = {"target": 0.05, "baseline": 100.0, "monotonic": 200.0, "ci_low": 1.0, "ci_high": 3.0,
             "baseline_bound": "=", "monotonic_bound": "="}
    per_run.attrs["compute"] = {cells[0].name: [{"universal triggers": {"1/4": {**entry, "ratio": r, "bound": b}}}
                                                for r, b in ((2.0, "="), (8.0, "="), (30.0, ">"))]}
    written = sweep_report.write(str(tmp_path), "Sweep t", [], per_run, cells, grid)
    report = pd.read_csv(tmp_path / "report.csv").set_index("metric")
    assert report.loc[worst, "seeds_needed"] == "about 4" and pd.isna(report.loc[sweep_report.NLL_COST, "seeds_needed"])
    compute = pd.read_csv(tmp_path / "compute.csv").iloc[0]
    assert (compute["n"], compute["lower_bounds"]) == (2, 1) and compute["ratio"] == pytest.approx(4.0)
    page = open(written["html"]).read()
    assert "Attack compute multiplier" in page and "4.0x [" in page and "1 lower" in page
    text = sweep_report.console_text(written["cells"], written["contrasts"], written["compute"])
    mine = text[text.index("Seeds needed per family"):].splitlines()  # what the report adds, within 120 columns
    assert "4.0x [" in text and all(len(line) <= 120 for line in mine)
    assert "mode=nonneg, universal triggers: about 4" in text
    per_run.attrs.clear()  # runs made without findings["compute"]
    no_compute = sweep_report.write(str(tmp_path / "none"), "Sweep t", [], per_run, cells, grid)
    assert "Attack compute multiplier" not in open(no_compute["html"]).read()


def test_verdicts_in_the_cards_words():
    above = sweep_report.ABOVE + "uat baseline - monotonic"
    assert sweep_report.verdict(above, 3, 0.1, 0.3) == "monotonic more robust"
    assert sweep_report.verdict(above, 3, -0.1, 0.3) == "no significant difference"
    assert sweep_report.verdict(above, 1, float("nan"), float("nan")) == "an anecdote, not a verdict"
    assert sweep_report.verdict(sweep_report.NLL_COST, 3, 0.1, 0.3) == "costs perplexity"
    assert sweep_report.verdict(sweep_report.PPL_RATIO, 3, 1.1, 1.3) == ""  # a ratio: the NLL cost has the verdict


def test_dry_run_prints_the_plan_and_writes_the_cells(tmp_path, capsys):
    assert sweep.main([MICRO_SWEEP, "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cell monotonic.mode=nonneg seed 0: run" in out and "cell monotonic.mode=sign_frozen seed 0: run" in out
    assert sorted(os.listdir(tmp_path / "cells")) == ["monotonic.mode=nonneg.toml", "monotonic.mode=sign_frozen.toml"]
    assert not (tmp_path / "logs").exists()


def test_a_bad_sweep_stops_with_one_line(tmp_path, capsys):
    assert sweep.main([sweep_file(tmp_path, '[grid]\n"monotonic.mdoe" = [1]\n'), "--out", str(tmp_path)]) == 2
    assert "unknown key 'monotonic.mdoe'" in capsys.readouterr().err
    assert not (tmp_path / "cells").exists()


@pytest.mark.flow
def test_a_micro_sweep_runs_resumes_a_failed_run_then_skips_and_reports(micro_run, tmp_path, monkeypatch, capsys):
    """Two cells x one seed on the micro profile. The nonneg cell at seed 0 has the micro run's
    configuration: tagged for the sweep, it is skipped (matched by configuration), and the other
    cell runs for real, taking the micro run's setup (same seed and setup configuration). That
    run fails in `evaluate`: the first invocation allows a foreach 2 branches
    (`-- --max-num-splits 2`) and the micro profile has 7 (five attacks, downstream, order).
    Running the sweep again resumes the failed run (without the limit) to success; its baseline,
    trained afresh from the micro run's setup, has the micro run's perplexity to the last bit. A
    third invocation skips both; the report has both cells and their contrast equals the
    difference of their runs."""
    from metaflow import Run, namespace

    namespace(None)
    own = Run(micro_run.pathspec)
    tags = ["sweep:micro", "cell:monotonic.mode=nonneg"]
    own.add_tags(tags)
    try:
        monkeypatch.chdir(tmp_path)
        out = tmp_path / "sweep"
        assert sweep.main([MICRO_SWEEP, "--out", str(out), "--", "--max-num-splits", "2"]) == 1
        first = capsys.readouterr().out
        assert first.count(f": skip: done by run {micro_run.id}") == 1, first
        assert first.count("] start cell") == 1 and first.count("FAILED (exit") == 1, first
        assert f"seed 0: run, setup from run {micro_run.pathspec} (log:" in first, first
        failed = re.search(r"run (\d+) FAILED", first).group(1)
        log = (out / "logs" / "monotonic.mode=sign_frozen.seed0.log").read_text()
        assert "Foreach in step evaluate yielded 7 child steps" in log, log[-2000:]
        assert sweep.main([MICRO_SWEEP, "--out", str(out)]) == 0
        second = capsys.readouterr().out
        assert f"seed 0: resume failed run {failed}" in second and second.count("succeeded after") == 1, second
        assert sweep.main([MICRO_SWEEP, "--out", str(out)]) == 0
        again = capsys.readouterr().out
        assert again.count(": skip: done by run") == 2 and "start cell" not in again, again
    finally:
        own.remove_tags(tags)  # the micro run is shared with the other flow tests
    cells = pd.read_csv(out / "report.csv")
    assert sorted(set(cells["cell"])) == ["monotonic.mode=nonneg", "monotonic.mode=sign_frozen"]
    assert (cells["n"] == 1).all()
    assert {"downstream corpus_cloze acc monotonic - baseline",
            "downstream corpus_choice acc monotonic - baseline"} <= set(cells["metric"])
    runs = pd.read_csv(out / "runs.csv").set_index("cell")
    assert runs.loc["monotonic.mode=nonneg", "run"] == micro_run.pathspec
    new = Run(runs.loc["monotonic.mode=sign_frozen", "run"])
    assert {"sweep:micro", "cell:monotonic.mode=sign_frozen"} <= set(new.user_tags)
    assert new.data.resolved_config["monotonic"]["mode"] == "sign_frozen"
    assert client.origin_run_id(new) == failed  # the resumed copy of the failed run counts
    assert new.data.setup_origin == micro_run.pathspec and new.data.setup_key == own.data.setup_key
    assert new.data.reference_model == own.data.reference_model
    ppl = {r.data.setup_origin: dict(zip(r.data.perplexity["model"], r.data.perplexity["perplexity"]))
           for r in (own, new)}
    assert ppl[micro_run.pathspec]["baseline"] == ppl[None]["baseline"]  # trained again, the same numbers
    assert ppl[micro_run.pathspec]["reference"] == ppl[None]["reference"]
    metric = "dNLL above control hotflip baseline - monotonic"
    contrast = pd.read_csv(out / "contrasts.csv").set_index("metric").loc[metric]
    assert contrast["mean"] == pytest.approx(runs.loc["monotonic.mode=nonneg", metric]
                                             - runs.loc["monotonic.mode=sign_frozen", metric])


FAKE_FLOW = """import sys
seed = sys.argv[sys.argv.index('--seed') + 1]
if '--run-id-file' in sys.argv:
    with open(sys.argv[sys.argv.index('--run-id-file') + 1], 'w') as f:
        f.write(f'7{seed}')
print('Workflow starting (run-id 99), a line of the log that names another run')
sys.exit(3 if 'sign_frozen' in ' '.join(sys.argv) else 0)
"""


def test_a_failed_run_never_stops_the_others(tmp_path, monkeypatch, capsys):
    """execute with a stand-in flow script that fails for one cell: every task still runs, each
    with its log, a progress line at start and finish, and the failure is reported with its exit
    code. The run id is the one Metaflow writes to --run-id-file, not one the log mentions; a
    second attempt appends to the log after its own header."""
    fake = tmp_path / "flow.py"
    fake.write_text(FAKE_FLOW)
    monkeypatch.setattr(sweep, "FLOW_FILE", str(fake))
    cells = two_cells()
    tasks = plan(cells, (0, 1), [], {(c.name, s): resolved(c, s) for c in cells for s in (0, 1)})
    done = sweep.execute(load_sweep(MICRO_SWEEP), tasks, {c.name: "x.toml" for c in cells}, str(tmp_path), 2)
    assert [(d["task"].cell.name, d["task"].seed, d["rc"]) for d in done] == [
        ("monotonic.mode=nonneg", 0, 0), ("monotonic.mode=nonneg", 1, 0),
        ("monotonic.mode=sign_frozen", 0, 3), ("monotonic.mode=sign_frozen", 1, 3)]
    assert [d["run_id"] for d in done] == ["70", "71", "70", "71"]
    out = capsys.readouterr().out
    assert out.count("] start cell") == 4 and out.count("succeeded after") == 2 and out.count("FAILED (exit 3") == 2
    assert sorted(os.listdir(tmp_path / "logs"))[0] == "monotonic.mode=nonneg.seed0.log"
    assert not os.listdir(tmp_path / "running")  # no run is going
    sweep.execute(load_sweep(MICRO_SWEEP), tasks[2:3], {c.name: "x.toml" for c in cells}, str(tmp_path))
    log = (tmp_path / "logs" / "monotonic.mode=sign_frozen.seed0.log").read_text()
    assert log.count("===== ") == 2 and log.count("(run-id 99)") == 2, log
    assert re.search(r"===== .* sweep pid \d+ on .* starts: .*flow\.py --config config x\.toml run --seed 0", log)


SLOW_FLOW = """import os, signal, sys, time
log = open(os.environ['SLOW_FLOW_EVENTS'], 'a')
def stop(signum, frame):
    log.write(f'got {signal.Signals(signum).name}\\n'); log.flush()
    time.sleep(1)  # the sweep must wait for this
    log.write('stopped\\n'); log.close()
    sys.exit(1)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
log.write('started\\n'); log.flush()
time.sleep(120)
"""
SWEEP = """import sys
from monollm.experiments import sweep
sweep.FLOW_FILE = sys.argv[1]
sweep.report = lambda s, cells, tasks, out: print('pairs:', sorted((t.cell.name, t.action, len(t.runs)) for t in tasks))
sys.exit(sweep.main(sys.argv[2:]))
"""
"""`python -m monollm.sweep` with another flow file and a report that only lists the pairs."""


def wait_for(what: str, ready, timeout: float, proc=None, output=None):
    end = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > end or (proc is not None and proc.poll() is not None):
            raise AssertionError(f"no {what} after {timeout} s" + (f": {output.read_text()}" if output else ""))
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_sweep_reaches_its_run_and_the_sweep_waits_for_it(tmp_path, signum):
    """SIGTERM or SIGINT to the sweep process alone: its run (in a process group of its own) gets
    the signal, the sweep waits until the run has stopped, starts no other run and exits 128 + N."""
    fake = tmp_path / "flow.py"
    fake.write_text(SLOW_FLOW)
    out, printed = tmp_path / "out", tmp_path / "sweep.out"
    events = tmp_path / "events"
    env = flow_env(METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"), SLOW_FLOW_EVENTS=str(events))
    with open(printed, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", SWEEP, str(fake), MICRO_SWEEP, "--out", str(out),
                                 "--no-reuse-setup"], env=env, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_for("run", lambda: events.exists() and "started" in events.read_text(), 60, proc, printed)
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 128 + signum, printed.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert events.read_text() == f"started\ngot {signum.name}\nstopped\n"  # stopped before the sweep ended
    assert os.listdir(out / "logs") == ["monotonic.mode=nonneg.seed0.log"], printed.read_text()
    assert f"sweep: stopped by {signum.name}" in printed.read_text()


STAND_IN = """import os, time
from metaflow import Config, FlowSpec, Parameter, current, step


class MonoFlow(FlowSpec):
    config = Config("config", parser="monollm.profiles.parse")
    seed = Parameter("seed", type=int, default=None)

    @step
    def start(self):
        from monollm import config
        self.resolved_config = config.to_dict(config.load(self.config.to_dict(), seed=self.seed))
        with open(os.path.join(MARKS, self.resolved_config["monotonic"]["mode"]), "a") as f:
            f.write(current.run_id + "\\n")
        print("the run begins", flush=True)
        for _ in range(600):
            if os.path.exists(os.path.join(MARKS, "go")):
                break
            time.sleep(0.2)
        self.next(self.end)

    @step
    def end(self):
        print("the run ends")


if __name__ == "__main__":
    MonoFlow()
"""
"""A MonoFlow that stores `start`'s resolved_config as the flow does, counts its runs per mode
in MARKS and waits there for a file `go`."""


def restart_after_the_first(procs: list, args, env, cwd, out, marks, timeout: int):
    """Start the sweep again (its output to `out`), wait until it says it waits for the first sweep's
    run, let the stand-in runs end (`marks`/go) and check that it then finishes cleanly."""
    with open(out, "w") as f:
        procs.append(subprocess.Popen(args, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT))
    wait_for("the wait for the first run", lambda: "still going; waiting for it" in out.read_text(), 60,
             procs[-1], out)
    (marks / "go").touch()
    assert procs[-1].wait(timeout=timeout) == 0, out.read_text()


@pytest.mark.flow
def test_a_sweep_killed_outright_never_runs_a_pair_twice(tmp_path):
    """SIGKILL to the sweep process alone while its first run goes (a stand-in MonoFlow, see
    STAND_IN): the run goes on; the sweep started again waits for it, then skips its pair and
    runs the other. One run per pair, and the first pair's log holds its run's whole output."""
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()
    flow = tmp_path / "flow.py"
    flow.write_text(STAND_IN.replace("MARKS, ", f"{str(marks)!r}, "))
    path = tmp_path / "killed.toml"
    path.write_text(f'name = "killed"\nprofile = "{MICRO}"\nseeds = [0]\n'
                    '[grid]\n"monotonic.mode" = ["nonneg", "sign_frozen"]\n')
    env = flow_env(METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path / "ds"))
    args = [sys.executable, "-c", SWEEP, str(flow), str(path), "--out", str(out), "--no-reuse-setup"]
    first_out, second_out = tmp_path / "first.out", tmp_path / "second.out"
    procs = []
    try:
        with open(first_out, "w") as f:
            procs.append(subprocess.Popen(args, env=env, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT))
        wait_for("first run", (marks / "nonneg").exists, 120, procs[0], first_out)
        procs[0].kill()
        procs[0].wait()
        restart_after_the_first(procs, args, env, tmp_path, second_out, marks, timeout=180)
    finally:
        (marks / "go").touch()  # every stand-in run ends
        for p in procs:
            if p.poll() is None:
                p.kill()
    second = second_out.read_text()
    assert "pairs: [('monotonic.mode=nonneg', 'skip', 1), ('monotonic.mode=sign_frozen', 'skip', 1)]" in second
    assert [len((marks / m).read_text().split()) for m in ("nonneg", "sign_frozen")] == [1, 1], second
    log = (out / "logs" / "monotonic.mode=nonneg.seed0.log").read_text()
    assert log.count("===== ") == 1 and "\0" not in log and "the run begins" in log and "the run ends" in log, log


def test_an_unknown_user_stops_the_sweep_with_one_line(tmp_path, monkeypatch, capsys):
    for var in ("METAFLOW_USER", "SUDO_USER", "USERNAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("USER", "root")  # Metaflow refuses root as it refuses no user
    assert sweep.main([MICRO_SWEEP, "--out", str(tmp_path), "--dry-run"]) == 2
    assert "set USERNAME" in capsys.readouterr().err


def test_a_second_invocation_stops_at_the_lock_and_a_stale_lock_is_taken_over(tmp_path, monkeypatch, capsys):
    """The lock names its holder; a live holder stops a second invocation before it plans, a dead
    one (its pid no longer alive on this host) is taken over with a note; --dry-run and
    --report-only take no lock."""
    import socket
    import subprocess
    import sys

    from monollm.experiments import lock

    path, note = lock.acquire(str(tmp_path), "python -m monollm.sweep s.toml")
    assert note is None and json.load(open(path))["pid"] == os.getpid()
    with pytest.raises(lock.SweepLocked, match=f"pid {os.getpid()} on host .* started .*rm {path}"):
        lock.acquire(str(tmp_path))
    planned = []
    monkeypatch.setattr(sweep, "records", lambda *a, **k: planned.append(1) or [])
    assert sweep.main([MICRO_SWEEP, "--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert f"holds the lock {path}: pid {os.getpid()}" in err and f"rm {path}" in err and not planned
    assert sweep.main([MICRO_SWEEP, "--out", str(tmp_path), "--dry-run"]) == 0 and planned  # no lock needed
    lock.release(path)
    assert not os.path.exists(path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # a process that has exited
    with open(path, "w") as f:
        json.dump({"pid": dead, "host": socket.gethostname(), "started": "earlier"}, f)
    mine, note = lock.acquire(str(tmp_path))
    assert mine == path and f"took over the stale lock {path} of pid {dead}" in note
    assert json.load(open(path))["pid"] == os.getpid()
    lock.release(path)
    with open(path, "w") as f:  # another host's lock: its pid cannot be checked, so it is never taken over
        json.dump({"pid": dead, "host": "elsewhere", "started": "earlier"}, f)
    with pytest.raises(lock.SweepLocked, match="on host elsewhere"):
        lock.acquire(str(tmp_path))


def test_the_lock_is_released_when_the_sweep_ends(tmp_path, monkeypatch):
    from monollm.experiments import lock

    monkeypatch.setattr(sweep, "records", lambda *a, **k: [])
    seen = []
    monkeypatch.setattr(sweep, "execute", lambda *a, **k: seen.append(os.path.exists(tmp_path / lock.FILE)) or [])
    monkeypatch.setattr(sweep, "report", lambda *a, **k: None)
    assert sweep.main([MICRO_SWEEP, "--out", str(tmp_path)]) == 1  # nothing ran: pairs not done
    assert seen == [True] and not (tmp_path / lock.FILE).exists()


def test_a_restarted_sweep_waits_for_recorded_runs_and_clears_the_records(tmp_path, capsys):
    """<out>/running: a record of a process still going is waited for, one of a process that has
    ended (or a record cut short) is cleared, and one from another host stops the sweep."""
    from monollm.experiments import lock

    folder, running = str(tmp_path), tmp_path / lock.RUNNING
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.record_run(folder, "a.seed0", int(gone.stdout), str(running / "a.seed0.run-id"))
    (running / "b.seed0.json").write_text("")
    going = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    lock.record_run(folder, "c.seed0", going.pid, str(running / "c.seed0.run-id"))
    (running / "c.seed0.run-id").write_text("17")
    lock.wait_for_earlier_runs(folder, poll_s=0.05)
    assert going.poll() is not None and not os.listdir(running)  # it ended before the wait did
    out = capsys.readouterr().out
    assert "b.seed0.json names no process" in out and "c.seed0: run 17 (pid" in out and "a.seed0" not in out
    lock.record_run(folder, "d.seed0", going.pid, str(running / "d.seed0.run-id"))
    path = running / "d.seed0.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "host": "elsewhere"}))
    with pytest.raises(lock.SweepLocked, match="started on host elsewhere"):
        lock.wait_for_earlier_runs(folder)


def test_an_argo_trigger_takes_the_run_id_metaflow_writes(tmp_path, capsys):
    """`--argo trigger` reads each triggered run's id from --run-id-file, not from its output."""
    from monollm.cluster import argo

    fake = tmp_path / "flow.py"
    fake.write_text("import sys\nseed = sys.argv[sys.argv.index('--seed') + 1]\n"
                    "if '--run-id-file' in sys.argv:\n"
                    "    open(sys.argv[sys.argv.index('--run-id-file') + 1], 'w').write(f'argo-run-{seed}')\n"
                    "print('Workflow triggered (run-id argo-other), a line that names another run')\n")
    cells = two_cells()
    tasks = plan(cells, (0, 1), [], {(c.name, s): resolved(c, s) for c in cells for s in (0, 1)})
    assert argo.trigger(str(fake), load_sweep(MICRO_SWEEP), tasks[:2], {c.name: "x.toml" for c in cells},
                        str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "seed 0: triggered run argo-run-0" in out and "seed 1: triggered run argo-run-1" in out, out


HELD_FLOW = """import json, os, sys, time
marks = os.environ['MARKS']
path, seed = sys.argv[sys.argv.index('--config') + 2], int(sys.argv[sys.argv.index('--seed') + 1])
run_id = str(time.time_ns())
with open(sys.argv[sys.argv.index('--run-id-file') + 1], 'w') as f:
    f.write(run_id)
with open(os.path.join(marks, 'started'), 'a') as f:
    f.write(os.path.basename(path) + '\\n')
while not os.path.exists(os.path.join(marks, 'go')):
    time.sleep(0.05)
with open(os.path.join(marks, 'runs.jsonl'), 'a') as f:
    f.write(json.dumps({'id': run_id, 'path': path, 'seed': seed}) + '\\n')
"""
"""A stand-in flow (no Metaflow): notes that it started, waits for MARKS/go, then records a
successful run of its cell's profile and seed in MARKS/runs.jsonl."""
HELD_SWEEP = """import json, os, sys, threading
from monollm import config
from monollm.experiments import lock, sweep
from monollm.experiments.plan import RunRecord
sweep.FLOW_FILE = sys.argv[1]
marks = os.environ['MARKS']
def records(name, flow='MonoFlow', namespace=None):
    path = os.path.join(marks, 'runs.jsonl')
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    return [RunRecord(r['id'], True, config.to_dict(config.load_file(r['path'], seed=r['seed']))) for r in rows[::-1]]
sweep.records = records
sweep.report = lambda s, cells, tasks, out: print('pairs:', sorted((t.cell.name, t.action, len(t.runs)) for t in tasks))
def hold():
    open(os.environ['HOLD'], 'w').close()
    threading.Event().wait()  # until the test kills this sweep
if os.environ.get('HOLD'):
    lock.HOOKS['started'] = hold
sys.exit(sweep.main(sys.argv[2:]))
"""
"""`python -m monollm.sweep` over HELD_FLOW, its runs read from MARKS/runs.jsonl; with HOLD set,
the sweep stops for good right after its first run's process started, before it records the pid."""


def test_a_sweep_killed_before_it_records_the_run_never_runs_the_pair_twice(tmp_path):
    """SIGKILL to the sweep while its run has started but its pid is not recorded yet (held there
    by lock.HOOKS): the restarted sweep finds the run by the token in its environment, waits for
    it, then skips its pair and runs the other: one run per pair."""
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()
    (tmp_path / "flow.py").write_text(HELD_FLOW)
    path = tmp_path / "held.toml"
    path.write_text(f'name = "held"\nprofile = "{MICRO}"\nseeds = [0]\n'
                    '[grid]\n"monotonic.mode" = ["nonneg", "sign_frozen"]\n')
    args = [sys.executable, "-c", HELD_SWEEP, str(tmp_path / "flow.py"), str(path), "--out", str(out),
            "--no-reuse-setup"]
    env = flow_env(MARKS=str(marks))
    first_out, second_out, hold = tmp_path / "first.out", tmp_path / "second.out", tmp_path / "held"
    procs = []
    try:
        with open(first_out, "w") as f:
            procs.append(subprocess.Popen(args, env={**env, "HOLD": str(hold)}, cwd=tmp_path, stdout=f,
                                          stderr=subprocess.STDOUT))
        wait_for("the sweep held after its run started", hold.exists, 120, procs[0], first_out)
        wait_for("the run", (marks / "started").exists, 60)
        procs[0].kill()
        procs[0].wait()
        record = json.loads((out / "running" / "monotonic.mode=nonneg.seed0.json").read_text())
        assert "pid" not in record and record["token"], record  # killed in the window: the intent only
        restart_after_the_first(procs, args, env, tmp_path, second_out, marks, timeout=120)
    finally:
        (marks / "go").touch()  # every stand-in run ends
        for p in procs:
            if p.poll() is None:
                p.kill()
    second = second_out.read_text()
    assert "took over the stale lock" in second, second
    assert "pairs: [('monotonic.mode=nonneg', 'skip', 1), ('monotonic.mode=sign_frozen', 'skip', 1)]" in second
    assert sorted((marks / "started").read_text().split()) == ["monotonic.mode=nonneg.toml",
                                                               "monotonic.mode=sign_frozen.toml"], second
    assert not os.listdir(out / "running")


def test_the_record_gets_the_run_id_while_the_run_goes(tmp_path):
    """The record written before the run names the pair and a token the run's process sees in its
    environment; the run id Metaflow writes is added to the record while the run goes."""
    from monollm.experiments import lock

    id_file, seen = tmp_path / "running" / "p.run-id", tmp_path / "seen"
    script = (f"import os, time\nopen({str(id_file)!r}, 'w').write('42')\n"
              f"open({str(seen)!r}, 'w').write(os.environ['{lock.TOKEN_ENV}'])\n"
              f"while 'run_id' not in open({str(tmp_path / 'running' / 'p.json')!r}).read():\n    time.sleep(0.05)\n")
    rc, run_id = lock.attempt([sys.executable, "-c", script], str(tmp_path), "p", str(tmp_path / "log"), str(id_file))
    assert (rc, run_id) == (0, "42") and len(seen.read_text()) == 16
    assert not os.listdir(tmp_path / "running")  # cleared once the run ended


def test_two_takeovers_of_a_stale_lock_at_once_leave_one_holder(tmp_path, monkeypatch):
    """Two takeovers of one stale lock, each paused right after its staleness check until the other
    has checked too (or a second has passed): exactly one takes the lock, the other stops."""
    import socket
    import threading

    from monollm.experiments import lock

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / lock.FILE).write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
    both, check = threading.Barrier(2), lock.stale

    def paused(holder):
        verdict = check(holder)
        try:
            both.wait(timeout=1)  # the other takeover checks meanwhile, where it can
        except threading.BrokenBarrierError:
            pass
        return verdict

    monkeypatch.setattr(lock, "stale", paused)
    got = []

    def take():
        try:
            got.append(lock.acquire(str(tmp_path))[1])
        except lock.SweepLocked as err:
            got.append(err)

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(g, str) and "took over the stale lock" in g for g in got) == 1, got
    assert sum(isinstance(g, lock.SweepLocked) for g in got) == 1, got
