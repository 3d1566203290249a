"""`monotonic.layers`: which transformer layers the constraint takes its matrices from.

Torch-free and importing only `schema`, so that both the config checks and the constraint
(monollm.model.monotonic) read the setting the same way.
"""
from __future__ import annotations

from monollm.schema import require


def layer_indices(spec: str, num_layers: int | None) -> tuple[int, ...]:
    """The layers `monotonic.layers` names, sorted, for a model of `num_layers` layers (None: check
    the form only and return the explicit indices, () for "all", "top:K" and "bottom:K").

    Forms: "all", "top:K" (the last K), "bottom:K" (the first K), "i,j,..." (0-based). Raises
    ConfigError naming `monotonic.layers` and the valid range for an empty set, a malformed
    value or a layer the model does not have.
    """
    key, text = "monotonic.layers", spec.strip()
    allowed = "\"all\", \"top:K\", \"bottom:K\" or comma-separated layer indices like \"0,3,5\""
    span = f" (the model has {num_layers} layers: 0 .. {num_layers - 1})" if num_layers else ""
    if text == "all":
        return tuple(range(num_layers)) if num_layers else ()
    side, _, count = text.partition(":")
    if side in ("top", "bottom"):
        require(count.strip().isdigit(), key, f"is {spec!r}; allowed: {allowed}")
        k = int(count)
        require(k > 0, key, f"is {spec!r}: an empty layer set; allowed: {allowed}")
        require(not num_layers or k <= num_layers, key, f"is {spec!r}: more layers than the model has{span}")
        if not num_layers:
            return ()
        return tuple(range(num_layers - k, num_layers)) if side == "top" else tuple(range(k))
    parts = [p.strip() for p in text.split(",")] if text else []
    require(bool(parts) and all(p.isdigit() for p in parts), key,
            f"is {spec!r}; allowed: {allowed}" + ("" if parts else " (an empty layer set)"))
    indices = [int(p) for p in parts]
    require(len(set(indices)) == len(indices), key, f"is {spec!r}: names a layer twice")
    outside = [i for i in indices if num_layers and i >= num_layers]
    require(not outside, key, f"is {spec!r}: layer {outside[0] if outside else ''} is out of range{span}")
    return tuple(sorted(indices))
