"""Non-negativity constraint on selected linear weights of a pretrained causal LM, and the
attribution controls that share its set-up (``MODES``).

Each selected ``nn.Linear.weight`` W (shape ``[out_features, in_features]``) is
re-parametrized as ``W = softplus(V)`` with ``torch.nn.utils.parametrize``, so the
optimizer updates the unconstrained V and W can never go negative. Biases stay free.
The controls: ``sign_frozen`` (W = sign(W0) * softplus(V): the weights start as they were
and keep the reference's sign pattern) and ``abs_init_free`` (W a plain weight that starts
where the constraint's does, and trains unconstrained). The start (``start_weight``) is
max(|W0|, floor) (init "abs") or max(W0, floor) (init "clip", the nearest matrix >= floor).

Which weights are constrained is a *variant*, resolved per architecture family
(``model.config.model_type``) by module type (``isinstance`` against the family's
transformers MLP / attention classes) and role (an attribute of that module), not by
guessing from parameter-name substrings, which silently matches the wrong layers.
"""

from __future__ import annotations

import importlib
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from monollm.constants import DEFAULT_FLOOR, INITS, MODES
from monollm.errors import ConfigError

# The verify() count that breaks each mode's promise (must be 0 at every stage that has it):
# nonneg: negative entries; sign_frozen: entries whose sign is not the reference's;
# abs_init_free: entries that did not start where the constraint starts (checked at init only: after
# that the weights are free, and their negative entries are reported, not required to be 0).
PROMISE = {"nonneg": "negative", "sign_frozen": "sign_flipped", "abs_init_free": "init_mismatch"}

# Raw V parameters are registered by torch under this path fragment.
_CONSTRAINT_PARAM_MARK = "parametrizations.weight.original"

# role -> (block kind, attribute on that block). Block kinds map to classes below.
_GPT_NEOX_ROLES = {
    "mlp_in": (("mlp", "dense_h_to_4h"),),
    "mlp_both": (("mlp", "dense_h_to_4h"), ("mlp", "dense_4h_to_h")),
    "mlp_in_attn_out": (("mlp", "dense_h_to_4h"), ("attn", "dense")),
}
_GATED_ROLES = {
    "gated_updown": (("mlp", "up_proj"), ("mlp", "down_proj")),
    "gated_all": (("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj")),
}

# model_type -> (transformers module path, {block kind: class name}, variant roles).
_ARCHITECTURES: dict[str, tuple[str, dict[str, str], dict]] = {
    "gpt_neox": (
        "transformers.models.gpt_neox.modeling_gpt_neox",
        {"mlp": "GPTNeoXMLP", "attn": "GPTNeoXAttention"},
        _GPT_NEOX_ROLES,
    ),
    "llama": (
        "transformers.models.llama.modeling_llama",
        {"mlp": "LlamaMLP", "attn": "LlamaAttention"},
        _GATED_ROLES,
    ),
    "qwen2": (
        "transformers.models.qwen2.modeling_qwen2",
        {"mlp": "Qwen2MLP", "attn": "Qwen2Attention"},
        _GATED_ROLES,
    ),
    "mistral": (
        "transformers.models.mistral.modeling_mistral",
        {"mlp": "MistralMLP", "attn": "MistralAttention"},
        _GATED_ROLES,
    ),
}

# model_type -> the attribute of its MLP class that holds the activation (swap_activation).
_ACTIVATION_ATTR = {"gpt_neox": "act", "llama": "act_fn", "qwen2": "act_fn", "mistral": "act_fn"}
# Qualified module names carry the layer index as ".layers.<i>." in every supported family.
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")

VARIANTS: dict[str, tuple[str, ...]] = {
    arch: tuple(roles) for arch, (_, _, roles) in _ARCHITECTURES.items()
}
ALL_VARIANTS: tuple[str, ...] = tuple(
    dict.fromkeys(v for names in VARIANTS.values() for v in names)
)


def check_variant(model_type: str, variant: str, model: str = "") -> None:
    """Raise ConfigError (a ValueError) naming `monotonic.variant`, the family and the variants it has,
    when `variant` does not exist for `model_type` (a supported family); `model` names the model."""
    roles = _ARCHITECTURES.get(model_type, (None, None, {}))[2]
    if roles and variant not in roles:
        of = f" ({model})" if model else ""
        raise ConfigError(f"'monotonic.variant' is {variant!r}, which the model's family, {model_type}{of}, does "
                          f"not have; its variants: {', '.join(roles)}")


class SoftplusWeight(nn.Module):
    """Parametrization ``W = softplus(V)``; shape-preserving, any ``[out, in]``."""

    def forward(self, v: Tensor) -> Tensor:
        return F.softplus(v)


class SignedSoftplusWeight(nn.Module):
    """Parametrization ``W = sign * softplus(V)`` with the sign pattern frozen: ``positive``
    (a bool buffer, shape ``[out, in]``, 1 byte per entry) is True where W0 >= 0. A zero entry
    of W0 counts as positive (it starts at +floor, as under the constraint)."""

    def __init__(self, positive: Tensor):
        super().__init__()
        self.register_buffer("positive", positive)

    def forward(self, v: Tensor) -> Tensor:
        magnitude = F.softplus(v)
        return torch.where(self.positive, magnitude, -magnitude)


def softplus_inverse(x: Tensor) -> Tensor:
    """Stable inverse of softplus for x > 0; same shape and dtype as ``x``.

    Uses ``x + log(-expm1(-x))`` (= log(exp(x) - 1)) in fp32: the naive
    ``log(expm1(x))`` overflows to inf for large x, and low-precision dtypes lose
    the small-x behaviour (V ~ log x) that most pretrained weights live in.
    """
    x32 = x.float()
    return (x32 + torch.log(-torch.expm1(-x32))).to(x.dtype)


def is_constraint_param(name: str) -> bool:
    """True for raw V parameter names (excluded from weight decay by the trainer:
    decaying V pulls W towards softplus(0) = log 2, not towards 0)."""
    return _CONSTRAINT_PARAM_MARK in name


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or "<no config.model_type>"


def _resolve(model: nn.Module, variant: str) -> tuple[dict[str, type], tuple]:
    """Return ({block kind: class}, ((kind, attr), ...)) for the model's family.

    Raises ValueError for an unsupported architecture or variant, naming the
    supported values so a bad config fails loudly before any training.
    """
    arch = _model_type(model)
    if arch not in _ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture model_type={arch!r}; "
            f"supported: {sorted(_ARCHITECTURES)}"
        )
    check_variant(arch, variant)
    module_path, class_names, roles = _ARCHITECTURES[arch]
    # Import lazily so an unused family never costs (or breaks) the import.
    mod = importlib.import_module(module_path)
    classes = {kind: getattr(mod, name) for kind, name in class_names.items()}
    return classes, roles[variant]


def constrained_linears(model: nn.Module, variant: str,
                       layers: tuple[int, ...] | None = None) -> list[tuple[str, nn.Linear]]:
    """Linears whose weights the variant constrains, as (qualified name, module).

    `layers`: the transformer layers to take them from (0-based; None: all). Returned in
    ``model.named_modules()`` order (layer by layer). Raises ValueError for an unsupported
    architecture / variant, or if the selection is empty (a silent empty selection would
    train an unconstrained model).
    """
    classes, roles = _resolve(model, variant)
    targets: set[int] = set()
    for module in model.modules():
        for kind, attr in roles:
            if isinstance(module, classes[kind]):
                linear = getattr(module, attr)
                if not isinstance(linear, nn.Linear):
                    raise ValueError(f"{type(module).__name__}.{attr} is not nn.Linear")
                targets.add(id(linear))
    # Second pass keeps true model order and qualified names.
    found = [(n, m) for n, m in model.named_modules() if id(m) in targets]
    if layers is not None:
        found = [(n, m) for n, m in found if layer_of(n) in set(layers)]
    if not found:
        where = "" if layers is None else f" in layers {list(layers)}"
        raise ValueError(f"variant {variant!r} matched no modules{where} in {_model_type(model)!r}")
    return found


def layer_of(name: str) -> int:
    """The transformer layer a qualified module name belongs to ("gpt_neox.layers.3.mlp..." -> 3)."""
    match = _LAYER_INDEX.search(name)
    if not match:
        raise ValueError(f"{name!r} names no transformer layer ('.layers.<i>.')")
    return int(match.group(1))


def resolve_layers(model: nn.Module, spec: str) -> tuple[int, ...] | None:
    """monotonic.layers for this model: None for "all" (no filter), else the sorted layer indices
    (ConfigError naming the key for a layer the model does not have)."""
    from monollm.model.layers import layer_indices

    return None if spec.strip() == "all" else layer_indices(spec, num_layers(model.config))


def num_layers(model_config) -> int:
    """Transformer layers of a model, from its transformers config (every supported family
    calls it num_hidden_layers)."""
    return int(model_config.num_hidden_layers)


def start_weight(weight: Tensor, floor: float, init: str = "abs") -> Tensor:
    """Where a constrained weight starts, in fp32, same shape: max(|W|, floor) for init "abs"
    (magnitudes kept, negative weights flipped) or max(W, floor) for "clip" (the Euclidean
    projection of W onto {W >= floor}: negative weights drop to the floor). The floor is applied
    exactly once, here: it keeps softplus^-1 finite at W = 0 (log 0 = -inf)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")
    w = weight.detach().float()
    return (w.abs() if init == "abs" else w).clamp_min(floor)


@torch.no_grad()
def _init_v(weight: Tensor, floor: float, init: str = "abs") -> Tensor:
    """V = softplus^-1(start_weight(W)), computed in fp32, cast to W's dtype."""
    return softplus_inverse(start_weight(weight, floor, init)).to(weight.dtype)


def apply(model: nn.Module, variant: str, floor: float = DEFAULT_FLOOR, mode: str = "nonneg",
          layers: tuple[int, ...] | None = None, init: str = "abs") -> list[str]:
    """Put every selected weight under `mode`; returns module names.

    nonneg: ``module.weight`` evaluates softplus(V) (shape ``[out, in]``), V started at
    softplus^-1(start_weight(W0, floor, init)); the trainable parameter is
    ``module.parametrizations.weight.original`` (V), kept in the model's dtype.
    sign_frozen: W = sign(W0) * softplus(V) (``SignedSoftplusWeight``), V from |W0| (init "abs"
    only: the weights start as they were, up to the floor).
    abs_init_free: the weight stays a plain parameter, set to start_weight(W0); it then trains
    as the baseline's weights do (weight decay included). Raises ValueError if any selected
    weight is already parametrized (a second apply would stack softplus on softplus).
    """
    if floor <= 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
    if mode == "sign_frozen" and init != "abs":
        raise ValueError(f"mode 'sign_frozen' starts from |W0| (init 'abs'), not init {init!r}")
    selected = constrained_linears(model, variant, layers)
    already = [n for n, m in selected if parametrize.is_parametrized(m, "weight")]
    if already:
        raise ValueError(f"monotonic constraint already applied to {already[:3]}...")
    for _, linear in selected:
        if mode == "abs_init_free":
            with torch.no_grad():
                linear.weight.copy_(start_weight(linear.weight, floor, init).to(linear.weight.dtype))
            continue
        # the sign pattern is read before V overwrites the weight
        parametrization = SoftplusWeight() if mode == "nonneg" else SignedSoftplusWeight(linear.weight.detach() >= 0)
        # Write V into the existing Parameter before registering: with no
        # right_inverse, torch keeps that same Parameter object as `original`.
        linear.weight.data.copy_(_init_v(linear.weight, floor, init))
        parametrize.register_parametrization(linear, "weight", parametrization)
    return [n for n, _ in selected]


def swap_activation(model: nn.Module, name: str) -> str:
    """Replace the MLP activation of every layer by `name` (a transformers ACT2FN key, e.g. "relu")
    and record it in ``model.config.hidden_act``, so a saved model reloads with it; returns the
    activation it replaced."""
    from transformers.activations import ACT2FN

    arch = _model_type(model)
    if arch not in _ACTIVATION_ATTR:
        raise ValueError(f"monotonic.activation: no activation swap for model_type={arch!r}; "
                         f"supported: {sorted(_ACTIVATION_ATTR)}")
    mlp_class = _resolve(model, VARIANTS[arch][0])[0]["mlp"]
    mlps = [m for m in model.modules() if isinstance(m, mlp_class)]
    if not mlps:
        raise ValueError(f"monotonic.activation: no {mlp_class.__name__} in the model")
    for mlp in mlps:
        setattr(mlp, _ACTIVATION_ATTR[arch], ACT2FN[name])
    before = str(model.config.hidden_act)
    model.config.hidden_act = name
    return before


def materialize(model: nn.Module) -> int:
    """Replace each parametrization by the plain tensor softplus(V); returns count.

    Afterwards ``state_dict()`` has ordinary ``...weight`` keys, so
    ``save_pretrained`` writes a checkpoint vanilla ``from_pretrained`` can load.
    """
    count = 0
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in list(module.parametrizations.keys()):
            parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
            count += 1
    return count


@torch.no_grad()
def snapshot(model: nn.Module, variant: str, mode: str, floor: float = DEFAULT_FLOOR,
             layers: tuple[int, ...] | None = None, init: str = "abs") -> dict | None:
    """What `verify` compares a mode against, taken before `apply`: name -> the reference's sign
    pattern (sign_frozen: bool ``[out, in]``, True where W0 >= 0) or the promised start
    start_weight(W0, floor, init) (abs_init_free: in the weight's dtype); None for nonneg."""
    selected = constrained_linears(model, variant, layers)
    if mode == "sign_frozen":
        return {n: m.weight.detach() >= 0 for n, m in selected}
    if mode == "abs_init_free":
        return {n: start_weight(m.weight, floor, init).to(m.weight.dtype) for n, m in selected}
    return None


@torch.no_grad()
def verify(model: nn.Module, variant: str, mode: str = "nonneg", layers: tuple[int, ...] | None = None,
           reference: dict | None = None) -> dict:
    """Check what `mode` promises of the variant's *effective* weights.

    Reads ``module.weight`` (which evaluates the parametrization when there is one), so it
    works before and after ``materialize``. Returns ``{"matrices": int, "negative": int,
    "min": float, "parametrized": int}``, plus for sign_frozen ``"sign_flipped"`` (entries whose
    sign is the opposite of `reference`'s pattern; 0 counts as either sign) and, for
    abs_init_free given a `reference` (`snapshot`), ``"init_mismatch"`` (entries not equal to
    the promised start within fp32 rounding). `PROMISE[mode]` names the count that must be 0.
    """
    selected = constrained_linears(model, variant, layers)
    if mode == "sign_frozen" and reference is None:
        raise ValueError("verify(mode='sign_frozen') needs the reference's signs (snapshot)")
    negative, parametrized, smallest, flipped, mismatch = 0, 0, float("inf"), 0, 0
    for name, linear in selected:
        weight = linear.weight
        negative += int((weight < 0).sum().item())
        smallest = min(smallest, float(weight.min().item()))
        parametrized += int(parametrize.is_parametrized(linear, "weight"))
        if mode == "sign_frozen":
            positive = reference[name].to(weight.device)
            flipped += int(((weight < 0) & positive).sum().item() + ((weight > 0) & ~positive).sum().item())
        elif mode == "abs_init_free" and reference is not None:
            expected = reference[name].to(weight.device).float()
            mismatch += int((~torch.isclose(weight.float(), expected, rtol=1e-5, atol=0)).sum().item())
    out = {"matrices": len(selected), "negative": negative, "min": smallest, "parametrized": parametrized}
    if mode == "sign_frozen":
        out["sign_flipped"] = flipped
    elif mode == "abs_init_free" and reference is not None:
        out["init_mismatch"] = mismatch
    return out


def violations(check: dict, mode: str) -> int:
    """Entries of one `verify` result that break `mode`'s promise (`PROMISE`; 0 where the stage
    does not check it, e.g. abs_init_free after training)."""
    return int(check.get(PROMISE[mode], 0))
