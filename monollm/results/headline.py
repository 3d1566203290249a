"""The answer of a run in two sentences, derived from its findings (report.findings).

The experiment card opens with it and the console summary prints it first, so both say the
same thing. Every word is chosen from the verdicts and signs of the findings, never written
by hand: a run where the constraint helps, one where it hurts and an inconclusive one each
get their own sentence.
"""
from __future__ import annotations

UNITS = "damage above random control, baseline minus monotonic, nats per continuation token, 95% CI"
# verdict (report._compare) -> what the attack did to the monotonic model, against the baseline
CLAUSE = {"monotonic more robust": "{a} damages the monotonic model less than the baseline",
          "baseline more robust": "{a} damages the monotonic model more than the baseline",
          "no significant difference": "{a} does not damage them significantly differently"}


def interval(diff: float, lo: float, hi: float, decimals: int = 3) -> str:
    """'+0.120 [+0.030, +0.210]': a signed estimate and its interval."""
    return f"{diff:+.{decimals}f} [{lo:+.{decimals}f}, {hi:+.{decimals}f}]"


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
               f"{interval(cost['diff'], cost['ci_low'], cost['ci_high'], 4)} nats/token")
    if not findings["perplexity_cost_significant"]:
        return f"The perplexity difference is not significant: {numbers}."
    if cost["diff"] > 0:
        return f"The constraint costs perplexity: {numbers}."
    return f"The constrained model has the lower perplexity: {numbers}."


def headline(findings: dict, arms_differ: bool = False) -> list[str]:
    """The answer: the robustness sentence, then the cost sentence (then a caveat when the arms
    were trained with different schedules, so that the difference is not the constraint's alone)."""
    out = [robustness_sentence(findings.get("robustness_above_control", {})), cost_sentence(findings)]
    if arms_differ:
        out.append("The arms were also trained with different schedules: the differences are not the constraint's "
                   "alone.")
    return out
