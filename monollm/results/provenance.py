"""What a run's model steps actually ran on, for the experiment card's Sources: the device and the
precision each step recorded (`ran_on`, runtime.ran_on), not the settings that asked for them
(`device = "auto"`, `attack.search_precision = "auto"`)."""
from __future__ import annotations

import pandas as pd

STEPS = ("train_baseline", "train_monotonic", "evaluate")
"""The model steps before the attack branches, in the order the card lists them."""


def ran_on_view(ran_on: dict | None) -> pd.DataFrame | None:
    """One row per model step: step, device, precision; the steps before the branches first, then
    each branch as `attack <branch>`. None for a run that recorded none (it predates `ran_on`)."""
    if not ran_on:
        return None
    order = [s for s in STEPS if s in ran_on] + [s for s in ran_on if s not in STEPS]
    return pd.DataFrame([{"step": step.replace(":", " "), "device": device_words(ran_on[step]),
                          "precision": ran_on[step]["precision"]} for step in order])


def device_words(on: dict) -> str:
    """E.g. "cpu", "cuda (NVIDIA H100 80GB HBM3)", "4 x cuda (NVIDIA A100-SXM4-80GB)"."""
    text = on["device"] + (f" ({on['device_name']})" if on.get("device_name") else "")
    return f"{on['processes']} x {text}" if on.get("processes", 1) > 1 else text


def ran_on_section(data, table) -> list:
    """The card's components: a heading and the table (`table`: DataFrame -> card Table), or one line
    saying that the run recorded no devices."""
    from metaflow.cards import Markdown

    view = ran_on_view(getattr(data, "ran_on", None))
    if view is None:
        return [Markdown("* the model steps recorded no device or precision (this run predates `ran_on`)")]
    return [Markdown("### What each model step ran on (as the step recorded it, not as the profile asked)"),
            table(view)]
