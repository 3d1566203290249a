"""The whole flow, for real, on the micro profile through metaflow.Runner."""
import dataclasses
import os

import numpy as np
import pytest
import torch

from monollm.model import monotonic
from monollm.results import report

pytestmark = pytest.mark.flow


def test_artifacts_and_sanity(micro_run):
    data = micro_run.data
    ppl = data.perplexity.set_index("model")
    assert list(ppl.index) == list(report.MODELS)
    assert (ppl["tokens"] == ppl["tokens"].iloc[0]).all()
    assert ((ppl["ppl_ci_low"] <= ppl["perplexity"]) & (ppl["perplexity"] <= ppl["ppl_ci_high"])).all()
    # the sanity the run must show
    assert ppl.loc["reference", "perplexity"] < 0.25 * data.untrained_perplexity
    assert ppl.loc["monotonic_init", "perplexity"] > ppl.loc["reference", "perplexity"]
    assert ppl.loc["monotonic", "perplexity"] < ppl.loc["monotonic_init", "perplexity"]
    assert data.resolved_config["name"] == "micro"
    # held-out windows sharing a 13-gram with the training blocks: measured, none replaced by default
    found = data.contamination
    assert (found["n"], found["train_tokens"]) == (13, data.train_blocks.size)
    rows = {(r["split"], r["unit"]): r for r in found["rows"]}
    assert rows["test", "attack windows"]["windows"] == len(data.examples["test"])
    assert rows["val", "blocks"]["windows"] == len(data.blocks["val"])
    assert all(0 <= r["rate"] <= 1 and r["replaced"] == 0 for r in found["rows"])


def test_training_history_same_stream(micro_run):
    t = micro_run.data.training
    assert set(t["arm"]) == {"baseline", "monotonic"}
    b, m = (t[t.arm == arm].sort_values("step") for arm in ("baseline", "monotonic"))
    assert len(b) == len(m) > 0
    assert list(b["batch_hash"]) == list(m["batch_hash"])  # same blocks, same order
    assert (t["resumed_from"] == -1).all()  # a brand-new run starts from scratch, never from old checkpoints
    assert np.isfinite(b["val_loss"].iloc[-1]) and np.isfinite(m["val_loss"].iloc[-1])
    for col in ("loss", "lr", "grad_norm", "tokens_per_s"):
        assert t[col].notna().all()


def test_constraint_verified_at_every_stage(micro_run):
    c = micro_run.data.constraint.set_index("stage")
    assert {"applied", "after_training", "after_materializing"} <= set(c.index)
    assert (c["negative"] == 0).all()
    assert (c["matrices"] == 4).all()  # mlp_both on 2 layers
    assert c.loc["after_materializing", "parametrized"] == 0


def test_monotonic_model_is_a_plain_checkpoint(micro_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from monollm.results import client

    model, tokenizer = client.load_model(micro_run, "monotonic", path=str(tmp_path / "m"))
    vanilla = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    checks = monotonic.verify(vanilla, "mlp_both")
    assert checks["matrices"] == 4 and checks["negative"] == 0 and checks["parametrized"] == 0
    ids = tokenizer("The town of", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, vanilla(ids).logits)


def test_attack_table_and_findings(micro_run):
    data = micro_run.data
    a = data.attacks
    assert set(a["model"]) == {"baseline", "monotonic"}
    assert set(a["attack"]) == set(data.resolved_config["attacks"])
    r = a[(a.attack == "uat") & (a.kind == "control")]
    # same examples and random triggers for both models: paired
    for _, g in r.groupby("trial"):
        assert set(g[g.model == "baseline"]["example"]) == set(g[g.model == "monotonic"]["example"])
        assert g["trigger_text"].nunique() == 1
    f = data.findings
    assert f["constraint_holds"] is True
    assert f["recovery_lowers_ppl"] is True
    assert f["perplexity"]["monotonic"] == pytest.approx(data.perplexity.set_index("model").loc["monotonic", "perplexity"])
    assert {"uat/attack", "hotflip/attack"} <= set(f["robustness"])


def test_run_tagged(micro_run):
    assert {"profile:micro", "variant:mlp_both", "seed:0"} <= set(micro_run.user_tags)


def test_uat_beats_its_random_control_on_baseline(micro_run):
    s = micro_run.data.attack_summary
    row = s[(s.attack == "uat") & (s.kind == "attack") & (s.model == "baseline")].iloc[0]
    assert row["dnll_mean"] > row["control_dnll"]
    assert row["above_control"] == pytest.approx(row["dnll_mean"] - row["control_dnll"], abs=1e-9)
    assert row["above_control_ci_low"] > 0  # the 95% CI of dNLL above control excludes zero


def test_gradient_attacks_rows_controls_transfer_and_compute(micro_run):
    data = micro_run.data
    a, cfg = data.attacks, data.resolved_config
    for attack in ("uat", "hotflip", "gcg"):
        rows = a[a.attack == attack]
        # hotflip's second control and budget curve; the trigger searches' restarts and budget curve
        second = {"control_random_positions", "budget"} if attack == "hotflip" else {"restart", "budget"}
        assert set(rows["kind"]) == {"attack", "control", "transfer"} | second
        own = rows[rows.kind == "attack"]
        assert (own["model"] == own["source_model"]).all()
        assert (own["forward_passes"] > own["candidate_evals"]).all() and (own["candidate_evals"] > 0).all()
        transfer = rows[rows.kind == "transfer"]
        assert set(zip(transfer["source_model"], transfer["model"])) == {("baseline", "monotonic"),
                                                                        ("monotonic", "baseline")}
        assert attack in data.findings["robustness_above_control"]
        # how the search ranked its candidates, and how well the gradient predicted exact changes
        assert (own["ranking"] == cfg["attack"][attack]["ranking"]).all()
        assert own["guidance_spearman"].between(-1, 1).all() and (own["guidance_n"] > 0).all()
        assert set(data.findings["guidance"][attack]["spearman"]) == {"baseline", "monotonic"}
    # hotflip's controls: for the flips found on each model, on every model, at that model's flip positions
    ctrl = a[(a.attack == "hotflip") & a.kind.str.startswith("control")]
    assert set(zip(ctrl["source_model"], ctrl["model"])) == {(s, m) for s in ("baseline", "monotonic")
                                                             for m in ("baseline", "monotonic")}
    for attack in ("uat", "gcg"):
        found = a[(a.attack == attack) & (a.kind != "control")]
        assert (found["trigger_ids"].map(len) == cfg["attack"][attack]["trigger_len"]).all()
        assert (found["trigger_text"].str.len() > 0).all()
    flips = a[(a.attack == "hotflip") & (a.kind == "attack")]
    assert flips["n_changed"].between(0, cfg["attack"]["hotflip"]["max_flips"]).all()
    assert flips["n_changed"].max() > 0
    s = data.attack_summary
    attacked = s[~s.kind.str.startswith("control") & s.attack.isin(["uat", "hotflip", "gcg"])]
    assert attacked["above_control_ci_low"].notna().all()
    assert (attacked["forward_passes"] > 0).all() and (attacked["candidate_evals"] > 0).all()


def test_attack_rows_rescore_from_the_table(micro_run):
    from monollm.results import client
    from monollm.results.rescore import rescore

    a = micro_run.data.attacks
    model, tokenizer = client.load_model(micro_run, "baseline")
    rows = a[(a.model == "baseline") & (a.example == 0)].groupby(["attack", "kind", "source_model"]).head(1)
    assert {"hotflip", "uat", "gcg"} <= set(rows["attack"])
    for _, row in rows.iterrows():
        assert rescore(row, model, tokenizer) == pytest.approx(row["attacked_nll"], abs=1e-4)


def test_damaged_stored_model_is_refused_naming_run_and_model(micro_run, datastore_root, tmp_path):
    """Sign bits flipped in the datastore's copy of a model (same size, still valid safetensors):
    results.load_model refuses it, naming the run, the model and what to do next."""
    from monollm.model import foundation
    from monollm.results import client
    from test_models import flip_sign_bits

    ref = micro_run.data.monotonic_init_model
    stored = os.path.join(datastore_root, ".metaflow", ref["key"])
    weights = os.path.join(stored, "model.safetensors")
    original = open(weights, "rb").read()
    try:
        flip_sign_bits(stored)
        with pytest.raises(foundation.CorruptModel) as err:
            client.load_model(micro_run, "monotonic_init", path=str(tmp_path / "m"))
    finally:
        open(weights, "wb").write(original)  # the run is shared with the other flow tests
    msg = str(err.value)
    for needle in (micro_run.pathspec, "monotonic_init model", str(tmp_path / "m" / "model.safetensors"),
                   "checksum mismatch", f"resume make_monotonic --origin-run-id {micro_run.id}"):
        assert needle in msg, f"{needle!r} not in {msg!r}"
    client.load_model(micro_run, "monotonic_init", path=str(tmp_path / "again"))  # the restored copy loads


def test_resume_with_a_damaged_stored_model_stops_with_one_line(micro_run, datastore_root):
    """`resume evaluate` after the datastore's copy of the monotonic model was damaged: the step
    stops with results.load_model's words (which model of which run, the task that saved it, the
    step to resume from), not a traceback ending in a temporary path."""
    import subprocess
    import sys

    from conftest import FLOW, flow_env
    from test_models import flip_sign_bits

    ref = micro_run.data.monotonic_model
    stored = os.path.join(datastore_root, ".metaflow", ref["key"])
    weights = os.path.join(stored, "model.safetensors")
    original = open(weights, "rb").read()
    try:
        flip_sign_bits(stored)
        done = subprocess.run([sys.executable, FLOW, "resume", "evaluate", "--origin-run-id", micro_run.id],
                              cwd=datastore_root, env=flow_env(), capture_output=True, text=True, timeout=600)
    finally:
        open(weights, "wb").write(original)  # the run is shared with the other flow tests
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in out and "Internal error" not in out, out[-3000:]
    for needle in ("monotonic model of run MonoFlow/", f"saved by task {ref['pathspec']}", "checksum mismatch",
                   "resume evaluate --origin-run-id", "resume the run from train_monotonic"):
        assert needle in out, f"{needle!r} not in {out[-3000:]!r}"


def test_profile_without_resources_runs_end_to_end(micro_run, seed1_run):
    """Every [resources] key absent (the table removed, in the seed-1 micro run): @resources and
    @retry take the documented defaults and the whole flow runs."""
    from monollm import config

    defaults = dataclasses.asdict(config.ResourcesConfig())
    assert seed1_run.successful and seed1_run.data.resolved_config["resources"] == defaults
    assert micro_run.data.resolved_config["resources"] != defaults  # the micro profile's own table differs
    assert set(seed1_run.data.attacks["model"]) == {"baseline", "monotonic"}


def test_console_summary_ends_with_the_answer_and_fits_120_columns(micro_run):
    from monollm.results import client
    from monollm.results.headline import headline
    from test_cards import answer_block

    text = client.summary_text(micro_run.data, micro_run.id)
    lines = text.splitlines()
    # the tables first; the answer, the perplexity cost among it, and the card command on the last screen
    from monollm.results.wording import pipeline_check_line

    caveat = pipeline_check_line(micro_run.data.resolved_config)
    assert caveat.startswith("Profile 'micro' checks the pipeline: a 2-layer model")
    assert answer_block(text) == " ".join([caveat] + headline(micro_run.data.findings))
    assert client.ANSWER_TITLE in lines[-40:] and lines.index(client.ANSWER_TITLE) > lines.index(
        "Perplexity on the test blocks (95% bootstrap CI over blocks):")
    assert "perplexity" in " ".join(lines[lines.index(client.ANSWER_TITLE):])
    assert max(map(len, lines)) <= client.WIDTH
    assert not any(line.startswith(" ") for line in lines if line.strip() and not line.startswith("  "))
    tables = [line for line in lines if line.startswith("|")]
    assert len(tables) >= len(micro_run.data.perplexity) + len(micro_run.data.attack_summary)
    for block in "\n".join(lines).split("\n\n"):  # the rows of one table share one width
        rows = [line for line in block.splitlines() if line.startswith("|")]
        assert len({len(r) for r in rows}) <= 1
    assert lines[-1] == f"Experiment card: make card RUN={micro_run.id}"
    # `end` printed it, stored it, and wrote it without the log prefixes to the file its last line names
    import tempfile

    assert micro_run.data.summary == text
    with open(os.path.join(tempfile.gettempdir(), f"monollm-MonoFlow-{micro_run.id}-summary.txt")) as kept:
        assert kept.read() == text + "\n"
    f = micro_run.data.findings
    assert f"Constraint verification (mode {f['mode']}: negative must be 0):" in lines
    # the downstream cost per task and order preservation per model, as in the findings
    for task, d in f["downstream"].items():
        row = next(x for x in lines if x.startswith(f"| {task} "))
        assert f"{d['diff']:+.3f}" in row and f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" in row
    o = f["order_preservation"]
    for model, v in o["models"].items():
        row = next(x for x in lines if x.startswith(f"| {model} ") and f"[{v['ci_low']:.3f}, " in x)
        assert f"{v['preserved']:.3f}" in row
    assert any(f"monotonic minus baseline {o['monotonic_minus_baseline']:+.3f}" in x for x in lines)


def test_the_end_step_prints_the_last_screen(micro_run):
    """`end` printed the last screen (results.last_screen), every line within 120 columns with the prefix."""
    import tempfile

    from monollm.results import last_screen

    kept = os.path.join(tempfile.gettempdir(), f"monollm-MonoFlow-{micro_run.id}-summary.txt")
    screen = last_screen.render(micro_run.data, micro_run.id, kept)
    printed = micro_run["end"].task.stdout
    assert screen in printed and "Perplexity on the test blocks" not in printed  # the tables stay in the file
    assert max(len(line) for line in screen.splitlines()) <= last_screen.WIDTH
    assert "checks the pipeline: a 2-layer model built here and trained on generated text" in " ".join(screen.split())


def test_the_printed_commands_run_as_printed_in_a_fresh_shell(micro_run, tmp_path):
    """Each command of the last screen, run by bash from the repository root with no venv active and no
    USERNAME set (only the tests' datastore location), succeeds; `make run SEED=1` is left out (a new run)."""
    import subprocess
    import tempfile

    from conftest import ROOT

    from monollm.results import last_screen

    if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")):
        pytest.skip("the printed commands use the venv `make setup` makes; there is none here")
    kept = os.path.join(tempfile.gettempdir(), f"monollm-MonoFlow-{micro_run.id}-summary.txt")
    rows = last_screen.render(micro_run.data, micro_run.id, kept).splitlines()
    commands = [r for r in rows if r.startswith(("make ", "cat "))]
    assert commands == [f"make card RUN={micro_run.id}", f"make cards RUN={micro_run.id}", f"cat {kept}",
                        "make run SEED=1", "make compare"]
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": os.environ.get("HOME", "/root"),
           **{k: os.environ[k] for k in ("METAFLOW_DATASTORE_SYSROOT_LOCAL", "METAFLOW_HOME")}}
    # Metaflow reads cards from the .metaflow of the directory the commands run in (or one above): the
    # tests' run lives in their own folder, so the commands run from a stand-in for the repository root there
    here = os.path.join(os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"], "repository")
    os.makedirs(here, exist_ok=True)
    for name in ("Makefile", "flows", "config", ".venv"):
        if not os.path.lexists(os.path.join(here, name)):
            os.symlink(os.path.join(ROOT, name), os.path.join(here, name))
    report_html = os.path.join(here, "report.html")
    for command in [c for c in commands if c != "make run SEED=1"]:
        done = subprocess.run(["bash", "-c", command], cwd=here, env=env, capture_output=True, text=True,
                              timeout=600)
        # other flow tests of the session may have run the micro profile again: compare then refuses in one line
        repeated = command == "make compare" and "repeat a seed" in done.stderr
        assert done.returncode == 0 or repeated, (command, done.stdout[-2000:], done.stderr[-2000:])
        if command.startswith("make card "):
            assert os.path.getsize(report_html) > 10_000
        if command.startswith("make cards "):  # the run's card folder, its page opening on the experiment card
            index = os.path.join(here, f"cards-{micro_run.id}", "index.html")
            assert f"open cards-{micro_run.id}/index.html" in done.stdout
            assert 'src="experiment.html"' in open(index).read()
        if command == "make compare" and not repeated:
            assert "run(s): seed " in done.stdout and "Verdicts (mean and 95% t-interval" in done.stdout
        if command.startswith("cat "):
            assert done.stdout == micro_run.data.summary + "\n"


def test_downstream_tasks_on_all_four_models(micro_run):
    """The downstream branch ran beside the attacks: every model on every task, the table's scores
    are the means of the per-item values, and the cost per task is monotonic minus baseline."""
    data = micro_run.data
    d, listed = data.downstream, data.resolved_config["eval"]["downstream"]
    assert set(d["model"]) == set(report.MODELS) and set(d["task"]) == set(listed["tasks"])
    assert (d["n"] == listed["limit"]).all()  # both tasks have more items than the micro limit
    acc = d[d.metric == "acc"].set_index(["task", "model"])
    means = data.downstream_items.groupby(["task", "model", "metric"])["value"].mean()
    for (task, model), row in acc.iterrows():
        assert means[task, model, "acc"] == pytest.approx(row["value"])
    choice = acc.loc["corpus_choice"]
    assert (choice["chance"] == 0.25).all()
    assert choice.loc["reference", "value"] > 0.25  # the world's facts were learned
    for task in listed["tasks"]:
        cost, a = data.findings["downstream"][task], acc.loc[task, "value"]
        assert cost["diff"] == pytest.approx(a["monotonic"] - a["baseline"])
        assert cost["ci_low"] <= cost["diff"] <= cost["ci_high"] and cost["items"] == listed["limit"]


def test_order_preservation_on_all_four_models(micro_run):
    """The order branch measured every model at every layer on the same held-out pairs, and the
    findings read the deepest layer of that table."""
    from monollm.evaluation import order

    data = micro_run.data
    table, found = data.order_preservation, data.findings["order_preservation"]
    layers = data.resolved_config["model"]["build"]["num_layers"] + 1  # the embeddings, then each block
    assert set(table["model"]) == set(report.MODELS) and set(table["pooling"]) == {"last"}
    assert (table.groupby("model")["layer"].nunique() == layers).all()
    assert table["n_pairs"].nunique() == 1 and table["n_pairs"].iloc[0] > 0  # the same pairs for every model
    assert ((table["ci_low"] <= table["preserved"]) & (table["preserved"] <= table["ci_high"])).all()
    assert found == order.findings(table) and found["layer"] == layers - 1
    deepest = table[table["layer"] == layers - 1].set_index("model")["preserved"]
    assert found["monotonic_minus_baseline"] == pytest.approx(deepest["monotonic"] - deepest["baseline"])
