"""Layer adapters: Conv / Linear subclasses whose own forward adds a pre-op before the base computation.

A swap replaces a layer by a fake-quant twin of its base type, which would drop an own ``forward``. A *layer
adapter* recognises such a subclass and splits it into ``(pre_op, base)``: a small pre-op module (or None) and an
exact base layer (``nn.Conv2d``, ``nn.Linear`` ...) carrying the same parameters, such that
``base(pre_op(x)) == module(x)``. The twin then keeps the pre-op in front of the quantized layer, and the layer
keeps its module path (``_blocks.0._depthwise_conv``).

An adapter matches by structure (its ``matches`` predicate: base type, children, attributes), and every match is
checked by numbers before it is trusted: a seeded copy of the module with random weights must give the same
output as its split on two probe inputs (both parities of the spatial size). A module whose split does not
reproduce it stays unsupported, with the reason in :func:`adapter_refusal`. Verdicts are cached per class,
geometry (kernel, stride, padding, dilation, grouped or not) and children, so matching costs one probe per kind
of layer, not per layer.

Built-ins (TF "SAME" padding, as converted TensorFlow models and timm use it):

* ``static_same_padding``: a ``Conv2d`` subclass with a ``static_padding`` child (a ``ZeroPad2d``, or an
  identity when no pad is needed) applied before ``F.conv2d`` (``efficientnet_lite_pytorch`` /
  ``efficientnet_pytorch``'s ``Conv2dStaticSamePadding``, timm's ``Conv2dSameExport``). Symmetric pads fold into
  the base conv's ``padding`` (no pre-op); asymmetric ones (stride-2 layers) stay as a ``ZeroPad2d`` pre-op.
* ``dynamic_same_padding``: a ``Conv2d`` subclass without children whose forward pads by the SAME rule computed
  from the input size at run time (``Conv2dDynamicSamePadding``, timm's ``Conv2dSame``): pre-op
  :class:`SamePad2d`.

Register your own with :func:`register_adapter` (one registry for every kind of layer adapter).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "ADAPTABLE_BASES",
    "ADAPTERS",
    "LayerAdapter",
    "SamePad2d",
    "adapter_for",
    "adapter_refusal",
    "register_adapter",
    "same_pad_amounts",
    "split_layer",
    "unregister_adapter",
]

ADAPTABLE_BASES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
"""Base types an adapter may split a layer into (each has a fake-quant twin)."""

Split = tuple[nn.Module | None, nn.Module]


@dataclass(frozen=True)
class LayerAdapter:
    """How to quantize one kind of layer subclass: ``matches(module)`` (a structural test, for instances of
    ``base`` with an own forward) and ``split(module) -> (pre_op or None, exact base layer)`` sharing the
    module's parameters."""

    name: str
    base: type[nn.Module]
    matches: Callable[[nn.Module], bool]
    split: Callable[[nn.Module], Split]
    description: str = ""


ADAPTERS: dict[str, LayerAdapter] = {}
"""Registered adapters by name, tried in registration order (see :func:`register_adapter`)."""


def register_adapter(
    name: str,
    *,
    base: type[nn.Module],
    matches: Callable[[nn.Module], bool],
    split: Callable[[nn.Module], Split],
    description: str = "",
    replace: bool = False,
) -> LayerAdapter:
    """Register a layer adapter (see the module docstring) and return it.

    ``base``: one of :data:`ADAPTABLE_BASES`; the adapter is only tried on instances of ``base`` whose class
    overrides ``forward``. ``matches(module) -> bool``: a cheap structural test. ``split(module) -> (pre_op,
    layer)``: ``layer`` an exact ``base`` (not a subclass) with the module's weight and bias, ``pre_op`` a module
    applied to the layer's input first, or None. Every match is verified numerically before it is used. A
    name already registered raises ValueError unless ``replace``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"adapter name must be a non-empty string, got {name!r}")
    if name in ADAPTERS and not replace:
        raise ValueError(
            f"adapter {name!r} is already registered (pass replace=True); registered: {list(ADAPTERS)}"
        )
    if base not in ADAPTABLE_BASES:
        valid = [t.__name__ for t in ADAPTABLE_BASES]
        raise ValueError(f"adapter {name!r}: base must be one of {valid}, got {base!r}")
    if not callable(matches) or not callable(split):
        raise TypeError(f"adapter {name!r}: matches and split must be callables")
    adapter = LayerAdapter(name, base, matches, split, description)
    ADAPTERS[name] = adapter
    _CACHE.clear()
    return adapter


def unregister_adapter(name: str) -> LayerAdapter:
    """Remove a registered adapter (KeyError naming the registered ones when there is none of that name)."""
    if name not in ADAPTERS:
        raise KeyError(f"no adapter {name!r}; registered: {list(ADAPTERS)}")
    _CACHE.clear()
    return ADAPTERS.pop(name)


# -------------------------------------------------------------------------------------- lookup and checking

_CACHE: dict[tuple, tuple[str | None, str | None]] = {}  # structural key -> (adapter name, refusal)
_CACHE_LIMIT = 4096


def _own_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    cls = type(module)
    if cls.forward is not base.forward:
        return True
    return hasattr(base, "_conv_forward") and cls._conv_forward is not base._conv_forward


_KEY_ATTRS = ("kernel_size", "stride", "padding", "dilation", "padding_mode")


def _key(module: nn.Module) -> tuple:
    """What an adapter's verdict may depend on: the class, its geometry and its children (not the channel
    counts, the bias or the weights: one check per kind of layer, not per layer)."""
    children = tuple((n, type(c), repr(c)) for n, c in module.named_children())
    geometry = tuple(repr(getattr(module, a, None)) for a in _KEY_ATTRS)
    grouped = getattr(module, "groups", 1) > 1
    return (type(module), geometry, grouped, children, str(module.weight.dtype))


def _lookup(module: nn.Module) -> tuple[LayerAdapter | None, str | None]:
    candidates = [a for a in ADAPTERS.values() if isinstance(module, a.base) and type(module) is not a.base]
    candidates = [a for a in candidates if _own_forward(module, a.base)]
    if not candidates:
        return None, None
    key = _key(module)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[key] = _find(module, candidates)
    name, refusal = _CACHE[key]
    return (ADAPTERS.get(name) if name is not None else None), refusal


def _find(module: nn.Module, candidates: list[LayerAdapter]) -> tuple[str | None, str | None]:
    refusals = []
    for adapter in candidates:
        try:
            if not adapter.matches(module):
                continue
        except Exception as e:  # noqa: BLE001 - a predicate failing on a foreign module is no match
            refusals.append(f"adapter {adapter.name!r} failed on it ({type(e).__name__}: {e})")
            continue
        why = _verify(adapter, module)
        if why is None:
            return adapter.name, None
        refusals.append(f"adapter {adapter.name!r} tried: {why}")
    return None, "; ".join(refusals) or None


def _probe_inputs(layer: nn.Module, device: torch.device, dtype: torch.dtype) -> list[Tensor]:
    gen = torch.Generator().manual_seed(0)
    if isinstance(layer, nn.Linear):
        shapes = [(2, layer.in_features)]
    else:
        k = [d * (s - 1) + 1 for d, s in zip(layer.dilation, layer.kernel_size, strict=True)]
        first = [e + st + 2 for e, st in zip(k, layer.stride, strict=True)]
        sizes = [[f + (i % 2) for i, f in enumerate(first)], [f + 1 - (i % 2) for i, f in enumerate(first)]]
        shapes = [(1, layer.in_channels, *s) for s in sizes]
    return [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]


@torch.no_grad()
def _verify(adapter: LayerAdapter, module: nn.Module) -> str | None:
    """None when the split of a random-weight copy of ``module`` reproduces it; else what went wrong."""
    if module.weight.is_meta:
        return None  # nothing to run: trusted on structure
    probe = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(0)
    for p in probe.parameters(recurse=False):
        p.copy_(torch.randn(p.shape, generator=gen).to(p.dtype) * 0.5)
    try:
        pre_op, layer = adapter.split(probe)
    except Exception as e:  # noqa: BLE001
        return f"its split failed ({type(e).__name__}: {e})"
    if type(layer) is not adapter.base:
        return f"its split gave a {type(layer).__name__}, not an exact {adapter.base.__name__}"
    if layer.weight is not probe.weight:
        return "its split does not carry the layer's own weight"
    for x in _probe_inputs(probe, probe.weight.device, probe.weight.dtype):
        try:
            want = probe(x)
            got = layer(pre_op(x) if pre_op is not None else x)
        except Exception as e:  # noqa: BLE001
            return f"its split failed on a probe input ({type(e).__name__}: {e})"
        if want.shape != got.shape:
            return f"its split gives shape {tuple(got.shape)} where the layer gives {tuple(want.shape)}"
        tol = 1e-4 * max(1.0, float(want.abs().max()))
        if not torch.allclose(want, got, rtol=1e-4, atol=tol):
            return f"its split differs from the layer's forward by {float((want - got).abs().max()):.3g}"
    return None


def adapter_for(module: nn.Module) -> LayerAdapter | None:
    """The adapter that splits ``module`` (verified), or None (plain layers, unknown subclasses)."""
    return _lookup(module)[0]


def adapter_refusal(module: nn.Module) -> str | None:
    """Why no adapter takes ``module`` although one matched its structure (None when none matched)."""
    adapter, refusal = _lookup(module)
    return None if adapter is not None else refusal


def split_layer(module: nn.Module) -> Split:
    """``(pre_op or None, exact base layer)`` of an adapted layer (sharing its parameters); ValueError for a
    module no adapter takes."""
    adapter, refusal = _lookup(module)
    if adapter is None:
        raise ValueError(
            f"no layer adapter takes a {type(module).__name__}"
            + (f": {refusal}" if refusal else f"; registered adapters: {list(ADAPTERS)}")
        )
    return adapter.split(module)


# ---------------------------------------------------------------------------------------- SAME padding


def same_pad_amounts(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total TF "SAME" padding of one spatial dim: output ``ceil(size / stride)``."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def same_pad2d(
    x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> Tensor:
    """``x`` zero-padded by TF "SAME" for its size: the smaller half before (top / left), the rest after."""
    ih, iw = x.shape[-2:]
    pad_h = same_pad_amounts(int(ih), kernel[0], stride[0], dilation[0])
    pad_w = same_pad_amounts(int(iw), kernel[1], stride[1], dilation[1])
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
    return x


torch.fx.wrap("same_pad2d")  # traced as one call (its pads depend on the input size)


class SamePad2d(nn.Module):
    """TF "SAME" zero padding computed from the input size at run time (the pre-op of a dynamic SAME conv)."""

    def __init__(self, kernel_size, stride, dilation) -> None:
        super().__init__()
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.stride = tuple(int(s) for s in stride)
        self.dilation = tuple(int(d) for d in dilation)

    def forward(self, x: Tensor) -> Tensor:
        return same_pad2d(x, self.kernel_size, self.stride, self.dilation)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}"


def _pair(value) -> tuple[int, int]:
    """``(a, b)`` of an int or a 1- or 2-item sequence (a stride, a padding, a dilation)."""
    items = list(value) if isinstance(value, (tuple, list)) else [value]
    if len(items) not in (1, 2):
        raise ValueError(f"expected an int or a pair, got {value!r}")
    return int(items[0]), int(items[-1])


def base_conv2d(module: nn.Conv2d, padding) -> nn.Conv2d:
    """An exact ``nn.Conv2d`` with ``module``'s configuration, ``padding`` and its weight and bias (shared)."""
    layer = nn.Conv2d(
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        stride=_pair(module.stride),
        padding=padding,
        dilation=_pair(module.dilation),
        groups=module.groups,
        bias=module.bias is not None,
        device="meta",
    )
    layer.weight = module.weight
    if module.bias is not None:
        layer.bias = module.bias
    return layer.train(module.training)


def _is_identity(module: nn.Module) -> bool:
    return isinstance(module, nn.Identity) or (
        type(module).__name__ == "Identity"
        and not list(module.parameters())
        and not list(module.buffers())
        and not list(module.children())
    )


def _zero_pads(module: nn.Module) -> tuple[int, int, int, int] | None:
    if isinstance(module, nn.ZeroPad2d) or (
        isinstance(module, nn.ConstantPad2d) and float(module.value) == 0.0
    ):
        pads = tuple(int(p) for p in module.padding)
        return pads if len(pads) == 4 else None  # type: ignore[return-value]
    return None


def _static_matches(module: nn.Module) -> bool:
    children = dict(module.named_children())
    if set(children) != {"static_padding"} or isinstance(module.padding, str):
        return False
    pad = children["static_padding"]
    return _is_identity(pad) or _zero_pads(pad) is not None


def _static_split(module: nn.Module) -> Split:
    pad = module.static_padding
    ph, pw = _pair(module.padding)
    pads = (0, 0, 0, 0) if _is_identity(pad) else _zero_pads(pad)
    assert pads is not None
    left, right, top, bottom = pads
    if left == right >= 0 and top == bottom >= 0:  # symmetric: folded into the conv's own padding
        return None, base_conv2d(module, (ph + top, pw + left))
    return nn.ZeroPad2d(pads), base_conv2d(module, (ph, pw))


def _dynamic_matches(module: nn.Module) -> bool:
    return not list(module.children()) and not isinstance(module.padding, str)


def _dynamic_split(module: nn.Module) -> Split:
    pre = SamePad2d(module.kernel_size, _pair(module.stride), _pair(module.dilation))
    return pre, base_conv2d(module, _pair(module.padding))


register_adapter(
    "static_same_padding",
    base=nn.Conv2d,
    matches=_static_matches,
    split=_static_split,
    description="Conv2d subclass padding its input by a fixed `static_padding` ZeroPad2d (TF SAME) first",
)
register_adapter(
    "dynamic_same_padding",
    base=nn.Conv2d,
    matches=_dynamic_matches,
    split=_dynamic_split,
    description="Conv2d subclass padding its input by TF SAME computed from the input size at run time",
)
