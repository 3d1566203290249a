"""The words and number formats every reader sees: the experiment card, the console summary,
`compare` (and the notebook, which prints it) and the sweep report take them from here, so a
verdict reads the same wherever it is shown.

Signs: a robustness difference is baseline minus monotonic (positive: the monotonic model is
damaged less); a cost is monotonic minus baseline (NLL: positive, the constraint costs perplexity;
accuracy: negative, the constraint costs accuracy). Numbers have fixed decimals with their sign:
DECIMALS, and NLL_DECIMALS for the NLL cost, which is often a few thousandths of a nat.
"""
from __future__ import annotations

import math

DECIMALS, NLL_DECIMALS = 3, 4

NO_DIFFERENCE = "no significant difference"
ROBUSTNESS = ("monotonic more robust", "baseline more robust")
NLL_COST = ("costs perplexity", "lower perplexity")
ACCURACY = ("higher accuracy", "costs accuracy")
"""Verdict words of a difference whose interval lies above 0 and below 0 (NO_DIFFERENCE: it contains 0)."""
ANECDOTE = "an anecdote, not a verdict"
"""What one seed gives: an interval across seeds needs two."""
NO_SPREAD = "no spread: every seed gives the same value"
NO_RESULT = "no result"
SIGNS = ("Signs: robustness is baseline minus monotonic (positive: the monotonic model is damaged less); costs are "
         "monotonic minus baseline (NLL cost positive: the constraint costs perplexity; accuracy negative: it costs "
         "accuracy).")
"""The sign convention, said once at the head of a table of differences."""


def signed(x: float, decimals: int = DECIMALS) -> str:
    """'+0.059': fixed decimals with the sign; '-' for a missing number."""
    return f"{x:+.{decimals}f}" if x is not None and math.isfinite(x) else "-"


def number(x: float, decimals: int = DECIMALS, sign: bool = True) -> str:
    """signed(x), or without the sign where it is not a difference (a perplexity, a ratio): '1.170'."""
    return signed(x, decimals) if sign or x is None or not math.isfinite(x) else f"{x:.{decimals}f}"


def interval(x: float, lo: float, hi: float, decimals: int = DECIMALS, sign: bool = True) -> str:
    """'+0.059 [-0.012, +0.130]': an estimate and its 95% interval (`number`s); the estimate alone
    where there is no interval (one seed), '-' where there is no estimate."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return number(x, decimals, sign)
    return f"{number(x, decimals, sign)} [{number(lo, decimals, sign)}, {number(hi, decimals, sign)}]"


def read(lo: float, hi: float, words: tuple[str, str] = ROBUSTNESS) -> str:
    """What a 95% interval of a difference supports: words[0] above 0, words[1] below 0, else NO_DIFFERENCE."""
    if lo > 0:
        return words[0]
    if hi < 0:
        return words[1]
    return NO_DIFFERENCE


def count(n: int, unit: str = "seed") -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} {unit}" + ("" if n == 1 else "s")


def seeds(n: int, unit: str = "seed") -> str:
    """'3 seeds'; '1 seed: an anecdote, not a verdict' (no interval across seeds from one)."""
    return count(n, unit) + (f": {ANECDOTE}" if n == 1 else "")


def across_seeds(n: int, lo: float, hi: float, words: tuple[str, str] = ROBUSTNESS) -> str:
    """The verdict of a t-interval across n seeds: ANECDOTE for one, NO_RESULT for none, NO_SPREAD
    where every seed gives the same value (repeated runs of one computation, or a number the seed
    does not move)."""
    if n < 1:
        return NO_RESULT
    if n < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return ANECDOTE
    if math.isclose(lo, hi, rel_tol=1e-9, abs_tol=1e-12):
        return NO_SPREAD
    return read(lo, hi, words)


NOT_EVIDENCE = "not evidence of robustness"
"""What an attack's verdict reads when a masking flag undermines it (results.diagnostics)."""
ANSWERING_PROFILE = "config/pythia-1.4b.toml"
"""The profile whose runs answer the question (paper scale)."""


def pipeline_check_line(config: dict | None) -> str:
    """The line shown next to every answer of a profile with `pipeline_check = true` (a resolved
    configuration); "" for any other profile (the paper profiles) or a run made before the key."""
    if not (config or {}).get("pipeline_check"):
        return ""
    build = (config.get("model") or {}).get("build") or {}
    layers = f"{build['num_layers']}-layer" if build.get("num_layers") else "small"
    data = "generated text" if (config.get("data") or {}).get("source") == "builtin" else "its own small corpus"
    return (f"Profile {config.get('name', '')!r} checks the pipeline: a {layers} model built here and trained on "
            f"{data}, not an answer about pretrained models; {ANSWERING_PROFILE} answers the question.")


def flags_of(verdict: dict) -> list[str]:
    """The flags a verdict carries, whatever made them: its own "flags" list and its "not_evidence"
    list (results.answer.mark_evidence), in order, each once."""
    found = [*(verdict.get("flags") or []), *(verdict.get("not_evidence") or [])]
    return list(dict.fromkeys(str(f) for f in found))


def reads(verdict: dict) -> str:
    """A verdict as a reader should take it: its words, or NOT_EVIDENCE with its flags where a flag
    undermines it ('not evidence of robustness (weak_guidance on monotonic)')."""
    flags = flags_of(verdict)
    return f"{NOT_EVIDENCE} ({', '.join(flags)})" if flags else verdict["verdict"]
