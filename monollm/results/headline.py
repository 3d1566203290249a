"""The answer of a run in a few sentences, derived from its findings (results.answer.findings).

The experiment card opens with it and the console summary prints it first, so both say the
same thing. Every word is chosen from the verdicts and signs of the findings, never written
by hand: a run where the constraint helps, one where it hurts and an inconclusive one each
get their own sentence.

The first sentence is the worst case per threat-model family (results.worst_case): the
verdict stands on the strongest attack the run holds. Each attack's own verdict follows,
marked "not evidence of robustness" with the diagnostic that makes it so
(results.diagnostics). Then the cost, then how many seeds stand behind the verdicts.
"""
from __future__ import annotations

from monollm.results.wording import NLL_DECIMALS, NOT_EVIDENCE, flags_of, interval

UNITS = "damage above random control, baseline minus monotonic, nats per continuation token, 95% CI"
# verdict (verdicts.compare_models) -> what the attack did to the monotonic model, against the baseline
CLAUSE = {"monotonic more robust": "{a} damages the monotonic model less than the baseline",
          "baseline more robust": "{a} damages the monotonic model more than the baseline",
          "no significant difference": "{a} does not damage them significantly differently"}


FAMILY_CLAUSE = {"monotonic more robust": "{f} damage the monotonic model less than the baseline",
                 "baseline more robust": "{f} damage the monotonic model more than the baseline",
                 "no significant difference": "{f} do not damage them significantly differently"}


def worst_case_sentence(findings: dict) -> str:
    """The worst-case verdict per family (findings["worst_case"]), per threat model; "" for a run
    without it (made before it existed)."""
    worst = findings.get("worst_case") or {}
    if not worst:
        return ""
    order = findings.get("threat_models") or list(dict.fromkeys(c.get("threat_model", "") for c in worst.values()))
    parts = []
    for i, tm in enumerate(order):
        mine = {family: c for family, c in worst.items() if c.get("threat_model", tm) == tm}
        per_family = "; ".join(FAMILY_CLAUSE[c["verdict"]].format(f=_family(key, c)) + " " + _numbers(c)
                               for key, c in mine.items() if ", universal" not in key)
        strict = "; ".join(f"{_family(key, c)}: {c['verdict']} {_numbers(c)}"
                           for key, c in mine.items() if ", universal" in key)
        lead = ("Worst case over every perturbation this run found against either model (threat model: "
                f"{tm} tokens; {UNITS}): " if i == 0 else f"With {tm} tokens: ")
        parts.append(lead + per_family + "." + (f" With one trigger per model, chosen on attack_opt: {strict}."
                                                 if strict else ""))
        lead_note = "" if i else (" Each example's member is chosen on half of its scored tokens and read on the "
                                  "other half; the control is the same maximum over as many random draws.")
        parts[-1] += lead_note
    return " ".join(parts)


def _family(key: str, verdict: dict) -> str:
    """The family a worst-case verdict is about: its own "family", else read from its key."""
    from monollm.results.members import family_of

    return verdict.get("family") or family_of(key)


def _numbers(c: dict) -> str:
    """'(+0.059 [-0.012, +0.130])', and the flags a family verdict carries of its own, where it has any."""
    flags = f"; {NOT_EVIDENCE}: {', '.join(flags_of(c))}" if flags_of(c) else ""
    return f"({interval(c['diff'], c['ci_low'], c['ci_high'])}{flags})"


def attack_verdicts_sentence(above: dict) -> str:
    """Each attack's own verdict above control, with the flags that make it no evidence of robustness."""
    parts = []
    for attack, c in above.items():
        part = f"{attack} {c['verdict']} {interval(c['diff'], c['ci_low'], c['ci_high'])}"
        if flags_of(c):
            part += f" - {NOT_EVIDENCE}: " + ", ".join(flags_of(c))
        parts.append(part)
    return "Per attack, from its own search against each model: " + "; ".join(parts) + "."


def compute_sentence(findings: dict) -> str:
    """The attacker's compute multiplier per family of the first threat model, at the larger target
    (results.compute.sentence); "" for a run without it."""
    from monollm.results.compute import sentence

    per_family = [sentence(entries[max(entries, key=lambda k: entries[k]["target"])], family)
                  for family, entries in (findings.get("compute") or {}).items() if entries and " [" not in family]
    return ("Attack compute (forward passes per model for the worst case to reach a damage level, 95% CI): "
            + "; ".join(per_family) + ".") if per_family else ""


def seeds_sentence(findings: dict) -> str:
    """How many seeds stand behind the verdicts, and what the intervals cover."""
    n = findings.get("seeds", 1)
    return (f"{'One seed stands' if n == 1 else f'{n} seeds stand'} behind these verdicts: the intervals cover the "
            "test examples, not the search or the seed. Run more seeds (make run SEED=N) and compare them "
            "(make compare).")


def robustness_sentence(above: dict) -> str:
    """One sentence on every attack's robustness verdict. above: findings["robustness_above_control"]."""
    if not above:
        return "Robustness was not measured: no attack with a random control ran."
    numbers = "; ".join(f"{a} {interval(c['diff'], c['ci_low'], c['ci_high'])}" for a, c in above.items())
    verdicts = {c["verdict"] for c in above.values()}
    which = "every attack" if len(above) > 1 else next(iter(above))
    if verdicts == {"monotonic more robust"}:
        lead = f"The monotonic model is more robust: beyond random control, {which} damages it less than the baseline"
    elif verdicts == {"baseline more robust"}:
        lead = f"The monotonic model is less robust: beyond random control, {which} damages it more than the baseline"
    elif verdicts == {"no significant difference"}:
        lead = ("Inconclusive: beyond random control, " + ("no attack damages" if len(above) > 1 else
                f"{which} does not damage") + " the two models significantly differently")
    else:
        lead = "Mixed: beyond random control, " + "; ".join(CLAUSE[c["verdict"]].format(a=a) for a, c in above.items())
    return f"{lead} ({UNITS}: {numbers})."


def cost_sentence(findings: dict) -> str:
    """One sentence on the perplexity cost of the constraint, with its sign and significance."""
    cost = findings["nll_cost_monotonic_minus_baseline"]
    ratio = findings["perplexity_ratio_monotonic_vs_baseline"]
    numbers = (f"test perplexity \u00d7{ratio:.3f} (monotonic / baseline), NLL "
               f"{interval(cost['diff'], cost['ci_low'], cost['ci_high'], NLL_DECIMALS)} nats/token")
    if not findings["perplexity_cost_significant"]:
        return f"The perplexity difference is not significant: {numbers}."
    if cost["diff"] > 0:
        return f"The constraint costs perplexity: {numbers}."
    return f"The constrained model has the lower perplexity: {numbers}."


def headline(findings: dict, arms_differ: bool = False) -> list[str]:
    """The answer: the worst case, each attack's own verdict with its flags, the cost, the seeds
    (then a caveat when the arms were trained with different schedules, so that the difference
    is not the constraint's alone). A run without a worst case (made before it existed) keeps its
    own robustness sentence."""
    above = findings.get("robustness_above_control", {})
    worst = worst_case_sentence(findings)
    if worst:
        out = [worst] + [s for s in [compute_sentence(findings)] if s]
        out += [attack_verdicts_sentence(above)] if above else []
        out += [cost_sentence(findings), seeds_sentence(findings)]
    else:
        out = [robustness_sentence(above), cost_sentence(findings)]
    if arms_differ:
        out.append("The arms were also trained with different schedules: the differences are not the constraint's "
                   "alone.")
    return out
