"""Kernel dispatch (seed 002): which precision each layer of a plan runs at on a profile, with fallbacks.

A layer's *requested* precision follows from its :class:`~workbench.quant.spec.QuantSpec`:

- float layers (no spec, or 32-bit weights and activations) -> ``fp32``; 16-bit weights -> ``bf16`` / ``fp16``;
- integer weights and activations -> the integer kernel of the smallest width that holds both (``w4a8`` ->
  ``int8``, ``w4a4`` -> ``int4``, ``w2a2`` -> ``int2``); a bit-serial target runs the exact ``w x a`` bits;
- integer weights with float activations (weight-only) -> a float kernel at the activation precision, with the
  weights read from memory at their bit width.

When the profile lacks the requested kernel for the layer's op type, the layer falls back to the cheapest kernel
the profile has that is at least as precise (``int4`` -> ``int8`` on a CPU), or, when none is, to the most precise
one. Fallbacks are reported in one :class:`DispatchWarning` naming the layers, or raise :class:`ProfileError`
with ``strict=True``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
from torch import nn

from workbench.hardware.profile import INT_PRECISION_BITS, PrecisionProfile, ProfileError
from workbench.quant.fusion import trace_layers
from workbench.quant.spec import QuantPlan, QuantSpec

# how precise each kernel precision is (for "at least as precise" fallbacks)
PRECISION_RANK: dict[str, float] = {
    "int2": 2,
    "int4": 4,
    "int8": 8,
    "fp8": 8.5,
    "bf16": 16,
    "fp16": 16,
    "tf32": 19,
    "fp32": 32,
}


class DispatchWarning(UserWarning):
    """A plan needs kernels the profile lacks; the named layers run at another precision."""


@dataclass(frozen=True)
class LayerDispatch:
    """The kernel one layer runs on a profile."""

    layer: str
    op: str
    requested: str
    precision: str
    w_bits: int
    a_bits: int
    weight_bits: float
    weight_only: bool
    fallback: bool

    @property
    def is_int(self) -> bool:
        return self.precision in INT_PRECISION_BITS


def op_type(module: nn.Module) -> str:
    """Profile op type of a layer: ``conv``, ``depthwise_conv`` or ``linear``."""
    if isinstance(module, nn.Conv2d) or getattr(module, "op_type", "") == "Conv2d":
        groups = getattr(module, "groups", 1)
        if groups > 1 and groups == module.in_channels:
            return "depthwise_conv"
        return "conv"
    return "linear"


def _int_kernel(bits: int) -> str:
    for name, width in sorted(INT_PRECISION_BITS.items(), key=lambda kv: kv[1]):
        if bits <= width:
            return name
    return "int8"


def requested_precision(
    spec: QuantSpec | None, profile: PrecisionProfile | None = None
) -> tuple[str, int, int, bool]:
    """(precision, compute w bits, compute a bits, weight_only) that ``spec`` asks for."""
    if spec is None:
        return "fp32", 32, 32, False
    w = max(spec.channel_bits) if spec.channel_bits is not None else spec.w_bits
    a = spec.a_bits
    half = "bf16" if spec.float16_format == "bfloat16" else "fp16"
    if w == 32:
        return "fp32", 32, 32, False  # float weights (activation-only quantization runs on a float kernel)
    if w == 16:
        return half, 16, 16, False
    if a >= 16:  # weight-only integer: float compute at the activation precision
        return ("fp32" if a == 32 else half), a, a, True
    return _int_kernel(max(w, a)), w, a, False


def _fallback(have: list[str], requested: str) -> str:
    need = PRECISION_RANK[requested]
    precise_enough = [p for p in have if PRECISION_RANK[p] >= need]
    if precise_enough:
        return min(precise_enough, key=lambda p: (PRECISION_RANK[p], p))
    return max(have, key=lambda p: (PRECISION_RANK[p], p))


def _resolve_op(profile: PrecisionProfile, op: str) -> str:
    if op == "depthwise_conv" and not profile.ops.get("depthwise_conv"):
        return "conv"
    return op


def dispatch_plan(
    model: nn.Module,
    plan: QuantPlan,
    profile: PrecisionProfile,
    *,
    layers: Iterable[str] | None = None,
    strict: bool = False,
    executable: Iterable[str] | None = None,
) -> dict[str, LayerDispatch]:
    """The kernel each quantizable layer runs on ``profile`` under ``plan``.

    ``executable`` further restricts the precisions (deployment on this CPU can run only some of a profile's).
    Raises :class:`ProfileError` on a missing kernel when ``strict``; otherwise warns once, naming the layers.
    """
    from workbench.quant.introspect import quantizable_layers

    modules = dict(model.named_modules())
    names = list(layers) if layers is not None else quantizable_layers(model)
    allowed = set(executable) if executable is not None else None
    out: dict[str, LayerDispatch] = {}
    fallbacks: dict[tuple[str, str, str], list[str]] = {}
    for name in names:
        spec = plan.get(name)
        op = _resolve_op(profile, op_type(modules[name]))
        req, w, a, weight_only = requested_precision(spec, profile)
        have = [p for p in profile.precisions(op) if allowed is None or p in allowed]
        prec = req
        if req not in have:
            if not have:
                raise ProfileError(
                    f"profile {profile.name!r} has no executable kernel for {op!r} (layer {name!r})"
                )
            prec = _fallback(have, req)
            fallbacks.setdefault((op, req, prec), []).append(name)
        if prec in INT_PRECISION_BITS:
            if req not in INT_PRECISION_BITS:  # a float layer on an integer-only target
                w = a = INT_PRECISION_BITS[prec]
            storage = spec.mean_weight_bits() if spec is not None and spec.w_bits <= 8 else float(w)
        else:
            a = {"bf16": 16, "fp16": 16, "fp8": 8}.get(prec, 32)
            storage = spec.mean_weight_bits() if weight_only and spec is not None else float(min(a, 32))
            w = a
        out[name] = LayerDispatch(
            layer=name,
            op=op,
            requested=req,
            precision=prec,
            w_bits=int(w),
            a_bits=int(a),
            weight_bits=float(storage),
            weight_only=weight_only,
            fallback=prec != req,
        )
    if fallbacks:
        lines = []
        for (op, req, prec), layer_names in fallbacks.items():
            less = PRECISION_RANK[prec] < PRECISION_RANK[req]
            lines.append(
                f"no {req!r} kernel for {op!r} on profile {profile.name!r}: {len(layer_names)} layer(s) run at "
                f"{prec!r}{' (LESS precise than the plan asks)' if less else ''}: {', '.join(layer_names)}"
            )
        message = "; ".join(lines)
        if strict:
            raise ProfileError(message + " (strict: no fallback allowed)")
        warnings.warn(message, DispatchWarning, stacklevel=2)
    return out


def dispatch_table(dispatch: dict[str, LayerDispatch]) -> pd.DataFrame:
    """One row per layer: op, requested and chosen precision, compute bits, fallback flag."""
    return pd.DataFrame(
        [
            {
                "layer": d.layer,
                "op": d.op,
                "requested": d.requested,
                "precision": d.precision,
                "w_bits": d.w_bits,
                "a_bits": d.a_bits,
                "weight_bits": d.weight_bits,
                "weight_only": d.weight_only,
                "fallback": d.fallback,
            }
            for d in dispatch.values()
        ]
    )


def int_containers(model: nn.Module, dispatch: dict[str, LayerDispatch]) -> set[str]:
    """Module paths whose every dispatched layer below runs an integer kernel ('' is the model itself).

    Non-layer ops (adds, ReLUs, pooling) owned by such a container run in the integer domain too; elsewhere they
    run in float. The cost estimator uses this rule; deployment runs residual adds in float, as simulated.
    """
    out: set[str] = set()
    for path, _ in model.named_modules():
        below = [d for n, d in dispatch.items() if path == "" or n == path or n.startswith(path + ".")]
        if below and all(d.is_int for d in below):
            out.add(path)
    return out


PASSTHROUGH_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
    nn.BatchNorm2d,
)


def int_followers(model: nn.Module, dispatch: dict[str, LayerDispatch]) -> set[str]:
    """Module paths of pass-through modules (ReLU, pooling, flatten, BatchNorm) fed, directly or through other
    pass-through modules, by an integer layer: they stay in the integer domain whatever their owner runs, so no
    dequantize / quantize pair sits between an integer layer and its pooling."""
    try:
        gm = trace_layers(model)
    except Exception:  # noqa: BLE001 - untraceable models: no followers
        return set()
    modules = dict(model.named_modules())
    int_nodes: set[str] = set()
    out: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        target = str(node.target)
        if target in dispatch:
            if dispatch[target].is_int:
                int_nodes.add(node.name)
            continue
        srcs = node.all_input_nodes
        if (
            isinstance(modules.get(target), PASSTHROUGH_TYPES)
            and len(srcs) == 1
            and srcs[0].name in int_nodes
        ):
            int_nodes.add(node.name)
            out.add(target)
    return out


def owner_is_int(owner: str, int_paths: set[str]) -> bool:
    """Whether a non-layer op owned by module path ``owner`` runs in the integer domain."""
    return owner in int_paths
