"""What the attack join computes: the branches' tables gathered (`gather`), then from them the
summary, the findings, the worst case and the budget curves (`attack_answer`), each as one
value, so that the flow's join only stores them."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from monollm.evaluation import downstream

from monollm.results import diagnostics, report, verdicts, worst_case


BRANCH_ARTIFACTS = ("attack_rows", "token_text", "downstream_results", "order_results", "branch_ran_on")
"""What each foreach branch stores for the join (one of the middle three is set per branch kind)."""


def older(obj, name: str):
    """Artifact `name` of a step or branch, or None where the run predates it: `resume` clones the
    tasks of the run it resumes, which may come from code that did not store it yet."""
    return getattr(obj, name, None)


@dataclass
class Branches:
    attacks: pd.DataFrame
    """Every attack branch's rows, one table (report.attack_table)."""
    token_text: dict
    """Token id -> text for every id in `attacks` (token ids only for branches that predate it)."""
    downstream: pd.DataFrame
    downstream_items: pd.DataFrame
    """The downstream branch's tables (empty ones without that branch)."""
    order_preservation: pd.DataFrame | None
    """The order branch's table (None without that branch)."""
    ran_on: dict
    """Step (or "attack:<branch>") -> runtime.ran_on, for the steps before the branches and each
    branch; steps that predate it are missing."""


def gather(inputs) -> Branches:
    """The foreach branches' artifacts (BRANCH_ARTIFACTS) in one place; `inputs`: the join's inputs."""
    found = {name: [v for v in (older(i, name) for i in inputs) if v is not None] for name in BRANCH_ARTIFACTS}
    done = found["downstream_results"][0] if found["downstream_results"] else downstream.empty()
    return Branches(attacks=pd.concat(found["attack_rows"], ignore_index=True),
                    token_text={t: text for part in found["token_text"] for t, text in part.items()},
                    downstream=done["table"], downstream_items=done["items"],
                    order_preservation=found["order_results"][0] if found["order_results"] else None,
                    ran_on=ran_on([older(i, "ran_on") for i in inputs] + found["branch_ran_on"]))


def ran_on(records: list) -> dict:
    """The `ran_on` dicts (step -> runtime.ran_on) of a join's inputs in one (None: a step that predates it)."""
    return {step: on for part in records if part for step, on in part.items()}


@dataclass
class AttackAnswer:
    attack_summary: pd.DataFrame
    """Per attack x kind x model x source: damage, success rates, compute, above control (report.attack_summary)."""
    findings: dict
    """Key numbers and verdicts (`findings`), with "worst_case", "diagnostics", "threat_models"
    and "seeds" added, and each attack's verdict above control marked with the flags that make it
    no evidence of robustness ("not_evidence")."""
    worst_case: pd.DataFrame
    """Per threat model x family x variant x model (worst_case.table)."""
    worst_case_examples: pd.DataFrame
    """Per threat model x family x model x example: the worst member and its damage (worst_case.examples)."""
    budget_curve: pd.DataFrame
    """Damage versus budget per attack x model x fraction (diagnostics.budget_curve)."""
    compute_curve: pd.DataFrame
    """Per threat model x family x model x example x budget fraction: the cross-fitted worst case above
    control against the forward passes spent (worst_case.compute_curve); findings["compute"] reads it."""


def findings(ppl: pd.DataFrame, per_block: dict, constraint: pd.DataFrame, attacks: pd.DataFrame,
             hidden_act: str, n_boot: int, seed: int, setting: dict | None = None,
             activation_swap: dict | None = None, training: pd.DataFrame | None = None) -> dict:
    """Key numbers and verdicts, each computed from the tables. `setting`: the run's [monotonic]
    table (left out: report.DEFAULT_SETTING); `activation_swap`: what `setup` swapped (None: nothing);
    `training`: both arms' histories (training_table), for `convergence` (None: not reported)."""
    p = ppl.set_index("model")["perplexity"]
    cost = report.nll_difference(per_block, "monotonic", "baseline", n_boot, seed)
    setting = {**report.DEFAULT_SETTING, **(setting or {})}
    out = {
        "perplexity": {m: float(p[m]) for m in p.index},
        "perplexity_ratio_monotonic_vs_baseline": float(p["monotonic"] / p["baseline"]),
        "nll_cost_monotonic_minus_baseline": cost,
        "perplexity_cost_significant": bool(cost["ci_low"] > 0 or cost["ci_high"] < 0),
        "constraint_applied_raises_ppl": bool(p["monotonic_init"] > p["reference"]),
        "recovery_lowers_ppl": bool(p["monotonic"] < p["monotonic_init"]),
        "constraint_holds": report.constraint_holds(constraint, setting["mode"]),
        "constrained_matrices": int(constraint["matrices"].max()),
        "mode": setting["mode"],
        "mode_note": report.mode_note(constraint, setting["mode"]),
        **report.activation_findings(hidden_act, setting, activation_swap, float(p["reference"])),
        "robustness": {},
        "robustness_above_control": {},
        "guidance": report.guidance_findings(attacks),
    }
    if training is not None and len(training):
        from monollm.results import convergence

        out["convergence"] = convergence.convergence(training)
        out["convergence_note"] = convergence.note(out["convergence"])
    attacks = report.reported(attacks)
    if len(attacks):
        for (attack, kind), _ in attacks.groupby(["attack", "kind"], sort=False):
            comp = verdicts.robustness_comparison(attacks, attack, kind, n_boot, seed)
            if comp:
                out["robustness"][f"{attack}/{kind}"] = comp
        for attack in attacks["attack"].unique():
            comp = verdicts.robustness_above_control(attacks, attack, n_boot, seed)
            if comp:
                out["robustness_above_control"][attack] = comp
    return out


def robustness_findings(attacks: pd.DataFrame, built: list, n_boot: int, seed: int) -> dict:
    """The worst-case verdicts of the families `built` (worst_case.families of `attacks`), the
    diagnostics, the threat models and the seed count, as findings entries. One run is one seed:
    its intervals cover the test examples only."""
    diag, worst = diagnostics.diagnostics(attacks, n_boot, seed), worst_case.verdicts(built, n_boot, seed)
    first = built[0].threat_model if built else None
    for comp in worst.values():
        suffix = "" if comp["threat_model"] == first else f"@{comp['threat_model']}"
        comp["not_evidence"] = diagnostics.family_flags(attacks, diag, comp["family"], comp, suffix)
    threat_models = list(dict.fromkeys(fam.threat_model for fam in built))
    return {"threat_models": threat_models, "seeds": 1, "worst_case": worst, "diagnostics": diag}


def compute_findings(built: list, targets, n_boot: int, seed: int):
    """(curve table, findings["compute"]): per threat model and family of `built` (worst_case.families;
    keyed as findings["worst_case"]), the attacker's compute multiplier at `targets`
    (attack.compute_targets; empty: compute.default_targets) from the family's worst case against
    forward passes (results.compute)."""
    from monollm.results import compute

    parts, out = [], {}
    for fam in built:
        curve = worst_case.compute_curve(fam)
        if curve.empty or set(curve["model"]) != set(compute.MODELS):
            continue
        parts.append(curve.assign(threat_model=fam.threat_model))
        chosen = list(targets) or compute.default_targets(curve)
        if chosen:
            out[fam.key] = compute.multiplier(curve, chosen, n_boot, seed)
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()), out


def mark_evidence(findings: dict) -> dict:
    """Each attack's own verdict above control gets "not_evidence": the flags (diagnostics.undermining)
    that make it no evidence of robustness ([] where none)."""
    for attack, comp in findings.get("robustness_above_control", {}).items():
        comp["not_evidence"] = diagnostics.undermining(findings.get("diagnostics", {}), attack, comp["verdict"])
    return findings


def attack_answer(branches: Branches, perplexity: pd.DataFrame, per_block: dict, constraint: pd.DataFrame,
                  hidden_act: str, *, thresholds, n_boot: int, seed: int, threat_models, setting: dict,
                  activation_swap: dict | None, training: pd.DataFrame | None, compute_targets=()) -> AttackAnswer:
    """Everything the join reports, computed from the branches' tables (and, for the findings, the
    perplexity, constraint and training tables)."""
    attacks = branches.attacks
    found = findings(perplexity, per_block, constraint, attacks, hidden_act, n_boot, seed, setting=setting,
                     activation_swap=activation_swap, training=training)
    built = worst_case.families(attacks, threat_models)  # the per-example tables, computed once
    found.update(robustness_findings(attacks, built, n_boot, seed))
    found["downstream"] = downstream.cost(branches.downstream_items, n_boot, seed)
    curve, found["compute"] = compute_findings(built, compute_targets, n_boot, seed)
    if branches.order_preservation is not None:
        from monollm.evaluation import order

        found["order_preservation"] = order.findings(branches.order_preservation)
    return AttackAnswer(attack_summary=report.attack_summary(attacks, thresholds, n_boot, seed),
                        findings=mark_evidence(found),
                        worst_case=worst_case.table(built, n_boot, seed),
                        worst_case_examples=worst_case.examples(built),
                        budget_curve=diagnostics.budget_curve(attacks, n_boot, seed), compute_curve=curve)
