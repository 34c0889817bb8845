"""The fake-quant layers the after-calibration PTQ steps tune, and their float / quantized forward passes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from workbench.quant.ptq.data import layer_by_layer, layer_inputs
from workbench.quant.ptq.registry import PtqContext, skip


def tunable_layers(model: nn.Module, step: str) -> dict[str, nn.Module]:
    """The fake-quant Conv / Linear layers of ``model`` by module path.

    Layers a step does not handle (Embedding, pruned or low-rank layers) are named in a skip warning."""
    out: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if not getattr(m, "is_quant_module", False):
            continue
        if getattr(m, "weight_only", False):
            skip(step, f"layer {name!r}", f"a {m.op_type} (weight table lookup) is not handled")
        elif m.spec.sparsity > 0 or m.spec.rank_ratio is not None:
            skip(step, f"layer {name!r}", "pruned or low-rank layers are not handled")
        else:
            out[name] = m
    return out


def forward_with(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """``layer``'s operation on ``x`` with ``weight`` and its bias, no input quantization (a pre-op a layer adapter
    put in front of a fake-quant layer, such as SAME padding, is applied)."""
    pre_op = layer._modules.get("pre_op")
    if pre_op is not None:
        x = pre_op(x)
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return layer._conv_forward(x, weight, layer.bias)


def quant_forward(layer: nn.Module, x: Tensor) -> Tensor:
    """The fake-quant layer's output on the raw (not yet quantized) input ``x``."""
    return layer(x)


def float_forward(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's float output: float weight, float input."""
    return forward_with(layer, x, layer.weight)


def progress_bar(ctx, desc: str, total: int):
    """A tqdm progress bar of ``total`` layers when ``ctx.progress``, else None."""
    if not ctx.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def tune_against_float(
    model: nn.Module,
    ctx: PtqContext,
    chosen: dict[str, nn.Module],
    inputs: Any,
    tune: Callable[[nn.Module, nn.Module, Tensor, Tensor], dict[str, Any]],
    step: str,
) -> dict[str, Any]:
    """One pass of ``model`` on ``inputs`` in which each ``chosen`` layer runs ``tune(layer, float_layer, x_q,
    x_f)`` on its actual input ``x_q`` (the layers before it already tuned) and the float reference model's input
    ``x_f`` to the same layer, right before it runs. Returns layer -> ``tune``'s report."""
    assert ctx.float_model is not None
    float_layers = {n: ctx.float_model.get_submodule(n) for n in chosen}
    float_inputs = layer_inputs(ctx.float_model, float_layers, inputs)
    report: dict[str, Any] = {}

    def before(name: str, layer: nn.Module, x: Tensor) -> None:
        report[name] = tune(layer, float_layers[name], x, float_inputs.pop(name))

    layer_by_layer(model, chosen, inputs, before=before, progress=progress_bar(ctx, step, len(chosen)))
    return report
