"""Flags across runs: in how many runs each verdict was flagged "not evidence of robustness".

One run's verdicts carry their flags (results.wording.flags_of: an attack's "not_evidence", a
family verdict's own "flags"); here they are named by `compare`'s metric names, counted across
runs, and put into words beside the verdict across seeds.
"""
from __future__ import annotations

from monollm.results import wording

WORST_CASE = "worst case above control "
"""compare.WORST_CASE: the metric prefix of a worst-case verdict (+ "<family> baseline - monotonic")."""
ABOVE = "dNLL above control "
"""The metric prefix of an attack's own verdict above control (+ "<attack> baseline - monotonic")."""


def run_flags(findings: dict) -> dict:
    """metric -> the flags of that verdict in one run (every verdict the run has, [] where none)."""
    out = {f"{WORST_CASE}{family} baseline - monotonic": wording.flags_of(c)
           for family, c in (findings.get("worst_case") or {}).items()}
    out.update({f"{ABOVE}{attack} baseline - monotonic": wording.flags_of(c)
                for attack, c in (findings.get("robustness_above_control") or {}).items()})
    return out


def count(per_run: list[dict]) -> dict:
    """metric -> {"flagged": runs whose verdict carries a flag, "runs": runs with the verdict,
    "flags": every flag seen, each once}. per_run: `run_flags` of each run."""
    out: dict = {}
    for flags in per_run:
        for metric, mine in flags.items():
            entry = out.setdefault(metric, {"flagged": 0, "runs": 0, "flags": []})
            entry["runs"] += 1
            entry["flagged"] += bool(mine)
            entry["flags"] += [f for f in mine if f not in entry["flags"]]
    return out


def reading(verdict: str, counted: dict | None, unit: str = "run") -> str:
    """The verdict across runs, with how many runs flagged it: 'not evidence of robustness: flagged in
    2 of 3 runs (weak_guidance on monotonic); across them: baseline more robust'; the verdict alone
    where no run flagged it (or the metric has no flags: a cost)."""
    if not isinstance(counted, dict) or not counted["flagged"]:
        return verdict
    return (f"{wording.NOT_EVIDENCE}: flagged in {counted['flagged']} of {wording.count(counted['runs'], unit)} "
            f"({', '.join(counted['flags'])}); across them: {verdict}")
