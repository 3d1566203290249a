"""The shape of every field of a chains or pairs file (monollm.evaluation.order_chains), checked
strictly: a value of another type is refused with one line naming the file, the record and the
field, never read with another meaning (a string where a list of texts belongs would otherwise be
read as its characters, a list where an id belongs would stop with a traceback).

`where` is the record in words, e.g. "chains.jsonl line 3" or "pairs.json pairs[7]"; every
check returns the value it accepted.
"""
from __future__ import annotations

import json

SPLITS = ("fit", "eval")
"""The values of a chain's or a pair's `split`, where a file gives one."""


def shown(value) -> str:
    """A value in words for a message: its JSON type and its start, e.g. "a list ["a", "b"]"."""
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
    text = json.dumps(value, ensure_ascii=False, default=str)
    return f"{kind} {text[:60]}{'...' if len(text) > 60 else ''}" if value is not None else kind


def fail(where: str, field: str, what: str, value):
    raise ValueError(f"{where} field {field!r}: {what}, got {shown(value)}")


def record(obj, where: str) -> dict:
    """A record must be a JSON object."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: must be a JSON object, got {shown(obj)}")
    return obj


def text(obj: dict, field: str, where: str) -> str:
    """A non-empty string (an axis, a topic, one text)."""
    value = obj.get(field)
    if not isinstance(value, str) or not value.strip():
        fail(where, field, "must be a non-empty string", value)
    return value


def ident(obj: dict, field: str, where: str):
    """An id: a non-empty string or an integer (not a boolean, a list or an object)."""
    value = obj.get(field)
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip())):
        fail(where, field, "must be a non-empty string or an integer", value)
    return value


def texts(obj: dict, field: str, where: str) -> list[str]:
    """A list of at least two distinct non-empty strings, weakest first (a string is not a list)."""
    value = obj.get(field)
    if not isinstance(value, list):
        fail(where, field, "must be a list of >= 2 distinct texts, weakest first", value)
    for i, t in enumerate(value):
        if not isinstance(t, str) or not t.strip():
            fail(where, f"{field}[{i}]", "must be a non-empty string", t)
    if len(value) < 2 or len(set(value)) != len(value):
        fail(where, field, "must list >= 2 distinct texts, weakest first", value)
    return value


def split(obj: dict, where: str) -> str | None:
    """The optional `split`: "fit" or "eval" where given."""
    if "split" in obj and obj["split"] not in SPLITS:
        fail(where, "split", f"must be one of {', '.join(SPLITS)}", obj["split"])
    return obj.get("split")


def positive_int(obj: dict, field: str, where: str) -> int:
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(where, field, "must be a positive integer", value)
    return value


def unique(ids: list, part: str, field: str, where: str) -> None:
    """Refuse an id that two records of `part` share."""
    seen = set()
    for i, x in enumerate(ids):
        if x in seen:
            raise ValueError(f"{where} {part}[{i}] field {field!r}: {x!r} is not unique")
        seen.add(x)


def jsonl_lines(path: str) -> list[tuple[int, dict]]:
    """(line number, chain) of every non-empty line of a .jsonl chains file, each checked: an
    object with an axis, a topic, >= 2 distinct texts, an optional split and an optional
    `chain_id` that no other line has. Refuses a file with no chains."""
    out, ids = [], {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {n} (chain {len(out) + 1})"
            try:
                chain = record(json.loads(line), where)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not JSON ({err.msg} at column {err.colno})") from None
            text(chain, "axis", where), text(chain, "topic", where), texts(chain, "texts", where), split(chain, where)
            if "chain_id" in chain:
                cid = ident(chain, "chain_id", where)
                if cid in ids:
                    raise ValueError(f"{where} field 'chain_id': {cid!r} is also line {ids[cid]}'s")
                ids[cid] = n
            out.append((n, chain))
    if not out:
        raise ValueError(f"{path}: no chains (one JSON object a line)")
    return out
