"""Kernel numerics the simulation and the deployment must share, and kernel quirks worked around.

- :func:`mirror_output_grids`: an int8 layer whose kernel requantizes its output to 8 bits (every one but the
  float-output Linear / 1x1 kernels, :class:`~workbench.hardware.deploy.fx_graph.Int8FloatOutput`) hands that grid
  to what follows (a residual add, pooling, the logits); the deployment's private simulation copy rounds the
  layer's output to the same grid (a forward hook), so that the simulation reported beside the deployment
  computes what the kernels compute.
- :func:`bias_safe_scales`: engines that add the bias as an int32 code (qnnpack) overflow on a channel whose
  weights are ~0 next to its bias (BatchNorm-folded dead channels): its weight scale is raised so the bias fits.
- :func:`kernel_engines`: which engine packs each layer (a qnnpack deployment runs its depthwise layers on onednn's
  faster kernel where that one is exact on this CPU, measured by :func:`onednn_depthwise_exact`).
- :func:`quantized_pads`: the SAME-padding pre-op of an int8 layer pads the codes (:func:`pad_codes`) instead of
  a float round trip.
- :func:`clamp_codes` / :func:`layout_safe_clamps`: qnnpack clamps (ReLU6, hardtanh, clamp) a channels-last
  quantized tensor as if it were contiguous, scrambling it; they are routed through its contiguous NHWC view.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from workbench.quant.swap import quant_modules

BIAS_CODE_MAX = 2.0**30
"""Largest bias code ``|bias| / (input scale * weight scale)`` a packed layer may need: engines that add the
bias as an int32 (qnnpack) overflow past 2**31, as a channel with (near-)zero weights and a bias would."""


def bias_safe_scales(scale: torch.Tensor, bias: torch.Tensor | None, input_scale: float) -> torch.Tensor:
    """Per-channel weight ``scale`` raised where the bias would not fit an int32 code on the input grid of scale
    ``input_scale`` (:data:`BIAS_CODE_MAX`); only channels whose weights are ~0 next to their bias change (their
    codes round to 0 and the output is the bias, within ``fan_in * 255 / 2**31`` of it relative to the bias). A
    per-tensor ``scale`` (one element, shared by every channel) is raised to what the largest bias needs."""
    floor = torch.full_like(scale, torch.finfo(torch.float32).tiny)
    if bias is not None and input_scale > 0:
        need = bias.detach().double().abs().reshape(-1) / (input_scale * BIAS_CODE_MAX)
        if scale.numel() == 1:
            need = need.max().reshape(scale.shape)
        floor = torch.maximum(floor, need.to(scale.dtype))
    return torch.maximum(scale, floor)


def clamp_codes(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``torch.clamp(x, lo, hi)`` that keeps a channels-last quantized tensor right: the qnnpack engine clamps
    (and so ReLU6 / hardtanh) a channels-last quantized tensor as if it were contiguous, scrambling its layout;
    its NHWC permutation is contiguous, clamped there (an element-wise op) and permuted back."""
    if (
        x.is_quantized
        and x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.clamp(x.permute(0, 2, 3, 1), lo, hi).permute(0, 3, 1, 2)
    return torch.clamp(x, lo, hi)


def _clamp_bounds(node: torch.fx.Node, modules: dict[str, nn.Module]) -> tuple[float, float] | None:
    """``(lo, hi)`` of a ReLU6 / hardtanh / clamp node with both bounds (None for anything else)."""
    if node.op == "call_module":
        mod = modules.get(str(node.target))
        if isinstance(mod, nn.Hardtanh):  # nn.ReLU6 is a Hardtanh(0, 6)
            return float(mod.min_val), float(mod.max_val)
        return None
    name = getattr(node.target, "__name__", "") if node.op == "call_function" else ""
    if name in ("relu6",):
        return 0.0, 6.0
    if name in ("hardtanh", "hardtanh_"):
        args = list(node.args[1:3]) + [None, None]
        lo = node.kwargs.get("min_val", args[0] if args[0] is not None else -1.0)
        hi = node.kwargs.get("max_val", args[1] if args[1] is not None else 1.0)
        return float(lo), float(hi)
    return None


def layout_safe_clamps(converted: torch.fx.GraphModule) -> int:
    """Route every ReLU6 / hardtanh of ``converted`` through :func:`clamp_codes` (layout-safe on every engine);
    returns how many were rerouted."""
    modules = dict(converted.named_modules())
    done = 0
    for node in list(converted.graph.nodes):
        bounds = _clamp_bounds(node, modules)
        if bounds is None or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        with converted.graph.inserting_before(node):
            new = converted.graph.call_function(clamp_codes, (node.args[0], *bounds))
        node.replace_all_uses_with(new)
        converted.graph.erase_node(node)
        done += 1
    converted.graph.lint()
    converted.recompile()
    return done


def _output_grid(mod: nn.Module) -> tuple[float, int] | None:
    """``(scale, zero point)`` of the quint8 output of a torch.ao quantized layer (None: a float output)."""
    scale, zp = getattr(mod, "scale", None), getattr(mod, "zero_point", None)
    if scale is None or zp is None or isinstance(scale, torch.Tensor) and scale.numel() != 1:
        return None
    return float(scale), int(zp)


def _output_hook(scale: float, zero_point: int):
    def hook(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(out, scale, zero_point, 0, 255)

    return hook


def mirror_output_grids(
    simulated: nn.Module, converted: nn.Module, paths: dict[str, str]
) -> dict[str, tuple]:
    """Round each simulated layer's output to the quint8 grid its deployed kernel requantizes to (``paths``:
    plan layer -> kernel path in ``converted``), by a forward hook on the layer of ``simulated`` (a private
    copy). A grid pinned to the next layer's input grid changes nothing there (rounding twice to one grid is
    rounding once); a calibrated one (an output feeding a residual add, pooling, the logits) is what the
    kernels hand on. Returns the grids, by layer."""
    mods = dict(converted.named_modules())
    sims = quant_modules(simulated)
    grids = {}
    for name, path in paths.items():
        grid = _output_grid(mods[path]) if path in mods else None
        if grid is None:
            continue
        sims[name].register_forward_hook(_output_hook(*grid))
        grids[name] = grid
    return grids


INT32_BIAS_ENGINES: tuple[str, ...] = ("qnnpack",)
"""Engines whose kernels add the bias as an int32 code on the ``input scale * weight scale`` grid (the others add
it in float)."""


@torch.no_grad()
def mirror_int32_bias(
    simulated: nn.Module, layers: dict[str, str], converted: nn.Module, grids: dict, engines: dict[str, str]
) -> int:
    """Round each simulated layer's bias (of ``simulated``, a private copy) to the int32 grid its kernel adds it
    on (``input scale * weight scale`` per output channel, the scales it was packed with), as the engines of
    :data:`INT32_BIAS_ENGINES` do: a bias off a code by a fraction moves outputs near a rounding boundary by one
    code, which depthwise layers with large folded weights amplify downstream. Returns how many biases changed."""
    mods = dict(converted.named_modules())
    sims = quant_modules(simulated)
    changed = 0
    for name, path in layers.items():
        if engines.get(name) not in INT32_BIAS_ENGINES:
            continue
        sim, mod = sims[name], mods.get(path)
        bias = getattr(sim, "bias", None)
        if bias is None or mod is None or not callable(getattr(mod, "weight", None)):
            continue
        weight = mod.weight()
        w_scale = (
            weight.q_per_channel_scales() if weight.qscheme() == torch.per_channel_affine else
            torch.full((weight.shape[0],), weight.q_scale(), dtype=torch.float64)
        )  # fmt: skip
        step = (w_scale.float() * float(grids[name][0])).to(bias.dtype).reshape(bias.shape)
        bias.copy_(torch.round(bias / step) * step)
        changed += 1
    return changed


@functools.cache
def onednn_depthwise_exact() -> bool:
    """Whether this CPU's onednn int8 depthwise convolution is exact on full 8-bit inputs (measured once: codes 255
    against weights +-127, which 16-bit pair sums would saturate), so a qnnpack deployment may run its depthwise
    layers there (about twice as fast on x86). False where onednn is missing or not exact."""
    if "onednn" not in torch.backends.quantized.supported_engines:
        return False
    import torch.ao.nn.quantized as nnq

    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "onednn"
        gen = torch.Generator().manual_seed(0)
        codes = torch.randint(200, 256, (1, 16, 6, 6), generator=gen).float()
        codes[0, :, :3] = 255.0
        qx = torch.quantize_per_tensor((codes - 3) * 0.02, 0.02, 3, torch.quint8)
        sign = torch.where(torch.rand(16, 1, 3, 3, generator=gen) < 0.1, -1.0, 1.0)
        scales = torch.rand(16, generator=gen).double() * 0.01 + 0.01
        qw = torch.quantize_per_channel(sign * 127 * scales.float().view(-1, 1, 1, 1), scales,
                                        torch.zeros(16, dtype=torch.long), 0, torch.qint8)  # fmt: skip
        conv = nnq.Conv2d(16, 16, 3, 1, 1, groups=16)
        conv.set_weight_bias(qw, torch.zeros(16))
        ref = F.conv2d(qx.dequantize(), qw.dequantize(), None, 1, 1, 1, 16)
        conv.scale, conv.zero_point = float(ref.abs().max()) * 2 / 255, 128
        out = conv(qx.contiguous(memory_format=torch.channels_last)).dequantize()
        return bool((out - ref).abs().max() <= conv.scale)
    except RuntimeError:
        return False
    finally:
        torch.backends.quantized.engine = previous


def kernel_engines(converted: nn.Module, paths: dict[str, str], engine: str) -> dict[str, str]:
    """The engine each integer layer's weights are packed for: ``engine``, except a qnnpack deployment's depthwise
    convolutions, packed for onednn where its depthwise kernel is exact here (:func:`onednn_depthwise_exact`;
    packed weights carry their kernel, so engines mix in one model)."""
    mods = dict(converted.named_modules())
    out = {}
    for name, path in paths.items():
        mod = mods.get(path)
        depthwise = (
            mod is not None and getattr(mod, "groups", 1) > 1 and mod.groups == getattr(mod, "in_channels", 0)
        )
        out[name] = "onednn" if engine == "qnnpack" and depthwise and onednn_depthwise_exact() else engine
    return out


def pad_codes(
    x: torch.Tensor, padding: tuple[int, ...], scale: torch.Tensor, zero_point: torch.Tensor
) -> torch.Tensor:
    """A zero pad of quantized ``x`` onto the grid ``(scale, zero_point)``: on the codes themselves when ``x`` is on
    that grid already (up to the float32 rounding of its scale; exact on every engine: 0.0 is the code
    ``zero_point``), else dequantized, padded and quantized, as the graph did."""
    s, z = float(scale), int(zero_point)
    if abs(x.q_scale() - s) <= 1e-6 * s and x.q_zero_point() == z:  # one grid, up to float32 rounding
        return F.pad(x, list(padding))
    return torch.quantize_per_tensor(F.pad(x.dequantize(), list(padding)), s, z, torch.quint8)


def quantized_pads(converted: torch.fx.GraphModule) -> int:
    """Replace every ``dequantize -> ZeroPad2d -> quantize_per_tensor`` detour of ``converted`` (the SAME-padding
    pre-op in front of an int8 layer) by :func:`pad_codes` on the quantized tensor; returns how many."""
    modules = dict(converted.named_modules())
    done = 0
    for node in list(converted.graph.nodes):
        pad = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(pad, nn.ZeroPad2d) or len(node.users) != 1 or len(node.args) != 1:
            continue
        src, (quant,) = node.args[0], list(node.users)
        if not (isinstance(src, torch.fx.Node) and src.op == "call_method" and src.target == "dequantize"):
            continue
        if quant.op != "call_function" or quant.target is not torch.quantize_per_tensor:
            continue
        with converted.graph.inserting_before(quant):
            new = converted.graph.call_function(
                pad_codes, (src.args[0], tuple(pad.padding), *quant.args[1:3])
            )
        quant.replace_all_uses_with(new)
        for dead in (quant, node):
            converted.graph.erase_node(dead)
        if not src.users:
            converted.graph.erase_node(src)
        done += 1
    converted.graph.lint()
    converted.recompile()
    return done
