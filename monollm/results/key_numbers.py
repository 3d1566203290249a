"""The key numbers under the experiment card's answer: one row per number the headline states, in
its order (the worst case, the perplexity cost, each attack against its control)."""
from __future__ import annotations

import pandas as pd

from monollm.results import wording
from monollm.results.card_sections import estimate, nowrap
from monollm.results.members import family_of


def key_numbers(findings: dict, ppl: pd.DataFrame, summary: pd.DataFrame, worst: pd.DataFrame | None = None
                ) -> pd.DataFrame:
    """The numbers behind the headline, one row each, in its order: the worst case per threat model
    and family (`worst`: the worst_case table; a run made before it has none), test perplexity of
    both arms and the NLL cost, then per attack the damage above random control of both arms and
    their difference. "reads" is each verdict as the answer takes it: "not evidence of robustness"
    with its flags where a flag undermines it (wording.reads)."""
    p = ppl.set_index("model")
    cost = findings["nll_cost_monotonic_minus_baseline"]

    def pp(m):
        return nowrap(wording.interval(*p.loc[m, ["perplexity", "ppl_ci_low", "ppl_ci_high"]], sign=False))

    significant = findings["perplexity_cost_significant"]
    rows = worst_case_rows(findings.get("worst_case", {}), worst)
    rows.append(("test perplexity", pp("baseline"), pp("monotonic"), "NLL, monotonic minus baseline",
                 estimate(cost["diff"], cost["ci_low"], cost["ci_high"], wording.NLL_DECIMALS),
                 wording.NLL_COST[0 if cost["diff"] > 0 else 1] if significant else wording.NO_DIFFERENCE))
    for attack, comp in findings.get("robustness_above_control", {}).items():
        own = summary[(summary.attack == attack) & (summary.kind == "attack")
                      & (summary.model == summary.source_model)].set_index("model")
        arm = {m: estimate(*own.loc[m, ["above_control", "above_control_ci_low", "above_control_ci_high"]])
               for m in ("baseline", "monotonic")}
        rows.append((f"{attack}: damage above control", arm["baseline"], arm["monotonic"],
                     "baseline minus monotonic", estimate(comp["diff"], comp["ci_low"], comp["ci_high"]),
                     wording.reads(comp)))
    return pd.DataFrame(rows, columns=["", "baseline", "monotonic", "difference", "[95% CI]", "reads"])


def worst_case_rows(verdicts: dict, worst: pd.DataFrame | None) -> list[tuple]:
    """Key-number rows of the worst case: per findings["worst_case"] entry (e.g. "universal triggers",
    "per-input edits [printable]"), each arm's worst damage above control (from `worst`) and the
    difference, baseline minus monotonic, with its verdict."""
    rows = []
    for name, comp in verdicts.items():
        family = comp.get("family") or family_of(name)
        variant = "universal" if ", universal" in name else "per-example"
        arm = {}
        if worst is not None and len(worst):
            mine = worst[(worst.threat_model == comp.get("threat_model")) & (worst.family == family)
                         & (worst.variant == variant)].set_index("model")
            arm = {m: estimate(*mine.loc[m, ["above_control", "ci_low", "ci_high"]]) for m in mine.index}
        rows.append((f"worst case, {name}: damage above control", arm.get("baseline", ""), arm.get("monotonic", ""),
                     "baseline minus monotonic", estimate(comp["diff"], comp["ci_low"], comp["ci_high"]),
                     wording.reads(comp)))
    return rows
