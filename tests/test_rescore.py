"""Every attack row can be re-scored from the table alone (monollm.results.rescore), with a plain
transformers forward pass that shares no code with the attacks."""
import numpy as np
import pytest

from attack_models import CONT, examples, model, tokenizer
from monollm.attacks import run_attack
from monollm.results import report
from monollm.attacks import hotflip, random, uat
from monollm.results.rescore import attacked_input, rescore


@pytest.fixture(scope="module")
def table():
    models = {"baseline": model(0), "monotonic": model(1)}
    split, quiet = {"test": examples(8, 0), "attack_opt": examples(8, 1)}, (lambda _: None)
    results = (run_attack("hotflip", models, tokenizer(), split, CONT, 16, hotflip.HotFlipConfig(max_flips=2, candidates=4,
                                                                                          controls=1), 0, log=quiet)
               + run_attack("uat", models, tokenizer(), split, CONT, 16, uat.UATConfig(trigger_len=2, top_k=3, steps=2,
                                                                              restarts=1, controls=1), 0, log=quiet)
               + run_attack("random", models, tokenizer(), split, CONT, 16, random.RandomConfig(trigger_len=2, samples=1), 0,
                            log=quiet))
    return models, report.attack_table(results)


def test_every_kind_of_row_rescores_to_its_reported_nll(table):
    models, df = table
    groups = df.groupby(["attack", "kind", "model", "source_model"])
    assert {(a, k) for a, k, _, _ in groups.groups} == {
        ("hotflip", "attack"), ("hotflip", "transfer"), ("hotflip", "control"),
        ("hotflip", "control_random_positions"), ("uat", "attack"), ("uat", "transfer"), ("uat", "control"),
        ("uat", "restart"), ("uat", "budget"), ("random", "attack")}
    for _, g in groups:
        for _, row in g.iloc[[0, -1]].iterrows():  # first and last example of every group
            assert rescore(row, models[row["model"]], tokenizer()) == pytest.approx(row["attacked_nll"], abs=1e-4)
            assert rescore(row, models[row["model"]], tokenizer(), clean=True) == pytest.approx(row["clean_nll"],
                                                                                                abs=1e-4)


def test_rows_hold_their_attacked_inputs(table):
    _, df = table
    flips = df[df.attack == "hotflip"]
    for row in flips.itertuples():
        attacked, clean = np.array(row.attacked_ids), np.array(row.input_ids)
        assert attacked.shape == clean.shape and row.scored_tokens == CONT
        assert list(np.flatnonzero(attacked != clean)) == row.changed_positions
        assert len(row.changed_positions) == row.n_changed
    uat_row = df[df.attack == "uat"].iloc[0]
    assert attacked_input(uat_row) == list(uat_row.trigger_ids) + list(uat_row.input_ids)


def test_rescore_sees_a_wrong_row(table):
    models, df = table
    row = df[(df.attack == "hotflip") & (df.kind == "attack") & (df.n_changed > 0)].iloc[0].to_dict()
    row["attacked_ids"] = row["input_ids"]  # the clean input instead of the attacked one
    assert rescore(row, models[row["model"]], tokenizer()) == pytest.approx(row["clean_nll"], abs=1e-4)
    assert abs(rescore(row, models[row["model"]], tokenizer()) - row["attacked_nll"]) > 1e-3
