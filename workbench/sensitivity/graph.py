"""Reuse of upstream activations by the probes: a torch.fx-traced model run node by node in FP32, and at each
probed layer, as soon as the FP32 values its downstream part needs exist, only that part re-run with the probe
swapped in (:meth:`_GraphRunner.stream`). Memory: one forward pass's live values, whatever the model's depth."""

from __future__ import annotations

import inspect
import operator
import warnings
from collections.abc import Callable, Iterable, Sequence
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
    upstream taken from the FP32 pass (a probe changes one layer, so everything before it is unchanged).

    Built only for single-input graphs without in-place operations (see :meth:`build`); executing the same
    nodes in the same order on the same values gives the same logits as the full forward pass.
    """

    def __init__(self, gm: torch.fx.GraphModule, layers: Sequence[str]) -> None:
        self.gm = gm
        nodes = list(gm.graph.nodes)
        order = {n: i for i, n in enumerate(nodes)}
        self.nodes = nodes
        self.cones: dict[str, list[torch.fx.Node]] = {}
        self.inputs: dict[str, set[torch.fx.Node]] = {}
        for layer in layers:
            cone: set[torch.fx.Node] = set()
            stack = [n for n in nodes if n.op == "call_module" and n.target == layer]
            while stack:
                n = stack.pop()
                if n not in cone:
                    cone.add(n)
                    stack.extend(n.users)
            self.cones[layer] = sorted(cone, key=order.__getitem__)
            outside = {i for n in cone for i in n.all_input_nodes if i not in cone}
            self.inputs[layer] = outside
        self._schedule()

    def _schedule(self) -> None:
        """When :meth:`stream` visits each layer (right after the last FP32 value its cone needs is computed) and
        when it may drop each value (after its last user or visit)."""
        order = {n: i for i, n in enumerate(self.nodes)}
        self.visits: dict[int, list[str]] = {}
        last = {n: max((order[u] for u in n.users), default=order[n]) for n in self.nodes}
        for layer, outside in self.inputs.items():
            if not self.cones[layer]:
                continue  # not reached by the forward pass
            at = max((order[i] for i in outside), default=0)
            self.visits.setdefault(at, []).append(layer)
            for i in outside:
                last[i] = max(last[i], at)
        self.drops: dict[int, list[torch.fx.Node]] = {}
        for n, i in last.items():
            self.drops.setdefault(i, []).append(n)

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

    def _step(self, node: torch.fx.Node, env: dict[torch.fx.Node, Any], x: Tensor | None) -> Any:
        """Execute one node into ``env``; the output node's value is returned (None for every other node)."""
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
        return None

    def _execute(
        self, nodes: Iterable[torch.fx.Node], env: dict[torch.fx.Node, Any], x: Tensor | None
    ) -> Any:
        for node in nodes:
            if node.op == "output":
                return self._step(node, env, x)
            self._step(node, env, x)
        raise RuntimeError("the traced graph has no output node")

    def _input(self, x: Any) -> Any:
        """The one input, given as a tensor, a 1-tuple or a 1-key dict naming the forward's argument."""
        if isinstance(x, dict):
            bound = inspect.signature(self.gm.forward).bind(**x)
            bound.apply_defaults()
            (x,) = bound.args
        elif isinstance(x, (tuple, list)):
            (x,) = x
        return x

    @torch.no_grad()
    def stream(self, x: Any, visit: Callable[[str, dict[torch.fx.Node, Any]], None]) -> Any:
        """The FP32 forward pass node by node, calling ``visit(layer, env)`` for each reached layer as soon as the
        FP32 values its cone needs are in ``env`` (a probe then runs :meth:`run_cone`; ``visit`` must restore
        the layer's module before it returns), dropping each value after its last use; returns the output."""
        env: dict[torch.fx.Node, Any] = {}
        x = self._input(x)
        out = None
        for i, node in enumerate(self.nodes):
            result = self._step(node, env, x)
            if node.op == "output":
                out = result
            for layer in self.visits.get(i, ()):
                visit(layer, env)
            for n in self.drops.get(i, ()):
                env.pop(n, None)
        return out

    @torch.no_grad()
    def run_cone(self, layer: str, env: dict[torch.fx.Node, Any]) -> Any:
        """The output with ``layer``'s cone re-executed on a copy of ``env`` (None when the cone misses the
        output: the FP32 output is then the answer)."""
        cone = self.cones[layer]
        if not cone or cone[-1].op != "output":
            return None
        return self._execute(cone, dict(env), None)


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
