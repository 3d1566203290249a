"""What `compare` and the sweep report say across seeds beyond each number's mean and t-interval:
how many seeds the worst case per family would need for a 95% interval off zero (results.seeds),
and the attack-compute multiplier across seeds (results.compute.multiplier_across_seeds), from the
runs' findings["compute"] (a run without it has none).
"""
from __future__ import annotations

import textwrap

import pandas as pd

from monollm.results import compute, seeds

SUFFIX = " baseline - monotonic"
SEEDS_HEAD = ("Seeds needed per family (worst case above control, baseline minus monotonic; t-based estimate "
              "that holds the observed mean and spread fixed):")
COMPUTE_HEAD = ("Attack compute multiplier across seeds (passes the monotonic model needs over those the baseline "
                "needs to reach a damage target; above 1: the attacker needs more against the monotonic model):")


def run_compute(data) -> dict:
    """The run's findings["compute"] ({} for a run made without it)."""
    return (getattr(data, "findings", None) or {}).get("compute") or {}


def family_values(table: pd.DataFrame, prefix: str, columns) -> dict:
    """family -> its per-run worst-case values: the rows of `table` (metric index) named prefix +
    family + SUFFIX, read in `columns` (one per run)."""
    return {m[len(prefix):-len(SUFFIX)]: table.loc[m, list(columns)].to_numpy(float)
            for m in table.index if m.startswith(prefix) and m.endswith(SUFFIX)}


def _block(head: str, lines: list[str]) -> list[str]:
    wrapped = [w for line in lines for w in textwrap.wrap("  " + line, 120, subsequent_indent="      ")]
    return ["", *textwrap.wrap(head, 120), *wrapped] if lines else []


def needed_block(lines_: list[str]) -> list[str]:
    """SEEDS_HEAD and the given lines (one per cell and family), as `lines` shows them; [] for none."""
    return _block(SEEDS_HEAD, lines_)


def lines(worst: dict, per_run_compute: list) -> list[str]:
    """The text blocks, each line within 120 columns: per family in `worst` (family -> per-seed values)
    the seeds-needed line, then a line per family and target of the compute multiplier across the
    runs' compute dicts (`per_run_compute`, one per run); a block is left out when it has no line."""
    across = compute.multiplier_across_seeds(per_run_compute)
    return (_block(SEEDS_HEAD, [seeds.line(family, values) for family, values in worst.items()])
            + _block(COMPUTE_HEAD, [compute.across_line(row) for row in across.to_dict("records")]))


def compare_lines(table: pd.DataFrame, prefix: str) -> list[str]:
    """`lines` for a compare table: the per-run columns of its worst-case rows, and its attrs["compute"]."""
    columns = [c for c in table.columns if c not in ("mean", "ci_low", "ci_high", "n")]
    return lines(family_values(table, prefix, columns), table.attrs.get("compute", []))


def by_cell(per_run_compute: dict) -> pd.DataFrame:
    """Column cell, then compute.ACROSS: the multiplier across seeds per cell, from cell -> the compute
    dicts of its runs."""
    parts = [compute.multiplier_across_seeds(dicts).assign(cell=cell) for cell, dicts in per_run_compute.items()]
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["cell", *compute.ACROSS])
    return rows[["cell", *compute.ACROSS]]


ESTIMATE = "multiplier [95% CI]"


def compute_view(table: pd.DataFrame) -> pd.DataFrame:
    """`by_cell`'s rows as a reader sees them: cell, family, target (key and mean nats), the geometric
    mean multiplier with its 95% t-interval, how many seeds give a number, and the bound-valued runs."""
    from monollm.results import wording

    def estimate(r):
        ci = f" [{compute.times(r['ci_low'])}, {compute.times(r['ci_high'])}]" if pd.notna(r["ci_low"]) else ""
        return f"{compute.times(r['ratio'])}x{ci}" if r["n"] else "-"
    rows = [{"cell": r["cell"], "family": r["family"], "target": f"{r['target']} "
             f"({wording.number(r['target_mean'], sign=False)})", ESTIMATE: estimate(r),
             "seeds": wording.count(int(r["n"])), "bound-valued runs": ", ".join(
                 f"{r[c]} {what}" for c, what in (("lower_bounds", "lower"), ("upper_bounds", "upper"),
                                                  ("no_ratio", "none")) if r[c])}
            for r in table.to_dict("records")]
    return pd.DataFrame(rows, columns=["cell", "family", "target", ESTIMATE, "seeds", "bound-valued runs"])
