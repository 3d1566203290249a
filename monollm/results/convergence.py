"""Whether each training arm had stopped improving when its budget ended (the findings'
`convergence`): a budget can end mid-descent, and then the arm's numbers, its perplexity cost
above all, are measured before convergence."""
from __future__ import annotations

import numpy as np
import pandas as pd

from monollm import stats

TAIL = 0.25
"""Fraction of each arm's optimizer steps, at the end, over which the training-loss slope is fitted."""


def convergence(training: pd.DataFrame, tail: float = TAIL) -> dict:
    """Whether each arm had stopped improving when training ended.

    Per arm: the least-squares slope of the training loss over its last `tail` of steps (at least
    three), per 100 steps, with a 95% t-interval (each step's loss is on a different batch);
    `still_falling` when the whole interval is below 0. Also the last two validation losses and
    their steps (NaN when there was one evaluation). A falling loss at the end means the arm's
    numbers are measured before convergence: more training would change them.
    training: report.training_table (arm, step, loss, val_loss); arm -> dict."""
    out = {}
    for arm, rows in training.groupby("arm", sort=True):
        rows = rows.sort_values("step")
        n = max(3, int(round(len(rows) * tail)))
        end = rows.tail(n)
        slope, lo, hi = stats.slope_interval(end["step"], end["loss"])
        val = rows[np.isfinite(rows["val_loss"].astype(float))].tail(2)
        prev = val.iloc[0] if len(val) == 2 else None
        out[arm] = {"slope_per_100_steps": 100 * slope, "ci_low": 100 * lo, "ci_high": 100 * hi,
                    "steps": [int(end["step"].iloc[0]), int(end["step"].iloc[-1])],
                    "still_falling": bool(hi < 0),
                    "val_loss_last": float(val["val_loss"].iloc[-1]) if len(val) else float("nan"),
                    "val_loss_before": float(prev["val_loss"]) if prev is not None else float("nan"),
                    "val_steps": [int(s) for s in val["step"]]}
    return out


def note(conv: dict) -> str:
    """One sentence on how each arm's loss moved at the end of training (from `convergence`)."""
    if not conv:
        return ""
    parts = []
    for arm, c in conv.items():
        val = (f", validation {c['val_loss_before']:.3f} -> {c['val_loss_last']:.3f} between steps "
               f"{c['val_steps'][0]} and {c['val_steps'][1]}" if len(c["val_steps"]) == 2 else "")
        parts.append(f"{arm} {c['slope_per_100_steps']:+.4f} nats per 100 steps "
                     f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] over steps {c['steps'][0]}-{c['steps'][1]}{val}")
    falling = [arm for arm, c in conv.items() if c["still_falling"]]
    verdict = (f"{' and '.join(falling)} still improving when training ended, so "
               f"{'its' if len(falling) == 1 else 'their'} numbers are measured before convergence "
               "(more training would lower the loss further)" if falling else
               "no arm's training loss was still measurably falling when training ended")
    return f"End of training, training-loss slope (95% CI): {'; '.join(parts)}: {verdict}."
