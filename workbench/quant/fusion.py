"""BatchNorm folding: find the (conv, bn) pairs a model's graph allows and fold them (torch.fx)."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from workbench.quant.introspect import get_module, set_module

_BN_AFTER: dict[type[nn.Module], type[nn.Module]] = {nn.BatchNorm2d: nn.Conv2d, nn.BatchNorm1d: nn.Conv1d}


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module paths where a BatchNorm2d directly and only consumes a Conv2d's output, or a BatchNorm1d
    a Conv1d's (``fuse_conv_bn_eval`` folds both alike; BatchNorm after a Linear is not folded).

    Found by tracing the model with torch.fx; a model that cannot be traced yields no pairs (with a warning, if
    it has a BatchNorm that could have been folded). A model without BatchNorm is not traced at all.
    """
    if not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules()):
        return []
    try:
        gm = torch.fx.symbolic_trace(model)
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
            and type(modules.get(src.target)) is conv_type
            and modules[node.target].track_running_stats
            and modules[node.target].running_mean is not None
            and len(src.users) == 1
            and calls[src.target] == 1
            and calls[node.target] == 1
        ):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def fold_batchnorm(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Fold each BatchNorm into its convolution in place (``model`` must be a private copy in eval mode)."""
    for conv_name, bn_name in pairs:
        conv = get_module(model, conv_name)
        bn = get_module(model, bn_name)
        set_module(model, conv_name, fuse_conv_bn_eval(conv, bn))
        set_module(model, bn_name, nn.Identity())
