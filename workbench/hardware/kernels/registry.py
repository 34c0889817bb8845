"""The one registry of deployment kernels: per layer kind, a menu of handlers, each saying which specs it runs.

A handler is registered with a name, the layer kind it serves (``linear``, ``conv``, ``embedding``), the precision
it computes in, whether it is weight-only and its place in the kind's menu (``order``: lower is preferred). It
answers two questions: :meth:`KernelHandler.problem` (why it cannot run a layer under a spec *as the plan's
simulation computes it*, or None when it can) and :meth:`KernelHandler.build` (the deployed module, from the
layer's fake-quant twin). Handlers whose conversion is a whole-graph pass (static int8 through torch.ao FX) have no
``build``: :func:`workbench.hardware.deploy.deploy` runs them.

:func:`choose_kernel` walks a kind's menu in order and takes the first handler that runs the spec; when none does,
the layer falls back to ``fallback`` (its simulation twin on float kernels) with a reason that names every handler
and why it declined, reported in one :class:`KernelFallbackWarning`, or raised as :class:`KernelError` under
``strict``. Never a silent fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from torch import nn

from workbench.hardware.profile import ProfileError
from workbench.quant.spec import QuantSpec

LAYER_KINDS: tuple[str, ...] = ("linear", "conv", "embedding")
FALLBACK = "fallback"
"""The name of the float fallback every kind has: the layer's simulation twin with its fake-quantized weights
baked into a float32 layer (the same numerics as simulated, none of the speed)."""


class KernelFallbackWarning(UserWarning):
    """Layers of a plan that no kernel of the menu runs as simulated; the message names each and why."""


class KernelError(ProfileError):
    """A plan needs a kernel the menu lacks and ``strict`` forbids the fallback; the message names the layers."""


Problem = Callable[[nn.Module, "QuantSpec | None"], "str | None"]
Build = Callable[[nn.Module, "QuantSpec | None"], nn.Module]


@dataclass(frozen=True)
class KernelHandler:
    """A registered deployment kernel. ``problem(layer, spec)``: why it cannot run ``layer`` (the float layer or
    its fake-quant twin) under ``spec`` exactly as simulated (None: it can); ``build(twin, spec)``: the deployed
    module from the twin (None: a whole-graph handler that :func:`~workbench.hardware.deploy.deploy` runs)."""

    name: str
    kind: str
    precision: str
    weight_only: bool
    order: int
    problem: Problem
    build: Build | None
    summary: str

    @property
    def key(self) -> str:
        return f"{self.kind}.{self.name}"


KERNEL_MENU: dict[str, KernelHandler] = {}
"""``"kind.name"`` -> handler, filled by :func:`register_kernel` when :mod:`workbench.hardware.kernels` loads."""


def register_kernel(
    name: str,
    *,
    kind: str,
    precision: str,
    weight_only: bool,
    order: int,
    summary: str,
    build: Build | None = None,
) -> Callable[[Problem], Problem]:
    """Decorator registering ``problem(layer, spec) -> str | None`` as the kernel ``name`` of ``kind``."""
    if kind not in LAYER_KINDS:
        raise ValueError(f"kind {kind!r} unknown; choose one of {LAYER_KINDS}")

    def deco(problem: Problem) -> Problem:
        key = f"{kind}.{name}"
        if key in KERNEL_MENU:
            raise ValueError(f"kernel {key!r} is already registered")
        KERNEL_MENU[key] = KernelHandler(name, kind, precision, weight_only, order, problem, build, summary)
        return problem

    return deco


def layer_kind(layer: nn.Module) -> str:
    """The menu a layer (float, or its fake-quant twin) orders from: ``linear``, ``conv`` or ``embedding``."""
    base = getattr(layer, "float_type", None) or type(layer)
    if issubclass(base, nn.Embedding):
        return "embedding"
    if issubclass(base, (nn.Conv1d, nn.Conv2d)):
        return "conv"
    if issubclass(base, nn.Linear):
        return "linear"
    raise ValueError(f"no kernel menu for a {type(layer).__name__}; menus exist for {LAYER_KINDS}")


def menu(kind: str) -> list[KernelHandler]:
    """The handlers of ``kind`` in the order :func:`choose_kernel` tries them."""
    if kind not in LAYER_KINDS:
        raise ValueError(f"kind {kind!r} unknown; choose one of {LAYER_KINDS}")
    return sorted((h for h in KERNEL_MENU.values() if h.kind == kind), key=lambda h: (h.order, h.name))


def menu_table() -> pd.DataFrame:
    """One row per registered kernel: kind, name, precision, weight-only, preference order, summary."""
    rows = [
        {
            "kind": h.kind,
            "kernel": h.name,
            "precision": h.precision,
            "weight_only": h.weight_only,
            "order": h.order,
            "summary": h.summary,
        }
        for kind in LAYER_KINDS
        for h in menu(kind)
    ]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class KernelChoice:
    """The kernel one layer gets: ``handler`` (None: the float fallback) and, for a fallback, why."""

    layer: str
    kind: str
    handler: KernelHandler | None
    reason: str = ""

    @property
    def name(self) -> str:
        return self.handler.name if self.handler is not None else FALLBACK


def choose_kernel(
    name: str, layer: nn.Module, spec: QuantSpec | None, *, allowed: tuple[str, ...] | None = None
) -> KernelChoice:
    """The first handler of ``layer``'s menu that runs ``spec`` as simulated (``allowed``: only these kernel
    names are tried); else the fallback, with a reason naming each handler tried and why it declined."""
    kind = layer_kind(layer)
    family = spec_family(spec, kind)
    declined = []
    for handler in menu(kind):
        if allowed is not None and handler.name not in allowed:
            continue
        problem = handler.problem(layer, spec)
        if problem is None:
            return KernelChoice(name, kind, handler)
        if handler_family(handler) == family:
            declined.append(f"{handler.name}: {problem}")
    reason = "; ".join(declined) if declined else f"no {family} {kind} kernel on the menu"
    return KernelChoice(name, kind, None, reason)


def spec_family(spec: QuantSpec | None, kind: str) -> str:
    """``float`` (no integer weights), ``weight-only`` (integer weights, float activations; every integer
    Embedding table) or ``integer`` (integer weights and activations): the handlers a fallback reason names."""
    if spec is None or spec.w_bits > 8 and (spec.channel_bits is None or max(spec.channel_bits) > 8):
        return "float"
    return "weight-only" if kind == "embedding" or spec.a_bits >= 16 else "integer"


def handler_family(handler: KernelHandler) -> str:
    if handler.weight_only:
        return "weight-only"
    return "float" if handler.precision in ("fp32", "bf16") else "integer"


def report_fallbacks(choices: list[KernelChoice], *, strict: bool) -> list[str]:
    """A note per fallback choice; one :class:`KernelFallbackWarning` naming them, or :class:`KernelError`
    under ``strict``."""
    import warnings

    notes = [
        f"{c.layer}: no {c.kind} kernel runs its spec as simulated, float32 fallback ({c.reason})"
        for c in choices
        if c.handler is None
    ]
    if notes and strict:
        raise KernelError("; ".join(notes) + " (strict: no fallback allowed)")
    if notes:
        warnings.warn("; ".join(notes), KernelFallbackWarning, stacklevel=3)
    return notes
