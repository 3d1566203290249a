"""benchmarks/cost_table.py: the table in docs/cluster.md is the one it prints from the measured rates."""
import os
import sys

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
