"""Comparison across runs: per-run key numbers, mean and t-interval, refusal of incompatible configs."""
import copy
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import FLOW, ROOT, flow_env
from scipy import stats as st
from test_cards import GUIDANCE, synthetic_run

from monollm.experiments import compare
from monollm.results import client
from monollm.stats import t_interval


def fake_run(run_id: str, seed: int, scale: float = 1.0, flags=(), **changes):
    """A run of the synthetic tables with this seed; its uat verdict carries `flags` (none by default:
    the synthetic run's own weak-guidance flag is cleared, and so are its worst-case verdicts' flags (it
    has no gradient-free search), so that verdict words read plainly)."""
    data = synthetic_run()
    data.findings["robustness_above_control"]["uat"]["not_evidence"] = list(flags)
    for comp in data.findings["worst_case"].values():
        comp["not_evidence"] = []
    data.perplexity = data.perplexity.assign(perplexity=data.perplexity["perplexity"] * scale)
    data.resolved_config = copy.deepcopy(data.resolved_config)
    data.resolved_config["seed"] = seed
    for key, value in changes.items():
        section, name = key.split("__")
        data.resolved_config[section][name] = value
    return SimpleNamespace(id=run_id, pathspec=f"MonoFlow/{run_id}", data=data)


def test_t_interval():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    mean, lo, hi = t_interval(x)
    half = st.t.ppf(0.975, 3) * x.std(ddof=1) / np.sqrt(4)
    assert mean == pytest.approx(3.5) and (lo, hi) == pytest.approx((3.5 - half, 3.5 + half))
    assert np.isnan(t_interval([2.0])[1]) and t_interval([2.0])[0] == 2.0
    assert t_interval([3.0, 3.0]) == (3.0, 3.0, 3.0)


def test_table_per_run_with_mean_and_interval():
    runs = [fake_run("11", 0, 1.0), fake_run("12", 1, 1.1), fake_run("13", 2, 0.9, resources__memory=64000)]
    table = compare.compare(runs)
    cols = ["seed 0", "seed 1", "seed 2"]  # where a run ran (resources) does not label it
    assert list(table.columns) == cols + ["mean", "ci_low", "ci_high", "n"]
    assert table.attrs["seeds"] == {"seed 0": 0, "seed 1": 1, "seed 2": 2}
    assert table.attrs["runs"] == {"seed 0": "MonoFlow/11", "seed 1": "MonoFlow/12", "seed 2": "MonoFlow/13"}
    assert table.attrs["warnings"] == []
    row = table.loc["perplexity monotonic"]
    per_run = [r.data.perplexity.set_index("model").loc["monotonic", "perplexity"] for r in runs]
    assert list(row[cols]) == pytest.approx(per_run)
    assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx(t_interval(per_run))
    assert row["n"] == 3
    f = runs[0].data.findings
    assert table.loc["NLL cost monotonic - baseline (nats/token)", "seed 0"] == pytest.approx(
        f["nll_cost_monotonic_minus_baseline"]["diff"])
    for key, comp in f["robustness"].items():
        assert table.loc[f"dNLL {key} baseline - monotonic", "seed 0"] == pytest.approx(comp["diff"])
    assert "dNLL uat/control monotonic" in table.index and "dNLL uat/transfer monotonic" not in table.index
    assert table.loc["dNLL above control uat baseline - monotonic", "seed 0"] == pytest.approx(
        f["robustness_above_control"]["uat"]["diff"])
    assert "dNLL above control random baseline" not in table.index  # no control, no row
    assert "3 run(s): seed 0 = MonoFlow/11; seed 1 = MonoFlow/12; seed 2 = MonoFlow/13" in compare.format_table(table)


def test_gradient_guidance_per_run_and_the_ranking_column_is_a_label():
    runs = [fake_run("14", 0), fake_run("15", 1)]
    runs[1].data.findings["guidance"]["uat"]["spearman"]["baseline"] = 0.4
    assert pd.api.types.is_string_dtype(runs[0].data.attack_summary["ranking"])  # a text column in the summary
    table = compare.compare(runs)
    row = table.loc["gradient guidance Spearman uat baseline"]
    assert list(row[["seed 0", "seed 1"]]) == pytest.approx([GUIDANCE["baseline"], 0.4])
    assert row["mean"] == pytest.approx((GUIDANCE["baseline"] + 0.4) / 2) and row["n"] == 2
    assert table.loc["gradient guidance Spearman uat monotonic", "mean"] == pytest.approx(GUIDANCE["monotonic"])
    assert not any("random" in m and "guidance" in m for m in table.index)  # no search, no number
    assert "gradient guidance" not in " ".join(compare.verdicts(table)["metric"])  # a measurement, not a verdict
    unmeasured = fake_run("16", 2)
    unmeasured.data.findings["guidance"]["uat"].update(spearman={}, swaps={})
    del runs[0].data.findings["guidance"]  # a run from before it
    table = compare.compare([runs[0], unmeasured])
    assert "gradient guidance Spearman uat baseline" not in table.index


def test_incompatible_configs_are_refused_naming_the_keys():
    runs = [fake_run("21", 0), fake_run("22", 1, train__lr=1e-2, monotonic__variant="mlp_in")]
    with pytest.raises(compare.IncompatibleRuns) as err:
        compare.compare(runs)
    msg = str(err.value)
    assert "train.lr" in msg and "monotonic.variant" in msg and "'mlp_in'" in msg
    assert "seed" not in msg.split("\n")[0]
    with pytest.raises(compare.IncompatibleRuns, match="train.lr"):  # varying one key does not allow the other
        compare.compare(runs, vary=["monotonic.variant"])
    table = compare.compare(runs, vary=["train.lr", "monotonic"])
    assert list(table.columns[:2]) == ["seed 0, monotonic.variant=mlp_both, train.lr=0.002",
                                       "seed 1, monotonic.variant=mlp_in, train.lr=0.01"]
    # runs that differ in more than the seed: the verdicts count runs, not seeds
    assert set(compare.verdicts(table)["seeds"]) == {"2 runs"}


def test_where_and_how_a_run_trained_may_differ():
    """GPUs and training processes change the speed, not what is computed."""
    runs = [fake_run("21", 0), fake_run("22", 1, resources__train_gpu=8, parallel__processes=8,
                                         parallel__strategy="fsdp")]
    assert list(compare.compare(runs).columns[:2]) == ["seed 0", "seed 1"]


def with_diffs(run, above: float, raw: float, cost: float):
    """`run` with its uat robustness differences and NLL cost set (per-run numbers to compare)."""
    f = run.data.findings
    f["robustness_above_control"]["uat"]["diff"] = above
    f["robustness"]["uat/attack"]["diff"] = raw
    f["nll_cost_monotonic_minus_baseline"]["diff"] = cost
    return run


def test_verdict_rows_read_the_interval_across_runs():
    above, raw, cost = [0.10, 0.20, 0.15], [-0.10, 0.10, 0.05], [-0.30, -0.20, -0.25]
    runs = [with_diffs(fake_run(str(30 + i), i), a, r, c) for i, (a, r, c) in enumerate(zip(above, raw, cost))]
    v = compare.verdicts(compare.compare(runs)).set_index("metric")
    # the worst case leads, then each attack's claim above control
    assert v.index[0].startswith(compare.WORST_CASE) and v.index[0].endswith(" baseline - monotonic")
    assert [m for m in v.index if not m.startswith(compare.WORST_CASE)][0] == "dNLL above control uat baseline - monotonic"
    row = v.loc["dNLL above control uat baseline - monotonic"]
    assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx(t_interval(above))
    assert row["n"] == 3 and row["seeds"] == "3 seeds" and row["verdict"] == "monotonic more robust"
    assert v.loc["dNLL uat/attack baseline - monotonic", "verdict"] == "no significant difference"
    assert v.loc["NLL cost monotonic - baseline (nats/token)", "verdict"] == "lower perplexity"
    negative = [with_diffs(fake_run(str(40 + i), i), -a, 0.0, 0.1 + a) for i, a in enumerate(above)]
    v = compare.verdicts(compare.compare(negative)).set_index("metric")
    assert v.loc["dNLL above control uat baseline - monotonic", "verdict"] == "baseline more robust"
    assert v.loc["NLL cost monotonic - baseline (nats/token)", "verdict"] == "costs perplexity"
    text = compare.format_table(compare.compare(runs))
    lo, hi = t_interval(above)[1:]
    assert (f"dNLL above control uat baseline - monotonic: +0.150 [{lo:+.3f}, {hi:+.3f}], 3 seeds: "
            f"monotonic more robust") in text
    assert v.loc["dNLL uat/control baseline - monotonic", "verdict"].startswith("no spread")  # equal in every run
    one = compare.verdicts(compare.compare(runs[:1])).set_index("metric")
    assert (one["verdict"] == "an anecdote, not a verdict").all() and (one["seeds"] == "1 seed").all()
    text = compare.format_table(compare.compare(runs[:1]))  # one line saying what would give a verdict
    assert "run more seeds" in text and "1 seed: an anecdote, not a verdict" in text.split("Verdicts")[1]


def compute_entry(ratio: float, bound: str = "=") -> dict:
    """One findings["compute"] entry (results.compute's documented dict)."""
    return {"target": 0.05, "baseline": 1000.0, "monotonic": 1000.0 * ratio, "ratio": ratio, "ci_low": ratio / 2,
            "ci_high": ratio * 2, "bound": bound, "baseline_bound": "=", "monotonic_bound": bound}


def test_seeds_needed_and_the_compute_multiplier_across_seeds():
    """Worst cases 0.1, 0.2, 0.3 (mean 0.2, s = 0.1): 4 seeds by hand (t_3 * 0.1 / 2 = 0.159 < 0.2, while
    t_2 * 0.1 / sqrt(3) = 0.248 is not); multipliers 2 and 8 give the geometric mean 4, a third run's
    lower bound is counted apart."""
    runs = [fake_run(str(80 + i), i) for i in range(3)]
    family = next(iter(runs[0].data.findings["worst_case"]))
    for run, diff, ratio, bound in zip(runs, (0.1, 0.2, 0.3), (2.0, 8.0, 30.0), ("=", "=", ">")):
        run.data.findings["worst_case"] = copy.deepcopy(run.data.findings["worst_case"])
        run.data.findings["worst_case"][family]["diff"] = diff
        run.data.findings["compute"] = {family: {"1/4": compute_entry(ratio, bound)}}
    text = compare.format_table(compare.compare(runs))
    mine = text[text.index("Seeds needed per family"):].splitlines()
    assert mine and all(len(line) <= 120 for line in mine)
    text = " ".join(text.split())  # the lines wrap at 120 columns
    assert (f"{family}: about 4 seeds would put the 95% interval off zero at the observed mean difference "
            "(+0.200, s.d. 0.100 over 3 seeds; t-based estimate)") in text
    assert f"{family}, target 1/4 (0.050 nats above control on average): compute multiplier 4.0x [" in text
    assert "1 run with a lower bound" in text
    del runs[0].data.findings["compute"]  # runs made without it: no multiplier block
    runs[1].data.findings["compute"] = {}
    runs[2].data.findings.pop("compute")
    assert "compute multiplier" not in compare.format_table(compare.compare(runs))


def test_downstream_rows_and_their_verdict():
    runs = []
    for i, diff in enumerate((-0.05, -0.04, -0.06)):
        run = fake_run(str(60 + i), i)
        run.data.downstream = pd.DataFrame([{"task": "piqa", "model": m, "metric": metric, "value": 0.6, "stderr": 0.01,
                                             "n": 100, "chance": 0.5} for m in ("baseline", "monotonic")
                                            for metric in ("acc", "acc_norm")])
        run.data.findings["downstream"] = {"piqa": {"metric": "acc", "diff": diff}}
        runs.append(run)
    table = compare.compare(runs)
    assert {"downstream piqa acc baseline", "downstream piqa acc monotonic"} <= set(table.index)
    assert not any("acc_norm" in m for m in table.index)
    v = compare.verdicts(table).set_index("metric").loc["downstream piqa acc monotonic - baseline"]
    assert v["mean"] == pytest.approx(-0.05) and v["verdict"] == "costs accuracy"
    assert "downstream piqa" not in " ".join(compare.compare([fake_run("70", 0)]).index)  # a run without them


def test_duplicate_seeds_warn_and_keep_distinct_labels(monkeypatch, capsys):
    runs = [fake_run("51", 0), fake_run("52", 0), fake_run("53", 1)]
    with pytest.warns(compare.DuplicateSeeds, match="MonoFlow/51, MonoFlow/52 share seed 0"):
        table = compare.compare(runs)
    assert list(table.columns[:3]) == ["seed 0 (run 51)", "seed 0 (run 52)", "seed 1"]
    assert "not independent samples" in table.attrs["warnings"][0] and len(table.attrs["warnings"]) == 1
    assert "WARNING: runs MonoFlow/51, MonoFlow/52 share seed 0" in compare.format_table(table)
    # the same seed under different varied keys is two conditions, not a duplicate
    varied = [fake_run("61", 0), fake_run("62", 0, monotonic__variant="mlp_in")]
    assert compare.compare(varied, vary=["monotonic.variant"]).attrs["warnings"] == []
    monkeypatch.setattr(compare, "select_runs", lambda *args, **kwargs: runs)
    assert compare.main(["51", "52", "53"]) == 0
    err = capsys.readouterr().err
    assert "compare: warning: runs MonoFlow/51, MonoFlow/52 share seed 0" in err


def test_where_keeps_runs_with_the_value_however_they_were_picked(monkeypatch, capsys):
    """--where filters the runs picked by tag or likeness (and given ones) on their resolved_config:
    values read as TOML, matched as configuration values; a key no run has is named and refused."""
    runs = [fake_run("101", 0), fake_run("102", 1), fake_run("103", 0, monotonic__mode="sign_frozen"),
            fake_run("104", 1, monotonic__mode="sign_frozen", train__lr=0.004)]
    picked = []
    monkeypatch.setattr(compare, "_select", lambda *args: picked.append(args) or runs)
    table = compare.compare(tag="sweep:t", vary=["monotonic.mode"], where={"monotonic.mode": "nonneg"})
    assert list(table.attrs["runs"].values()) == ["MonoFlow/101", "MonoFlow/102"] and picked[0][1] == "sweep:t"
    table = compare.compare(vary=["monotonic.mode", "train.lr"], where=compare.parse_where(
        ["monotonic.mode=sign_frozen", "train.lr=0.004"]))  # no tag, no ids: like the latest
    assert list(table.attrs["runs"].values()) == ["MonoFlow/104"] and picked[1][:2] == (None, None)
    assert compare.parse_where(["train.lr=2e-3", 'monotonic.mode="a=b"', "eval.order.enabled=true", "x=plain text"]) \
        == {"train.lr": 0.002, "monotonic.mode": "a=b", "eval.order.enabled": True, "x": "plain text"}
    assert compare.filter_where(runs, {"train.lr": 0.002}) == runs[:3]  # 2e-3 written either way
    assert compare.filter_where(runs, {"seed": 1}) == [runs[1], runs[3]]
    with pytest.raises(ValueError, match="unknown key 'monotonic.mdoe'"):
        compare.compare(tag="sweep:t", where={"monotonic.mdoe": "nonneg"})
    with pytest.raises(ValueError, match="'monotonic' is a table; name one of its settings, e.g. monotonic\\."):
        compare.filter_where(runs, {"monotonic": 1})
    with pytest.raises(LookupError, match="no run left after --where train.lr=0.5 \\(of 4 selected\\)"):
        compare.filter_where(runs, {"train.lr": 0.5})
    assert compare.main(["--tag", "sweep:t", "--where", "monotonic.mdoe=nonneg"]) == 2
    assert "compare: --where monotonic.mdoe: unknown key 'monotonic.mdoe'" in capsys.readouterr().err
    assert compare.main(["--where", "monotonic.mode"]) == 2 and "give KEY=VALUE" in capsys.readouterr().err
    assert compare.main(["--tag", "sweep:t", "--vary", "monotonic.mode", "--where", "monotonic.mode=nonneg"]) == 0
    assert "2 run(s): seed 0 = MonoFlow/101; seed 1 = MonoFlow/102" in capsys.readouterr().out


def test_a_repeated_seed_picked_automatically_is_refused_given_explicitly_warned(monkeypatch, capsys):
    """Two runs started afresh with one seed and one configuration: by tag or likeness compare
    cannot know which counts, so it refuses, listing them; given by id, it warns as before.
    The same seed under two values of a varied key, or a resumed copy, is no repeat."""
    runs = [fake_run("111", 0), fake_run("112", 0), fake_run("113", 1)]
    monkeypatch.setattr(compare, "_select", lambda *args: runs)
    with pytest.raises(compare.DuplicateRuns, match="runs MonoFlow/111, MonoFlow/112 share seed 0") as err:
        compare.compare(tag="sweep:t")
    assert "give the run ids" in str(err.value) and "--where" in str(err.value)
    with pytest.raises(compare.DuplicateRuns):
        compare.compare()  # like the latest
    assert compare.main(["--tag", "sweep:t"]) == 2
    assert "compare: the runs picked (by tag or like the latest) repeat a seed: runs MonoFlow/111, MonoFlow/112" \
        in capsys.readouterr().err
    with pytest.warns(compare.DuplicateSeeds, match="MonoFlow/111, MonoFlow/112 share seed 0"):
        assert len(compare.compare(["111", "112", "113"]).attrs["warnings"]) == 1
    runs[:] = [fake_run("121", 0), fake_run("122", 0, monotonic__mode="sign_frozen"),
               resumed(fake_run("123", 0), "121")]
    table = compare.compare(tag="sweep:t", vary=["monotonic.mode"])
    assert list(table.attrs["runs"].values()) == ["MonoFlow/121", "MonoFlow/122"] and table.attrs["resumed"]


def resumed(run, origin: str):
    """`run` as a resume of run `origin` (what its `origin_run_id` artifact records)."""
    run.data.origin_run_id = origin
    return run


def test_resumed_copies_count_once():
    """A resume clones every finished step: the copy of a successful run repeats its numbers,
    and resumes of one failed run share everything before the failure."""
    original, copy, other = fake_run("81", 0), resumed(fake_run("82", 0), "81"), fake_run("83", 1, 1.1)
    table = compare.compare([copy, original, other])
    assert list(table.columns[:2]) == ["seed 0", "seed 1"] and (table["n"] == 2).all()
    assert table.attrs["runs"] == {"seed 0": "MonoFlow/81", "seed 1": "MonoFlow/83"}  # the original is kept
    assert table.attrs["warnings"] == []  # not reported as a re-run seed either: it is left out
    assert table.attrs["resumed"] == ["run MonoFlow/82 is a resumed copy of run MonoFlow/81: one computation, "
                                      "counted once (kept MonoFlow/81)"]
    assert "NOTE: run MonoFlow/82 is a resumed copy of run MonoFlow/81" in compare.format_table(table)
    # two resumes of one failed run (not compared: it has no results), one of them resumed again
    first, second = resumed(fake_run("91", 0), "90"), resumed(fake_run("92", 0), "90")
    table = compare.compare([first, second, resumed(fake_run("93", 0), "92"), other])
    assert table.attrs["runs"] == {"seed 0": "MonoFlow/91", "seed 1": "MonoFlow/83"}
    assert table.attrs["resumed"] == [
        f"run MonoFlow/{rid} and run MonoFlow/91 are both resumed from run MonoFlow/90: one computation, "
        f"counted once (kept MonoFlow/91)" for rid in ("92", "93")]
    # a re-run of a seed from the start is not a resume: still two runs, with the duplicate-seed warning
    with pytest.warns(compare.DuplicateSeeds):
        assert compare.compare([original, fake_run("84", 0)]).attrs["resumed"] == []


def test_cli_looks_runs_up_in_the_global_namespace_unless_told(monkeypatch):
    seen = []
    monkeypatch.setattr(compare, "select_runs", lambda *args: seen.append(args[5]) or [fake_run("71", 0)])
    assert compare.main(["71"]) == 0 and compare.main(["71", "--namespace", "user:alice"]) == 0
    assert seen == [None, "user:alice"]


def test_cli_reports_errors_without_a_traceback(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise compare.IncompatibleRuns("runs have incompatible configurations; 1 key(s) differ: train.lr")

    monkeypatch.setattr(compare, "compare", refuse)
    assert compare.main(["1", "2"]) == 2
    assert "train.lr" in capsys.readouterr().err


# ---- real runs ---------------------------------------------------------------------------------

@pytest.mark.flow
def test_compare_two_seeds_from_the_command_line(micro_run, seed1_run, datastore_root, tmp_path):
    out = tmp_path / "seeds.csv"
    proc = subprocess.run([sys.executable, "-m", "monollm.compare", micro_run.id, seed1_run.id, "--csv", str(out)],
                          cwd=ROOT, env={**os.environ, **flow_env()}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"seed 0 = {micro_run.pathspec}; seed 1 = {seed1_run.pathspec}" in proc.stdout
    assert "Verdicts (mean and 95% t-interval across runs" in proc.stdout
    table = pd.read_csv(out, index_col="metric")
    assert list(table.columns) == ["seed 0", "seed 1", "mean", "ci_low", "ci_high", "n"]
    for label, run in (("seed 0", micro_run), ("seed 1", seed1_run)):
        numbers = compare.key_numbers(run.data)
        assert list(table.index) == list(numbers)
        assert table[label].to_numpy() == pytest.approx(list(numbers.values()))
    assert (table["n"] == 2).all()
    assert (table["ci_low"] <= table["mean"]).all() and (table["mean"] <= table["ci_high"]).all()


@pytest.mark.flow
def test_seed_parameter_overrides_the_profile(micro_run, seed1_run):
    assert seed1_run.data.resolved_config["seed"] == 1 and micro_run.data.resolved_config["seed"] == 0
    # another seed: other splits, init and batch order, so other numbers
    assert not micro_run.data.perplexity["perplexity"].equals(seed1_run.data.perplexity["perplexity"])
    assert micro_run.data.training["batch_hash"].tolist() != seed1_run.data.training["batch_hash"].tolist()


@pytest.mark.flow
def test_runs_found_by_tag_and_by_likeness(micro_run, seed1_run):
    assert client.get_run(tag="seed:1").id == seed1_run.id
    assert client.get_run(micro_run.id).pathspec == micro_run.pathspec
    by_tag = compare.compare(tag=["profile:micro", "seed:1"])
    assert seed1_run.pathspec in by_tag.attrs["runs"].values()
    assert micro_run.pathspec not in by_tag.attrs["runs"].values()
    like = compare.compare(like=micro_run)  # runs of another micro configuration are left out, not refused
    assert {micro_run.pathspec, seed1_run.pathspec} <= set(like.attrs["runs"].values())
    assert set(like.attrs["seeds"].values()) >= {0, 1}


@pytest.mark.flow
def test_a_resumed_copy_is_tagged_and_counted_once(micro_run, datastore_root):
    """Resuming a successful run clones every step, `end` included, into a new successful run:
    it carries the original's tags, records its origin, and adds no sample to a comparison."""
    from metaflow import Runner

    with Runner(FLOW, cwd=datastore_root, env=flow_env()).resume(origin_run_id=micro_run.id) as resumed:
        assert resumed.status == "successful", resumed.stderr
        copy = resumed.run
    assert all(step.task.origin_pathspec is not None for step in copy)  # nothing ran again
    assert {t for t in micro_run.user_tags if t.startswith(client.RUN_TAGS)} <= set(copy.user_tags)
    assert len([t for t in copy.user_tags if t.startswith(client.RUN_TAGS)]) == len(client.RUN_TAGS)
    assert client.origin_run_id(copy) == micro_run.id and client.origin_run_id(micro_run) is None
    assert micro_run.data.origin_run_id is None  # the artifact was cloned too: the metadata said it
    # setup recorded where the micro run's model and documents came from (built, no revisions)
    assert copy.data.sources == {"model": {"source": "build", "name": "", "revision": "", "commit": None},
                                 "data": {"source": "builtin", "path": "", "revision": "", "commit": None}}
    table = compare.compare([copy.id, micro_run.id])
    assert table.attrs["runs"] == {"seed 0": micro_run.pathspec} and (table["n"] == 1).all()
    assert table.attrs["resumed"] == [f"run {copy.pathspec} is a resumed copy of run {micro_run.pathspec}: one "
                                      f"computation, counted once (kept {micro_run.pathspec})"]
    like = compare.compare(like=copy).attrs["runs"].values()  # found by its tags, then left out
    assert micro_run.pathspec in like and copy.pathspec not in like


CROSS_USER = """
import sys
import metaflow
from metaflow.exception import MetaflowNamespaceMismatch
from monollm.experiments import compare
from monollm.results import client
run_id, other = sys.argv[1], sys.argv[2]
before = metaflow.get_namespace()
run = client.get_run(run_id)
print("found", run.pathspec, "seed", run.data.resolved_config["seed"])
print("by tag", client.get_run(tag="profile:micro").pathspec)
print("compared", *compare.compare([run_id]).attrs["runs"].values())
print("like", *compare.compare(like=run_id).attrs["runs"].values())
try:
    client.get_run(run_id, namespace="user:" + other)
except MetaflowNamespaceMismatch:
    print("not in", "user:" + other)
print("namespace restored", metaflow.get_namespace() == before)
"""


@pytest.mark.flow
def test_runs_are_found_whoever_ran_them(micro_run, datastore_root, tmp_path):
    """A run made as one USERNAME is found by results, compare (API and CLI, from another
    directory) and `card get RUN_ID/STEP` as another: they look in the global namespace."""
    other = "another-reader"
    assert micro_run.data.resolved_config and os.environ["USERNAME"] != other
    env = {**os.environ, **flow_env(USERNAME=other)}
    proc = subprocess.run([sys.executable, "-c", CROSS_USER, micro_run.id, other], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"found {micro_run.pathspec} seed 0" in out and "by tag MonoFlow/" in out
    assert f"compared {micro_run.pathspec}" in out and micro_run.pathspec in out.split("like", 1)[1]
    assert f"not in user:{other}" in out  # an explicit namespace is honoured: the run is not the reader's
    assert "namespace restored True" in out
    cli = subprocess.run([sys.executable, "-m", "monollm.compare", micro_run.id], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and f"seed 0 = {micro_run.pathspec}" in cli.stdout, cli.stderr
    mine = subprocess.run([sys.executable, "-m", "monollm.compare", micro_run.id, "--namespace", f"user:{other}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert mine.returncode == 2 and "compare:" in mine.stderr
    report = tmp_path / "report.html"
    subprocess.run([sys.executable, FLOW, "card", "get", f"{micro_run.id}/join_attacks", str(report)],
                   cwd=datastore_root, env=env, check=True, capture_output=True, timeout=120)
    assert report.stat().st_size > 10_000


def test_card_get_says_whether_the_latest_run_failed_or_is_running():
    from types import SimpleNamespace as NS

    from monollm.results.client import run_state

    def step(name, *tasks):  # tasks: (finished, successful)
        s = [NS(finished=f, successful=ok) for f, ok in tasks]
        return type("Step", (list,), {"id": name})(s)

    failed = [step("start", (True, True)), step("train_baseline", (True, False))]
    assert run_state(failed) == "failed (in step train_baseline)"
    running = [step("start", (True, True)), step("train_baseline", (False, False))]
    assert run_state(running).startswith("is still running")


def test_the_worst_case_across_seeds_keeps_the_sign_baseline_minus_monotonic():
    """Hand-set worst cases: the baseline is damaged 0.3, 0.4 and 0.5 nats more than the monotonic model,
    so the across-seed row reads +0.4, and the monotonic model more robust."""
    runs = []
    for i, (base, mono) in enumerate([(0.5, 0.2), (0.6, 0.2), (0.7, 0.2)]):
        run = fake_run(str(40 + i), i)
        comp = run.data.findings["worst_case"]["universal triggers"]
        comp.update(dnll_baseline=base, dnll_monotonic=mono, diff=base - mono)
        runs.append(run)
    table = compare.compare(runs)
    row = table.loc[f"{compare.WORST_CASE}universal triggers baseline - monotonic"]
    assert list(row[["seed 0", "seed 1", "seed 2"]]) == pytest.approx([0.3, 0.4, 0.5])
    assert row["mean"] == pytest.approx(0.4) and row["ci_low"] > 0
    v = compare.verdicts(table).set_index("metric")
    assert v.loc[f"{compare.WORST_CASE}universal triggers baseline - monotonic", "verdict"] == "monotonic more robust"


def test_compare_says_in_how_many_runs_each_verdict_was_flagged():
    """Two of three runs flag uat's verdict: compare's verdict leads with "not evidence of robustness",
    the count and the flags, then the interval's own reading; the unflagged worst case reads plainly."""
    flags = [["weak_guidance on monotonic"], [], ["transfer_beats_attack on monotonic", "weak_guidance on monotonic"]]
    runs = [with_diffs(fake_run(str(50 + i), i, flags=f), a, 0.0, 0.1) for i, (f, a) in
            enumerate(zip(flags, [0.10, 0.20, 0.15]))]
    table = compare.compare(runs)
    assert table.attrs["flags"]["dNLL above control uat baseline - monotonic"] == {
        "flagged": 2, "runs": 3, "flags": ["weak_guidance on monotonic", "transfer_beats_attack on monotonic"]}
    v = compare.verdicts(table).set_index("metric")
    assert v.loc["dNLL above control uat baseline - monotonic", "verdict"] == (
        "not evidence of robustness: flagged in 2 of 3 seeds (weak_guidance on monotonic, transfer_beats_attack on "
        "monotonic); across them: monotonic more robust")
    worst = [m for m in v.index if m.startswith(compare.WORST_CASE)]
    assert worst and all(not v.loc[m, "verdict"].startswith("not evidence") for m in worst)
    assert "flagged in 2 of 3 seeds" in " ".join(compare.format_table(table).split())


def test_latest_per_seed_takes_one_run_per_seed_and_says_which():
    """The notebook's choice where a seed was run again: the latest run of each seed, or the run it is
    looking at for that run's seed; compare then takes them without refusing."""
    from monollm.experiments import chains

    runs = [fake_run("60", 0), fake_run("61", 1), fake_run("62", 0), fake_run("63", 0)]  # oldest first
    kept, notes = chains.latest_per_seed(runs)
    assert [r.id for r in kept] == ["63", "61"]
    assert notes == ["seed 0: 3 runs; took MonoFlow/63 (the latest), left out MonoFlow/60, MonoFlow/62"]
    kept, notes = chains.latest_per_seed(runs, keep=runs[0])
    assert [r.id for r in kept] == ["60", "61"]
    assert notes == ["seed 0: 3 runs; took MonoFlow/60 (the run shown above), left out MonoFlow/62, MonoFlow/63"]
    table = compare.compare(kept)
    assert table.attrs["warnings"] == [] and list(table.columns[:2]) == ["seed 0", "seed 1"]
