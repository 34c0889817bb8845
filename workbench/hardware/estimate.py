"""Cost estimator: latency, energy and memory traffic of a QuantPlan on a :class:`PrecisionProfile`.

The model is traced once with torch.fx (shapes from one sample). Every node is one of

- a **layer** (Conv2d / Linear): ``overhead + max(MACs / rate, bytes / bandwidth)`` at the precision its dispatch
  chose (:mod:`workbench.hardware.dispatch`), where bytes are its weights at their stored bit width plus its input
  and output activations;
- an **elementwise** op (residual add, ReLU not fused into a layer, pooling, unfolded BatchNorm):
  ``overhead + max(elements / rate, bytes / bandwidth)`` in the integer domain when its owning module runs only
  integer layers, in float otherwise;
- **free**: reshapes, BatchNorm folded into the preceding conv, ReLU fused into an integer conv or add.

Where a tensor crosses between the integer and the float domain (and around each bf16 / fp16 layer) a conversion
(quantize, dequantize or cast) of its elements is added. Energy is ``MACs x pJ/MAC + bytes x pJ/byte`` summed over
the figures the profile gives (``energy_complete`` says whether every node had both; NaN when the profile has no
energy figures at all). Deployment (:mod:`workbench.hardware.deploy`) follows the same domain
rule, so the estimate describes the model that is actually deployed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from workbench.hardware.dispatch import LayerDispatch, dispatch_plan, int_containers, int_followers
from workbench.hardware.graph import _Node, trace_graph
from workbench.hardware.profile import INT_PRECISION_BITS, PrecisionProfile, load_profile
from workbench.quant.introspect import quantizable_layers
from workbench.quant.spec import QuantPlan, macs_factor


@dataclass(frozen=True)
class PlanEstimate:
    """Estimated cost of one plan on one profile for one batch (``layers``: one row per costed node)."""

    profile: str
    batch_size: int
    latency_ms: float
    layer_ms: float
    elementwise_ms: float
    conversion_ms: float
    energy_mj: float
    energy_complete: bool
    bytes_moved: int
    macs: int
    fallback_layers: tuple[str, ...]
    layers: pd.DataFrame

    @property
    def latency_per_sample_ms(self) -> float:
        return self.latency_ms / self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "batch_size": self.batch_size,
            "latency_ms": self.latency_ms,
            "latency_per_sample_ms": self.latency_per_sample_ms,
            "layer_ms": self.layer_ms,
            "elementwise_ms": self.elementwise_ms,
            "conversion_ms": self.conversion_ms,
            "energy_mj": self.energy_mj,
            "energy_complete": self.energy_complete,
            "bytes_moved": self.bytes_moved,
            "macs": self.macs,
            "fallback_layers": list(self.fallback_layers),
        }


def _bytes(bits: float) -> float:
    return bits / 8.0


class CostEstimator:
    """Estimates plans for one model on one profile; the graph and layer costs are computed once.

    ``batch_size`` defaults to the profile's. Call it with a plan: ``estimator(plan) -> PlanEstimate``.
    ``per_layer_casts``: 16-bit float layers cast their input and output (the workbench's CPU deployment; the
    default for measured profiles) rather than keeping a 16-bit domain between consecutive 16-bit layers (the
    default for reference profiles).
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        profile: PrecisionProfile | str,
        *,
        batch_size: int | None = None,
        per_layer_casts: bool | None = None,
    ) -> None:
        from workbench.quant.introspect import layer_costs

        self.profile = load_profile(profile)
        # the workbench's own CPU deployment casts around every bf16 layer; a compiler for a reference target
        # keeps 16-bit tensors between consecutive 16-bit layers
        self.per_layer_casts = self.profile.kind == "measured" if per_layer_casts is None else per_layer_casts
        self.batch_size = int(self.profile.batch_size if batch_size is None else batch_size)
        if isinstance(batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.model = model
        self.layers = quantizable_layers(model)
        self.costs = layer_costs(model, example_input)
        self.weight_shapes = {n: tuple(dict(model.named_modules())[n].weight.shape) for n in self.layers}
        self.graph = trace_graph(model, example_input)

    # ------------------------------------------------------------------------------------------------------
    def dispatch(self, plan: QuantPlan, *, strict: bool = False) -> dict[str, LayerDispatch]:
        return dispatch_plan(self.model, plan, self.profile, layers=self.layers, strict=strict)

    def __call__(self, plan: QuantPlan, *, strict: bool = False) -> PlanEstimate:
        with warnings.catch_warnings():
            if not strict:
                warnings.simplefilter("ignore")
            disp = self.dispatch(plan, strict=strict)
        return self.estimate(plan, disp)

    def estimate(self, plan: QuantPlan, disp: dict[str, LayerDispatch]) -> PlanEstimate:
        prof = self.profile
        B = self.batch_size
        bw = prof.memory.bandwidth_gbps * 1e9
        e_byte = prof.memory.energy_pj_per_byte
        rows: list[dict[str, Any]] = []

        def add_row(name: str, kind: str, op: str, prec: str, work: float, nbytes: float, cost) -> None:
            rows.append(
                _cost_row(name, kind, op, prec, work, nbytes, cost, bandwidth=bw, energy_per_byte=e_byte)
            )

        self._layer_rows(plan, disp, add_row)
        if self.graph is not None:
            self._graph_rows(disp, add_row)
        df = pd.DataFrame(rows)
        by = df.groupby("kind")["latency_ms"].sum() if len(df) else pd.Series(dtype=float)
        has_energy = e_byte is not None or any(
            c.energy_pj_per_mac is not None for t in prof.ops.values() for c in t.values()
        )
        energy = float(df["energy_mj"].sum()) if len(df) and has_energy else math.nan
        macs = int(df.loc[df["kind"] == "layer", "work"].sum())
        return PlanEstimate(
            profile=prof.name,
            batch_size=B,
            latency_ms=float(df["latency_ms"].sum()),
            layer_ms=float(by.get("layer", 0.0)),
            elementwise_ms=float(by.get("elementwise", 0.0)),
            conversion_ms=float(by.get("conversion", 0.0)),
            energy_mj=energy,
            energy_complete=bool(has_energy and len(df) and df["energy_known"].all()),
            bytes_moved=int(df["bytes"].sum()),
            macs=macs,
            fallback_layers=tuple(n for n, d in disp.items() if d.fallback),
            layers=df,
        )

    def _layer_rows(self, plan: QuantPlan, disp: dict[str, LayerDispatch], add_row) -> None:
        """A row per quantizable layer (and its bf16 / fp16 casts when the profile charges them per layer)."""
        prof, B = self.profile, self.batch_size
        for name in self.layers:
            d = disp[name]
            c = self.costs[name]
            spec = plan.get(name)
            factor = macs_factor(spec, self.weight_shapes[name]) if spec is not None else 1.0
            macs = c.macs * B * factor
            # a table profile's integer kernel reads and writes its container width (a 4-bit layer on an int8
            # kernel moves 8-bit tensors); a bit-serial target moves the plan's own bits
            w_traffic, a_traffic = d.weight_bits, d.a_bits
            if d.is_int and prof.bit_serial is None:
                width = INT_PRECISION_BITS[d.precision]
                w_traffic, a_traffic = max(d.weight_bits, width), max(d.a_bits, width)
            in_el = math.prod(c.input_shape) * B
            out_el = math.prod(c.output_shape) * B
            out_bytes = _bytes(a_traffic if d.is_int else 32)
            nbytes = (
                c.weight_params * factor * _bytes(w_traffic) + in_el * _bytes(a_traffic) + out_el * out_bytes
            )
            cost = prof.op_cost(d.op, d.precision, w_bits=d.w_bits, a_bits=d.a_bits)
            add_row(name, "layer", d.op, d.precision, macs, nbytes, cost)
            if d.precision in ("bf16", "fp16") and prof.conversion is not None and self.per_layer_casts:
                add_row(
                    f"{name}:cast",
                    "conversion",
                    "conversion",
                    d.precision,
                    in_el + out_el,
                    0.0,
                    _conv_cost(prof),
                )

    def _graph_rows(self, disp: dict[str, LayerDispatch], add_row) -> None:
        prof = self.profile
        B = self.batch_size
        int_paths = int_containers(self.model, disp)
        followers = int_followers(self.model, disp)
        nodes = {n.name: n for n in self.graph}
        domain: dict[str, str] = {}  # node -> "int" / "half" / "float" domain of its output
        fused: set[str] = set()
        converted: set[tuple[str, str]] = set()
        ew = prof.precisions("elementwise") if prof.ops.get("elementwise") else ()
        half_prec = {d.precision for d in disp.values() if d.precision in ("bf16", "fp16")}

        def need(node: _Node) -> str:
            if node.kind == "layer":
                d = disp[node.layer]
                if d.is_int:
                    return "int"
                return "half" if d.precision in ("bf16", "fp16") and not self.per_layer_casts else "float"
            if node.kind in ("relu", "bn") and len(node.inputs) == 1 and node.inputs[0] in nodes:
                src = nodes[node.inputs[0]]
                if src.kind == "bn" and src.inputs and src.inputs[0] in nodes:
                    src = nodes[src.inputs[0]]  # conv -> bn -> relu fuses as one pattern
                if src.kind == "layer":
                    return need(src)
            if node.kind in ("elementwise", "relu", "bn") and node.target in followers:
                return "int"
            if node.kind in ("elementwise", "relu", "bn"):
                if node.owner in int_paths:
                    return "int"
                ins = [domain.get(i, "float") for i in node.inputs if i in nodes]
                return "half" if ins and all(x == "half" for x in ins) else "float"
            return ""

        for node in self.graph:
            want = need(node)
            if node.kind == "input":
                domain[node.name] = "float"
                continue
            if node.kind in ("free", "output"):
                doms = [domain.get(i, "float") for i in node.inputs]
                domain[node.name] = doms[0] if doms else "float"
                if node.kind == "output":
                    for i in node.inputs:
                        if domain.get(i, "float") != "float":
                            _conversion(nodes[i], "float", converted, add_row, prof, B)
                continue
            for i in node.inputs:
                if i in nodes and domain.get(i, "float") != want:
                    _conversion(nodes[i], want, converted, add_row, prof, B)
            domain[node.name] = want
            if node.kind == "layer":
                continue
            src = nodes.get(node.inputs[0]) if node.inputs else None
            single_src = src is not None and len(node.inputs) == 1
            if node.kind == "bn" and single_src and src.kind == "layer":
                fused.add(node.name)  # folded into the conv
                continue
            if (
                node.kind == "relu"
                and single_src
                and want == "int"
                and (src.kind in ("layer", "elementwise") or src.name in fused)
            ):
                continue  # fused into the integer conv / linear / add
            if not ew:
                continue
            prec = _elementwise_precision(want, ew, half_prec)
            el_bytes = {"int8": 1, "int4": 0.5, "int2": 0.25, "bf16": 2, "fp16": 2, "fp8": 1}.get(prec, 4)
            work = max(node.elements, node.in_elements) * B
            nbytes = (node.elements + node.in_elements) * B * el_bytes
            add_row(
                node.name, "elementwise", "elementwise", prec, work, nbytes, prof.op_cost("elementwise", prec)
            )


def _elementwise_precision(want: str, ew: tuple[str, ...], half_prec: set[str]) -> str:
    """The elementwise precision the profile offers for a node that wants the ``want`` domain."""
    if want == "int" and "int8" in ew:
        return "int8"
    if want == "half":
        for p in sorted(half_prec) + ["bf16", "fp16"]:
            if p in ew:
                return p
    return "fp32" if "fp32" in ew else max(ew, key=lambda p: 0 if p.startswith("int") else 1)


def _cost_row(
    name: str,
    kind: str,
    op: str,
    prec: str,
    work: float,
    nbytes: float,
    cost,
    *,
    bandwidth: float,
    energy_per_byte: float | None,
) -> dict[str, Any]:
    """One row of an estimate: compute time (measured curve where the profile has one, else overhead + work /
    rate), memory time, the larger of the two with the overhead, and energy where the profile knows it."""
    total = cost.seconds(work)  # measured curve where the profile has one, else overhead + work / rate
    compute = total - cost.overhead_us * 1e-6
    memory = nbytes / bandwidth
    seconds = max(total, cost.overhead_us * 1e-6 + memory)
    energy = 0.0
    if cost.energy_pj_per_mac is not None:
        energy += work * cost.energy_pj_per_mac * 1e-12
    if energy_per_byte is not None:
        energy += nbytes * energy_per_byte * 1e-12
    return {
        "node": name,
        "kind": kind,
        "op": op,
        "precision": prec,
        "work": work,
        "bytes": nbytes,
        "compute_ms": compute * 1e3,
        "memory_ms": memory * 1e3,
        "latency_ms": seconds * 1e3,
        "bound": "memory" if memory > compute else "compute",
        "energy_mj": energy * 1e3,
        "energy_known": cost.energy_pj_per_mac is not None and energy_per_byte is not None,
    }


def _conv_cost(prof: PrecisionProfile):
    from workbench.hardware.profile import OpCost

    c = prof.conversion
    return OpCost(macs_per_s=c.elements_per_s, overhead_us=c.overhead_us, source=c.source)


def _conversion(src: _Node, to: str, done: set, add_row, prof: PrecisionProfile, B: int) -> None:
    if prof.conversion is None or (src.name, to) in done:
        return
    done.add((src.name, to))
    el = src.elements * B
    name = {"int": "quantize:", "half": "cast:"}.get(to, "dequantize:") + src.name
    prec = {"int": "int8", "half": "fp16"}.get(to, "fp32")
    add_row(name, "conversion", "conversion", prec, el, el * 5, _conv_cost(prof))


def estimate_plans(
    model: nn.Module,
    example_input: torch.Tensor,
    plans: dict[str, QuantPlan],
    profiles: list[PrecisionProfile | str],
    *,
    batch_size: int | None = None,
) -> pd.DataFrame:
    """Tidy table: one row per (plan, profile) with latency, energy and traffic."""
    rows = []
    for prof in profiles:
        est = CostEstimator(model, example_input, prof, batch_size=batch_size)
        for name, plan in plans.items():
            e = est(plan)
            rows.append({"plan": name, **e.to_dict(), "fallbacks": len(e.fallback_layers)})
    return pd.DataFrame(rows)
