"""Building frozen config dataclasses from parsed TOML tables, and the checks that name a key.

`build(cls, table, where)` refuses unknown keys and wrong types with a ConfigError naming the
dotted key (`where`); `require` and `one_of` are the value checks every config section uses.
A dataclass with a class attribute `EXTRA_TABLES = "<field>"` collects its unknown keys into
that dict field instead (the [attack.<name>] tables), for the caller to check. Fields named in a
class attribute `ONE_OR_MANY` (a tuple) also take a single value, read as a list of one.

Imports nothing of the package but `errors`, so that every module with settings can use it.
"""
from __future__ import annotations

import dataclasses
import types
import typing

from monollm.errors import ConfigError


def build(cls, raw: dict, where: str):
    """Construct dataclass `cls` from the table `raw`; `where` is its dotted key ("" at the top)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"'{where or 'config'}' must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    extra_field = getattr(cls, "EXTRA_TABLES", None)
    names = [f.name for f in dataclasses.fields(cls) if f.name != extra_field]
    extra = {k: v for k, v in raw.items() if k not in names}
    if extra and not extra_field:
        raise ConfigError(f"unknown key '{join(where, sorted(extra)[0])}' (allowed: {', '.join(names)})")
    one_or_many = getattr(cls, "ONE_OR_MANY", ())
    raw = {k: [v] if k in one_or_many and not isinstance(v, (list, tuple)) else v for k, v in raw.items()}
    kwargs = {n: coerce(hints[n], raw[n], join(where, n)) for n in names if n in raw}
    if extra_field:
        kwargs[extra_field] = extra
    return cls(**kwargs)


def coerce(hint, value, key: str):
    """`value` as type `hint` (a dataclass, bool, int, float, str, tuple[...] or X | None)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [h for h in typing.get_args(hint) if h is not type(None)]
        return None if value is None else _either(inner, value, key)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        inner = typing.get_args(hint)[0]
        return tuple(coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    return _scalar(hint, value, key)


def _either(hints: list, value, key: str):
    """`value` as the first of `hints` that takes it (int | str: an integer, or a string such as "auto")."""
    for hint in hints[:-1]:
        try:
            return coerce(hint, value, key)
        except ConfigError:
            pass
    try:
        return coerce(hints[-1], value, key)
    except ConfigError:
        if len(hints) == 1:
            raise
        raise ConfigError(f"'{key}' must be {' or '.join(_KINDS[h][0] for h in hints if h in _KINDS)}, "
                          f"got {value!r}") from None


_KINDS = {bool: ("true or false", (bool,)), int: ("an integer", (int,)), float: ("a number", (int, float)),
          str: ("a string", (str,))}


def _scalar(hint, value, key: str):
    if hint not in _KINDS:
        return value
    what, accepted = _KINDS[hint]
    if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
        raise ConfigError(f"'{key}' must be {what}, got {value!r}")
    return float(value) if hint is float else value


def join(where: str, name: str) -> str:
    """The dotted key of `name` inside the table at `where`."""
    return f"{where}.{name}" if where else name


def require(ok: bool, key: str, message: str):
    """Raise ConfigError "'key' message" unless `ok`."""
    if not ok:
        raise ConfigError(f"'{key}' {message}")


def one_of(value, allowed, key: str):
    """Raise ConfigError naming `key` and the allowed values unless `value` is one of them."""
    require(value in allowed, key, f"is {value!r}; allowed: {', '.join(map(str, allowed))}")


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict -> {"train.lr": ..., ...} (lists stay values)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
