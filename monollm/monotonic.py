"""Non-negativity constraint on selected linear weights of a pretrained causal LM.

Each selected ``nn.Linear.weight`` W (shape ``[out_features, in_features]``) is
re-parametrized as ``W = softplus(V)`` with ``torch.nn.utils.parametrize``, so the
optimizer updates the unconstrained V and W can never go negative. Biases stay free.

Which weights are constrained is a *variant*, resolved per architecture family
(``model.config.model_type``) by module type (``isinstance`` against the family's
transformers MLP / attention classes) and role (an attribute of that module), not by
guessing from parameter-name substrings, which silently matches the wrong layers.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from monollm.constants import DEFAULT_FLOOR

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

VARIANTS: dict[str, tuple[str, ...]] = {
    arch: tuple(roles) for arch, (_, _, roles) in _ARCHITECTURES.items()
}
ALL_VARIANTS: tuple[str, ...] = tuple(
    dict.fromkeys(v for names in VARIANTS.values() for v in names)
)


class SoftplusWeight(nn.Module):
    """Parametrization ``W = softplus(V)``; shape-preserving, any ``[out, in]``."""

    def forward(self, v: Tensor) -> Tensor:
        return F.softplus(v)


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
    module_path, class_names, roles = _ARCHITECTURES[arch]
    if variant not in roles:
        raise ValueError(
            f"unsupported variant {variant!r} for model_type={arch!r}; "
            f"allowed: {list(roles)}"
        )
    # Import lazily so an unused family never costs (or breaks) the import.
    mod = importlib.import_module(module_path)
    classes = {kind: getattr(mod, name) for kind, name in class_names.items()}
    return classes, roles[variant]


def constrained_linears(model: nn.Module, variant: str) -> list[tuple[str, nn.Linear]]:
    """Linears whose weights the variant constrains, as (qualified name, module).

    Returned in ``model.named_modules()`` order (layer by layer). Raises ValueError
    for an unsupported architecture / variant, or if the variant finds nothing
    (a silent empty selection would train an unconstrained model).
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
    if not found:
        raise ValueError(f"variant {variant!r} matched no modules in {_model_type(model)!r}")
    return found


@torch.no_grad()
def _init_v(weight: Tensor, floor: float) -> Tensor:
    """V = softplus^-1(max(|W|, floor)), computed in fp32, cast to W's dtype.

    The floor is applied exactly once, here: it keeps softplus^-1 finite at W = 0
    (log 0 = -inf) while changing |W| by at most ``floor``.
    """
    magnitude = weight.detach().float().abs().clamp_min(floor)
    return softplus_inverse(magnitude).to(weight.dtype)


def apply(model: nn.Module, variant: str, floor: float = DEFAULT_FLOOR) -> list[str]:
    """Constrain every selected weight to ``softplus(V)``; returns module names.

    After this, ``module.weight`` evaluates softplus(V) (shape ``[out, in]``) and
    the trainable parameter is ``module.parametrizations.weight.original`` (V),
    kept in the model's dtype. Raises ValueError if any selected weight is
    already parametrized (a second apply would stack softplus on softplus).
    """
    if floor <= 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    selected = constrained_linears(model, variant)
    already = [n for n, m in selected if parametrize.is_parametrized(m, "weight")]
    if already:
        raise ValueError(f"monotonic constraint already applied to {already[:3]}...")
    for _, linear in selected:
        # Write V into the existing Parameter before registering: with no
        # right_inverse, torch keeps that same Parameter object as `original`.
        linear.weight.data.copy_(_init_v(linear.weight, floor))
        parametrize.register_parametrization(linear, "weight", SoftplusWeight())
    return [n for n, _ in selected]


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
def verify(model: nn.Module, variant: str) -> dict:
    """Check non-negativity of the variant's *effective* weights.

    Reads ``module.weight`` (which evaluates softplus(V) when parametrized), so it
    works before and after ``materialize``. Returns ``{"matrices": int,
    "negative": int, "min": float, "parametrized": int}``.
    """
    selected = constrained_linears(model, variant)
    negative, parametrized, smallest = 0, 0, float("inf")
    for _, linear in selected:
        weight = linear.weight
        negative += int((weight < 0).sum().item())
        smallest = min(smallest, float(weight.min().item()))
        parametrized += int(parametrize.is_parametrized(linear, "weight"))
    return {
        "matrices": len(selected),
        "negative": negative,
        "min": smallest,
        "parametrized": parametrized,
    }
