"""BatchNorm folding: find the (conv, bn) pairs a model's graph allows and fold them (torch.fx)."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from workbench.quant.introspect import get_module, is_quantizable, quantizable_type, set_module

_BN_AFTER: dict[type[nn.Module], type[nn.Module]] = {nn.BatchNorm2d: nn.Conv2d, nn.BatchNorm1d: nn.Conv1d}


class LayerTracer(torch.fx.Tracer):
    """A torch.fx tracer that keeps every quantizable layer one ``call_module`` node, adapted subclasses with
    their own forward included (a SAME-padding conv is one layer, not a pad and an ``F.conv2d``)."""

    def trace(self, root, concrete_args=None):  # noqa: ANN001 - torch.fx's signature
        # layers are found before tracing starts: an adapter checks a layer by running it, which must not run
        # under the tracer's patches
        modules = root.modules() if isinstance(root, nn.Module) else ()
        self._layers = {id(m) for m in modules if is_quantizable(m)}
        return super().trace(root, concrete_args)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) in self._layers or super().is_leaf_module(m, module_qualified_name)


def trace_layers(model: nn.Module) -> torch.fx.GraphModule:
    """``model`` traced by :class:`LayerTracer` (as ``torch.fx.symbolic_trace`` would, but with quantizable
    layers as leaves); raises what tracing raises for a model torch.fx cannot trace."""
    tracer = LayerTracer()
    graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module paths where a BatchNorm2d directly and only consumes a Conv2d's output, or a BatchNorm1d
    a Conv1d's (``fuse_conv_bn_eval`` folds both alike; BatchNorm after a Linear is not folded). Adapted
    convolutions (SAME padding, :mod:`workbench.quant.adapters`) count as their base type.

    Found by tracing the model with torch.fx; a model that cannot be traced yields no pairs (with a warning, if
    it has a BatchNorm that could have been folded). A model without BatchNorm is not traced at all.
    """
    if not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules()):
        return []
    try:
        gm = trace_layers(model)
    except Exception as e:  # noqa: BLE001 - untraceable models simply keep their BatchNorm
        warnings.warn(f"BatchNorm folding skipped: model is not traceable by torch.fx ({e})", stacklevel=2)
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in gm.graph.nodes:
        conv_type = _BN_AFTER.get(type(modules.get(node.target))) if node.op == "call_module" else None
        if conv_type is None:
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and _conv_type(modules.get(src.target)) is conv_type
            and modules[node.target].track_running_stats
            and modules[node.target].running_mean is not None
            and len(src.users) == 1
            and calls[src.target] == 1
            and calls[node.target] == 1
        ):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _conv_type(module: nn.Module | None) -> type[nn.Module] | None:
    """The float convolution type of ``module`` (an exact or adapted conv; None for fake-quant twins)."""
    if module is None or getattr(module, "is_quant_module", False):
        return None
    return quantizable_type(module)


def fold_batchnorm(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Fold each BatchNorm into its convolution in place (``model`` must be a private copy in eval mode)."""
    for conv_name, bn_name in pairs:
        conv = get_module(model, conv_name)
        bn = get_module(model, bn_name)
        set_module(model, conv_name, fuse_conv_bn_eval(conv, bn))
        set_module(model, bn_name, nn.Identity())
