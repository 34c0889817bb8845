"""Coverage of a plan: which weight-bearing modules stay float, why, and what share of the model they hold.

A *weight module* is any module owning a parameter of two or more dimensions directly (a conv or linear weight,
an embedding table, a custom layer's own ``nn.Parameter``, a position embedding), plus every quantizable layer.
Its *weight parameters* are those >= 2-D parameters (biases and norms are not counted; a tied parameter counts
once). A plan covers a weight module when the module is quantizable and the plan gives it a non-identity spec;
every other weight module stays float, for one of three reasons:

* ``not_in_plan``: a quantizable layer the plan does not name;
* ``identity``: a layer the plan keeps at 32/32 on purpose (not warned about);
* ``unsupported``: a module the quantization core cannot swap (its class named, e.g. a custom layer calling
  ``F.linear`` on its own parameter, or a Conv2d subclass with an own forward no layer adapter takes).

:func:`plan_coverage` gives the whole :class:`Coverage` (with FLOP shares when an example input is given,
counted by ``torch.utils.flop_counter``); :func:`warn_coverage` is what :func:`quantize_model` warns with
(:class:`CoverageWarning`).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn

from workbench.quant.inputs import call_model, move_inputs, take_inputs
from workbench.quant.introspect import QUANTIZABLE_TYPES, is_quantizable, quantizable_type, unsupported_reason

__all__ = [
    "FLOAT_REASONS",
    "Coverage",
    "CoverageWarning",
    "FloatLayer",
    "format_share",
    "plan_coverage",
    "warn_coverage",
    "weight_modules",
]

FLOAT_REASONS: dict[str, str] = {
    "not_in_plan": "not in plan",
    "identity": "kept at 32/32 by the plan",
    "unsupported": "unsupported",
}
"""Why a weight module stays float (kind -> words)."""


class CoverageWarning(UserWarning):
    """Weight-bearing modules stay float after a plan (unsupported, or quantizable but not in the plan)."""


class _Plan(Protocol):
    def get(self, name: str, default: Any = None) -> Any: ...


class _SizedPlan(_Plan, Protocol):
    def __len__(self) -> int: ...


@dataclass(frozen=True)
class FloatLayer:
    """One weight module left float by a plan: its path, class, why (``kind`` in :data:`FLOAT_REASONS` and
    ``reason`` in words), its weight parameters, their share of all weight parameters and, when the coverage was
    computed with an example input, its share of the model's FLOPs."""

    name: str
    type_name: str
    kind: str
    reason: str
    weight_params: int
    param_share: float
    flop_share: float | None = None

    @property
    def short_reason(self) -> str:
        """``"unsupported CustomLayer"``, ``"not in plan"``, ``"kept at 32/32 by the plan"``."""
        if self.kind == "unsupported":
            return f"unsupported {self.type_name}"
        return FLOAT_REASONS[self.kind]


@dataclass(frozen=True)
class Coverage:
    """What a plan covers of a model's weight modules (see the module docstring).

    ``covered_fraction``: covered weight parameters / all weight parameters. ``flops`` (example input given):
    the model's FLOPs for one sample as ``torch.utils.flop_counter`` counts them (convolutions and matmuls,
    activation-by-activation matmuls included), ``covered_flops_fraction`` the share of those run by covered
    layers. ``float_layers``: the float weight modules, largest share first."""

    weight_layers: int
    covered_layers: int
    weight_params: int
    covered_params: int
    covered_fraction: float
    float_layers: tuple[FloatLayer, ...]
    flops: int | None = None
    covered_flops_fraction: float | None = None

    @property
    def unsupported(self) -> tuple[FloatLayer, ...]:
        return tuple(f for f in self.float_layers if f.kind == "unsupported")

    @property
    def complete(self) -> bool:
        """True when every weight module is covered."""
        return not self.float_layers

    def describe(self, *, limit: int = 4) -> str:
        """``covers 49 of 50 weight layers, 99.1 % of weight parameters; float: head.custom (0.9 %, unsupported
        CustomLayer)`` (the ``limit`` largest float modules named, the rest counted)."""
        text = (
            f"covers {self.covered_layers} of {self.weight_layers} weight layers, "
            f"{format_share(self.covered_fraction)} of weight parameters"
        )
        if self.covered_flops_fraction is not None:
            text += f" and {format_share(self.covered_flops_fraction)} of FLOPs"
        return text + float_listing(self.float_layers, limit=limit)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["float_layers"] = [asdict(f) for f in self.float_layers]
        d["text"] = self.describe()
        return d


def format_share(fraction: float) -> str:
    """A fraction as a percentage that never rounds a partial share to 0 or 100 (``<0.1 %``, ``>99.9 %``)."""
    pct = 100.0 * fraction
    if 0.0 < pct < 0.05:
        return "<0.1 %"
    if 99.95 <= pct < 100.0:
        return ">99.9 %"
    return f"{pct:.1f} %"


def float_listing(layers: tuple[FloatLayer, ...], *, limit: int = 4) -> str:
    """``"; float: a (0.9 %, unsupported X), b (...) and 3 more (1.2 %)"`` ('' when nothing stays float)."""
    if not layers:
        return ""
    named = [
        f"{f.name or '<model>'} ({format_share(f.param_share)}, {f.short_reason})" for f in layers[:limit]
    ]
    rest = layers[limit:]
    if rest:
        named.append(f"{len(rest)} more ({format_share(sum(f.param_share for f in rest))})")
    return "; float: " + ", ".join(named)


def _own_weights(module: nn.Module) -> list[nn.Parameter]:
    own = [p for p in module.parameters(recurse=False) if p.dim() >= 2]
    if not own and is_quantizable(module) and isinstance(getattr(module, "weight", None), torch.Tensor):
        own = [module.weight]
    return own


def weight_modules(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Module path -> its own >= 2-D parameters, for every weight module of ``model`` (the root is ``""``), in
    definition order."""
    found: dict[str, list[nn.Parameter]] = {}
    for name, module in model.named_modules():
        own = _own_weights(module)
        if own or (name and is_quantizable(module)):
            found[name] = own
    return found


def _float_kind(name: str, module: nn.Module, plan: _Plan) -> tuple[str, str] | None:
    """(kind, reason) of a weight module left float by ``plan``, None when the plan covers it."""
    if name and quantizable_type(module) is not None and not getattr(module, "is_quant_module", False):
        spec = plan.get(name)
        if spec is None:
            return "not_in_plan", "a quantizable layer the plan does not name"
        if spec.is_identity:
            return "identity", "the plan keeps it at 32/32"
        return None
    if getattr(module, "is_quant_module", False):
        return None  # already a fake-quant twin
    if not name:
        why = "the model itself owns these parameters (plans name submodules)"
    elif isinstance(module, QUANTIZABLE_TYPES):
        why = unsupported_reason(module)
    else:
        own = ", ".join(
            f"{n} {list(p.shape)}" for n, p in module.named_parameters(recurse=False) if p.dim() >= 2
        )
        why = f"{type(module).__name__} owns {own} and computes with it in its own forward"
    return "unsupported", why


def plan_coverage(model: nn.Module, plan: _Plan, example_input: Any = None) -> Coverage:
    """The :class:`Coverage` of ``plan`` (a QuantPlan or any object with ``get(name)``) on ``model``; with
    ``example_input`` (one batch; its first sample is run once) the FLOP shares too. The model is not
    modified."""
    modules = dict(model.named_modules())
    weights = weight_modules(model)
    kinds = {n: _float_kind(n, modules[n], plan) for n in weights}
    covered_ids = {id(p) for n, ps in weights.items() if kinds[n] is None for p in ps}
    sizes: dict[int, int] = {id(p): p.numel() for ps in weights.values() for p in ps}
    total = sum(sizes.values())
    covered = sum(sizes[i] for i in covered_ids)
    flops = _module_flops(model, example_input) if example_input is not None else None
    total_flops = flops.get("", 0) if flops is not None else None
    exclusive = _exclusive_flops(list(weights), flops) if flops is not None else {}
    floats = []
    seen: set[int] = set(covered_ids)
    for name, ps in weights.items():
        if kinds[name] is None:
            continue
        own = sum(sizes[id(p)] for p in ps if id(p) not in seen)
        seen |= {id(p) for p in ps}
        share = (
            (exclusive.get(name, 0) / total_flops) if total_flops else (0.0 if flops is not None else None)
        )
        kind, reason = kinds[name]  # type: ignore[misc]
        frac = own / total if total else 0.0
        floats.append(FloatLayer(name, type(modules[name]).__name__, kind, reason, own, frac, share))
    floats.sort(key=lambda f: (-f.weight_params, f.name))
    covered_flops = None
    if total_flops:
        covered_flops = sum(exclusive.get(n, 0) for n in weights if kinds[n] is None) / total_flops
    return Coverage(
        weight_layers=len(weights),
        covered_layers=sum(1 for k in kinds.values() if k is None),
        weight_params=total,
        covered_params=covered,
        covered_fraction=covered / total if total else 0.0,
        float_layers=tuple(floats),
        flops=total_flops,
        covered_flops_fraction=covered_flops,
    )


@torch.no_grad()
def _module_flops(model: nn.Module, example_input: Any) -> dict[str, int]:
    """Module path -> FLOPs of one sample, the module's children included (``""``: the whole model)."""
    from torch.utils.flop_counter import FlopCounterMode

    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    x = take_inputs(example_input, 1)
    x = x if first is None else move_inputs(x, first.device)
    modes = {m: m.training for m in model.modules()}
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with counter:
            call_model(model, x)
    finally:
        for m, mode in modes.items():
            m.training = mode
    root = type(model).__name__
    out: dict[str, int] = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = "" if key == root else key.removeprefix(root + ".")
        out[name] = int(sum(per_op.values()))
    out[""] = int(counter.get_total_flops())
    return out


def _exclusive_flops(names: list[str], flops: dict[str, int]) -> dict[str, int]:
    """FLOPs of each weight module without those of the weight modules nested in it."""
    out = {n: flops.get(n, 0) for n in names}
    for name in names:
        parent = name
        while parent:  # the nearest enclosing weight module (the root ``""`` last)
            parent = parent.rpartition(".")[0]
            if parent in out:
                out[parent] -= flops.get(name, 0)
                break
    return out


def warn_coverage(model: nn.Module, plan: _SizedPlan, *, stacklevel: int = 2) -> Coverage:
    """Warn (:class:`CoverageWarning`) when weight modules stay float because they are unsupported or missing
    from ``plan`` (layers the plan keeps at 32/32 are not warned about, nor is an empty plan: the float model on
    purpose); returns the coverage."""
    cov = plan_coverage(model, plan)
    listed = tuple(f for f in cov.float_layers if f.kind != "identity")
    if listed and len(plan):  # an empty plan is the float model on purpose
        share = sum(f.weight_params for f in listed) / cov.weight_params
        unsupported = [f for f in listed if f.kind == "unsupported"]
        details = "".join(f"\n  {f.name or '<model>'}: {f.reason}" for f in unsupported[:8])
        warnings.warn(
            f"{len(listed)} weight module(s) stay float32, {format_share(share)} of weight parameters; the plan "
            f"{cov.describe(limit=8)}{details}",
            CoverageWarning,
            stacklevel=stacklevel,
        )
    return cov
