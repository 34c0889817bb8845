"""Reuse of upstream activations by the probes: a torch.fx-traced model run whole once (recording the FP32
values that probes reuse), then only downstream of the probed layer (:class:`_GraphRunner`)."""

from __future__ import annotations

import inspect
import operator
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from workbench.quant.fusion import trace_layers

_INPLACE_FUNCTIONS = {
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
    operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
    operator.imatmul, operator.setitem,
}  # fmt: skip


class _GraphRunner:
    """Runs a torch.fx-traced model, or only the part of it downstream of one layer with the FP32 values
    upstream taken from a cache (a probe changes one layer, so everything before it is unchanged).

    Built only for single-input graphs without in-place operations (see :meth:`build`); executing the same
    nodes in the same order on the same values gives the same logits as the full forward pass.
    """

    def __init__(self, gm: torch.fx.GraphModule, layers: Sequence[str]) -> None:
        self.gm = gm
        nodes = list(gm.graph.nodes)
        order = {n: i for i, n in enumerate(nodes)}
        self.nodes = nodes
        self.cones: dict[str, list[torch.fx.Node]] = {}
        needed: set[torch.fx.Node] = set()
        for layer in layers:
            cone: set[torch.fx.Node] = set()
            stack = [n for n in nodes if n.op == "call_module" and n.target == layer]
            while stack:
                n = stack.pop()
                if n not in cone:
                    cone.add(n)
                    stack.extend(n.users)
            self.cones[layer] = sorted(cone, key=order.__getitem__)
            needed.update(i for n in cone for i in n.all_input_nodes if i not in cone)
        self.needed = needed

    @staticmethod
    def build(model: nn.Module, layers: Sequence[str]) -> _GraphRunner | None:
        """A runner for ``model``, or None when it cannot be traced, has several inputs or in-place ops."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gm = trace_layers(model)
        except Exception:  # noqa: BLE001 - untraceable models run whole
            return None
        nodes = list(gm.graph.nodes)
        if sum(n.op == "placeholder" for n in nodes) != 1 or any(_is_inplace(gm, n) for n in nodes):
            return None
        return _GraphRunner(gm, layers)

    def _execute(
        self, nodes: Iterable[torch.fx.Node], env: dict[torch.fx.Node, Any], x: Tensor | None
    ) -> Any:
        for node in nodes:
            args = torch.fx.node.map_arg(node.args, env.__getitem__)
            kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
            if node.op == "placeholder":
                env[node] = x
            elif node.op == "get_attr":
                obj: Any = self.gm
                for part in str(node.target).split("."):
                    obj = getattr(obj, part)
                env[node] = obj
            elif node.op == "call_module":
                env[node] = self.gm.get_submodule(str(node.target))(*args, **kwargs)
            elif node.op == "call_function":
                env[node] = node.target(*args, **kwargs)  # type: ignore[operator]
            elif node.op == "call_method":
                env[node] = getattr(args[0], str(node.target))(*args[1:], **kwargs)
            elif node.op == "output":
                return args[0]
        raise RuntimeError("the traced graph has no output node")

    @torch.no_grad()
    def record(self, x: Any) -> tuple[Any, dict[torch.fx.Node, Any]]:
        """Full forward pass: the output and the values that some probe reuses. ``x``: the one input, as a
        tensor, a 1-tuple or a 1-key dict naming the forward's argument."""
        if isinstance(x, dict):
            bound = inspect.signature(self.gm.forward).bind(**x)
            bound.apply_defaults()
            (x,) = bound.args
        elif isinstance(x, (tuple, list)):
            (x,) = x
        env: dict[torch.fx.Node, Any] = {}
        out = self._execute(self.nodes, env, x)
        return out, {n: env[n] for n in self.needed}

    @torch.no_grad()
    def run(self, layer: str, cache: dict[torch.fx.Node, Any], reference: Tensor) -> Any:
        """The logits with only ``layer``'s downstream cone re-executed (``reference`` if the cone misses the
        output)."""
        cone = self.cones[layer]
        if not cone or cone[-1].op != "output":
            return reference
        return self._execute(cone, dict(cache), None)


def _is_inplace(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.kwargs.get("inplace", False):
        return True
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCTIONS
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("__")
    return False


def _nbytes(value: Any) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    return 0
