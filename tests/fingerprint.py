"""Fingerprints of a run's result tables, to show that a change of code leaves results alone.

    python tests/fingerprint.py RUN_ID OUT.json     # write the fingerprint of a finished run

A fingerprint keeps every value of `perplexity`, `training`, `attacks`, `attack_summary`,
`worst_case`, `budget_curve` and `findings`, except wall-clock columns (they differ on every run). Token-id columns are kept as a
digest of their values; in the attack table, every column that is not a float is kept as one digest
(`_column`), and columns that others determine are left out (`DERIVED`). `differences` checks two fingerprints value by value: text and integers
exactly, floats to a relative 1e-4 (REL: the same seed on the same CPU build gives the same
labels and nearly the same bits). That needs the same torch build and CPU capability: `machine`
records both, and `close` is the weaker check for another machine (training and perplexity to a
relative 1e-3, the same rows and columns elsewhere).
"""
import hashlib
import json
import math
import sys

TABLES = ("perplexity", "training", "attacks", "attack_summary", "worst_case", "budget_curve")
WALL_CLOCK = {"tokens_per_s", "seconds", "search_seconds", "wall_s"}
"""Columns that measure time, not results."""
REL, ABS = 1e-4, 2e-5
"""How close two floats of the same machine key must be: within REL of each other, or within ABS
absolutely. Two CPUs of one torch build and one capability (AVX512) still differ in the last bits
of float32 sums: measured, up to 1.2e-6 nats on attack dNLLs, with every label, trigger and count
equal. A dNLL is a difference of two nearly equal NLLs of a few nats, so its rounding error is on
the scale of the NLLs, not of the difference: a dNLL near 0.0009 can differ by 1e-6, far beyond a
relative 1e-4 of itself. ABS is therefore an absolute tolerance in nats, about 16 times the largest
difference measured between machines and 50 times below the smallest change a different trigger or
member makes (1e-3 nats and more; labels and ids are compared exactly anyway)."""


DERIVED = {("attacks", "attacked_nll"), ("attacks", "changed_positions")}
"""Columns left out because others hold them exactly: attacked NLL = clean NLL + dNLL, and the changed
positions are where attacked_ids and input_ids differ (the row's own digests)."""


def _column(table: str, values: list):
    """The attack table's values as they are where they are floats (compared to REL and ABS), its other
    columns (labels, ids, digests: compared exactly anyway) as one digest each, so that the file stays
    small (the table has one row per attack x kind x model x trial x example); other tables as they are."""
    if table != "attacks" or all(isinstance(v, float) or v == "nan" for v in values):
        return values
    return "sha:" + hashlib.sha256(json.dumps(values, default=str).encode()).hexdigest()[:16]


def _value(v):
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return "sha:" + hashlib.sha256(json.dumps(v, default=str).encode()).hexdigest()[:16]
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return v


def machine() -> dict:
    """What decides the bits of a CPU run: the torch build and the CPU kernels it dispatches to."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def close(expected: dict, got: dict) -> list[str]:
    """Differences that floating-point reordering on other CPU kernels cannot explain: the tables'
    shapes and labels, and the training and perplexity numbers beyond a relative 1e-3."""
    diffs = []
    for name in ("perplexity", "training", "attacks", "attack_summary"):
        if sorted(expected[name]) != sorted(got[name]):
            diffs.append(f"/{name}: columns {sorted(got[name])} != {sorted(expected[name])}")
            continue
        for col, values in expected[name].items():
            if isinstance(values, str):  # a digest of a column of labels or ids (`_column`)
                diffs += [f"/{name}/{col}: labels differ"] if values != got[name][col] else []
            elif len(values) != len(got[name][col]):
                diffs.append(f"/{name}/{col}: {len(got[name][col])} rows, expected {len(values)}")
            elif all(isinstance(v, str) for v in values) and name != "training":
                diffs += [f"/{name}/{col}: labels differ"] if values != got[name][col] else []
    for name, col in (("perplexity", "perplexity"), ("training", "loss"), ("training", "val_loss")):
        for i, (e, g) in enumerate(zip(expected[name][col], got[name][col])):
            if isinstance(e, float) and not math.isclose(e, g, rel_tol=1e-3):
                diffs.append(f"/{name}/{col}[{i}]: {g} != {e}")
                break
    return diffs


def fingerprint(data) -> dict:
    """The comparable content of a run's data (a Metaflow `Run.data` or any object with the
    same attributes)."""
    out = {}
    for name in TABLES:
        table = getattr(data, name)
        out[name] = {col: _column(name, [_value(v) for v in table[col]]) for col in table.columns
                     if col not in WALL_CLOCK and (name, col) not in DERIVED}
    out["findings"] = json.loads(json.dumps(data.findings, default=_value))
    out["machine"] = machine()
    return out


def differences(expected, got, path="") -> list[str]:
    """Where `got` differs from `expected` (paths), at most a few per table."""
    if isinstance(expected, dict) and isinstance(got, dict):
        diffs = [f"{path}/{k}: missing" for k in expected if k not in got]
        diffs += [f"{path}/{k}: unexpected" for k in got if k not in expected]
        for k in expected:
            if k in got:
                diffs += differences(expected[k], got[k], f"{path}/{k}")[:5]
        return diffs
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return [f"{path}: {len(got)} values, expected {len(expected)}"]
        return [d for i, (e, g) in enumerate(zip(expected, got)) for d in differences(e, g, f"{path}[{i}]")][:5]
    if isinstance(expected, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return [] if math.isclose(expected, got, rel_tol=REL, abs_tol=ABS) else [f"{path}: {got} != {expected}"]
    return [] if expected == got else [f"{path}: {got!r} != {expected!r}"]


if __name__ == "__main__":
    from metaflow import Run, namespace

    namespace(None)
    run_id, out_path = sys.argv[1], sys.argv[2]
    with open(out_path, "w") as f:
        json.dump(fingerprint(Run(f"MonoFlow/{run_id}").data), f, sort_keys=True)
    print(f"wrote {out_path}")
