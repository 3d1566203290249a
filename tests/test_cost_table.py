"""benchmarks/cost_table.py: the table in docs/cluster.md is the one it prints from the measured rates."""
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import cost_table  # noqa: E402


def test_the_documented_rows_are_the_scripts():
    rows = [line for line in cost_table.table(cost_table.MEASURED).splitlines() if line.startswith("| ")]
    doc = open(os.path.join(ROOT, "docs", "cluster.md")).read()
    assert len(rows) == 1 + len(cost_table.PROFILES)
    for row in rows:
        assert row in doc, row


def test_the_gated_models_count_their_own_matmuls():
    train_8b, _ = cost_table.flops("llama-3.1-8b", 2048)
    train_69, _ = cost_table.flops("pythia-6.9b", 2048)
    assert 6 * 7.4e9 < train_8b - 12 * 32 * 4096 * 2048 < 6 * 8.1e9  # 8.03B weights less the 0.53B input embedding (a lookup)
    assert train_69 < train_8b


def test_searches_are_sized_by_the_budget_and_counted_once_per_threat_model():
    """With attack.budget every trigger search spends the same passes against each model, so uat, gcg
    and random_search cost the same, in proportion to the budget; every attack runs per threat model.
    The paper profiles' auto budget is priced at its cap (max_budget, 3.8M passes)."""
    import dataclasses

    from monollm import config

    cfg = config.load_file(os.path.join(ROOT, "config", "pythia-1.4b.toml"))
    assert (cfg.attack.budget, cfg.attack.max_budget) == ("auto", 3_800_000)
    rates = {**cost_table.MEASURED, "uat_candidates": cost_table.timed_uat_candidates()}
    h = cost_table.stages(cfg, rates, 1.0, 1.0)
    assert h["uat"] == h["gcg"] == h["random_search"] > 0
    per_pass = rates["uat_step_s"] / (rates["uat_windows"] * (rates["uat_candidates"] + 3))
    assert h["uat"] * 3600 == pytest.approx(2 * 2 * 3_800_000 * per_pass)  # 2 models x 2 threat models
    doubled = dataclasses.replace(cfg, attack=dataclasses.replace(cfg.attack, max_budget=7_600_000))
    assert cost_table.stages(doubled, rates, 1.0, 1.0)["gcg"] == pytest.approx(2 * h["gcg"])
    fixed = dataclasses.replace(cfg, attack=dataclasses.replace(cfg.attack, budget=1_900_000))
    assert cost_table.stages(fixed, rates, 1.0, 1.0)["random_search"] == pytest.approx(h["random_search"] / 2)
    one = dataclasses.replace(cfg, attack=dataclasses.replace(cfg.attack, tokens=("round_trip",)))
    assert cost_table.stages(one, rates, 1.0, 1.0)["hotflip"] == pytest.approx(h["hotflip"] / 2)
    assert cost_table.stages(one, rates, 1.0, 1.0)["train"] == h["train"]


def test_gpu_hours_for_seeds_multiply_one_seeds_stages(capsys):
    """N seeds cost N times one seed's total: the sum of the printed table's stages for that profile."""
    rows = cost_table.table(cost_table.MEASURED).splitlines()
    row = next(line for line in rows if line.startswith("| pythia-1.4b |"))
    per_seed = float(row.strip("| ").split("|")[-1])  # the table's total column, 2 decimals
    assert cost_table.gpu_hours_for_seeds("pythia-1.4b", 7) == pytest.approx(7 * per_seed, abs=7 * 0.005)
    assert cost_table.gpu_hours_for_seeds("pythia-1.4b", 0) == 0
    cost_table.main(["--seeds", "7", "--profile", "pythia-1.4b"])
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (f"pythia-1.4b: 7 seeds x {per_seed:.2f} GPU-hours per seed = "
                       f"{cost_table.gpu_hours_for_seeds('pythia-1.4b', 7):.1f} GPU-hours on one NVIDIA H200")
