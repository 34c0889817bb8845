"""Hardware cost of a plan: size, BOPs, latency and energy (:class:`CostModel`, one :class:`PlanCost` per plan).

Latency (and energy) come from a hardware precision profile when one is given (:mod:`workbench.hardware`: the
measured profile of this CPU, or a reference profile); without one, latency is a BOPs proxy: the FP32 model's
measured latency per sample on this machine, scaled by the plan's BOPs over FP32 BOPs. ``CostModel.latency_source``
says which.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.devices import model_device
from workbench.quant.inputs import call_model, expand_inputs, move_inputs
from workbench.quant.introspect import LayerCost, layer_costs, quantizable_layers
from workbench.quant.spec import PlanCosts, QuantPlan, plan_costs, state_bits
from workbench.quant.swap import conv_bn_pairs


@dataclass(frozen=True)
class PlanCost:
    """Hardware cost of one plan (per input sample where it matters)."""

    size_bytes: int
    weight_bytes: int
    bops: int
    latency_ms: float
    avg_weight_bits: float
    avg_act_bits: float
    energy_mj: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "energy_mj": None if math.isnan(self.energy_mj) else self.energy_mj,
            "size_bytes": self.size_bytes,
            "weight_bytes": self.weight_bytes,
            "bops": self.bops,
            "latency_ms": self.latency_ms,
            "avg_weight_bits": self.avg_weight_bits,
            "avg_act_bits": self.avg_act_bits,
        }


def measure_fp32_latency_ms(
    model: nn.Module, example_input: Any, *, batch: int = 32, repeats: int = 7, max_seconds: float = 3.0
) -> float:
    """Median wall time per sample (ms) of the FP32 model on this machine, on the model's device (warm-up
    first; a CUDA device is synchronised around each timed run): ``repeats`` timed runs, or as many (at least
    3) as fit in ``max_seconds`` on a model whose batch takes long. ``example_input``: a tensor, a tuple or a
    dict of tensors; its first sample is repeated ``batch`` times."""
    device = model_device(model)
    x = move_inputs(expand_inputs(example_input, batch), device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    model = model.eval()
    times = []
    with torch.inference_mode():
        call_model(model, x)
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            call_model(model, x)
            sync()
            times.append(time.perf_counter() - t0)
            if len(times) >= 3 and sum(times) > max_seconds:
                break
    return 1000.0 * statistics.median(times) / batch


class CostModel:
    """Size, BOPs, latency and energy of plans for one model, from per-layer costs computed once.

    With ``profile`` (a :class:`~workbench.hardware.PrecisionProfile` or its name / path) a plan's latency and
    energy per sample come from the hardware cost estimator at ``batch_size`` (default: the profile's). With
    ``profile="in_context"`` the latency is :func:`~workbench.hardware.layer_costs.estimate_latency` on the
    model's per-layer costs measured on this machine at ``batch_size`` (default 32; ``calib``: the static int8
    deployment's calibration data), energy NaN. Without
    one, latency is ``fp32_latency_ms * bops / fp32_bops`` with ``fp32_latency_ms`` the FP32 model's per-sample
    latency (measured on this machine when omitted) and energy is NaN.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: torch.Tensor,
        *,
        fp32_latency_ms: float | None = None,
        profile: Any = None,
        batch_size: int | None = None,
        calib: Any = None,
    ) -> None:
        self.model = model
        self.costs: dict[str, LayerCost] = layer_costs(model, example_input)
        self.layers = quantizable_layers(model)
        self._pairs = conv_bn_pairs(model)
        self._modules = dict(model.named_modules())
        self._state_bits = state_bits(model)
        self.fp32 = self._costs(QuantPlan({}), [])
        self.estimator = None
        self.layer_costs: Any = None
        if isinstance(profile, str) and profile == "in_context":
            from workbench.hardware.layer_costs import measure_layer_costs

            self.batch_size = 32 if batch_size is None else int(batch_size)
            example = expand_inputs(example_input, self.batch_size)
            self.layer_costs = measure_layer_costs(model, example, calib=calib)
        elif profile is not None:
            from workbench.hardware.estimate import CostEstimator

            self.estimator = CostEstimator(model, example_input, profile, batch_size=batch_size)
        if fp32_latency_ms is not None:
            self.fp32_latency_ms = float(fp32_latency_ms)
        elif self.layer_costs is not None:
            self.fp32_latency_ms = self._in_context_ms(QuantPlan({}))
        elif self.estimator is not None:
            self.fp32_latency_ms = self.estimator(QuantPlan({})).latency_per_sample_ms
        else:
            self.fp32_latency_ms = measure_fp32_latency_ms(model, example_input)
        self.weight_params = {n: c.weight_params for n, c in self.costs.items()}

    def _costs(self, plan: QuantPlan, pairs: list[tuple[str, str]]) -> PlanCosts:
        return plan_costs(plan, self.model, self.costs, bn_pairs=pairs, modules=self._modules,
                          fp32_bits=self._state_bits)  # fmt: skip

    def _in_context_ms(self, plan: QuantPlan) -> float:
        from workbench.hardware.layer_costs import estimate_latency

        return estimate_latency(self.layer_costs, plan) / self.batch_size

    @property
    def latency_source(self) -> str:
        """``profile:<name>`` when latency comes from a hardware profile, ``in_context`` from measured per-layer
        costs, else ``bops_proxy``."""
        if self.layer_costs is not None:
            return "in_context"
        return f"profile:{self.estimator.profile.name}" if self.estimator is not None else "bops_proxy"

    def __call__(self, plan: QuantPlan) -> PlanCost:
        changed = {
            n
            for n, sp in plan.items()
            if sp.w_bits < 32 or sp.channel_bits is not None or sp.method in ("prune", "lowrank")
        }
        pairs = [p for p in self._pairs if p[0] in changed]
        s = self._costs(plan, pairs)
        if self.layer_costs is not None:
            latency, energy = self._in_context_ms(plan), math.nan
        elif self.estimator is not None:
            est = self.estimator(plan)
            latency = est.latency_per_sample_ms
            energy = est.energy_mj / est.batch_size
        else:
            latency = self.fp32_latency_ms * s.bops / s.fp32_bops if s.fp32_bops else math.nan
            energy = math.nan
        return PlanCost(
            size_bytes=s.size_bytes,
            weight_bytes=s.weight_bytes,
            bops=s.bops,
            latency_ms=latency,
            avg_weight_bits=s.avg_weight_bits,
            avg_act_bits=s.avg_act_bits,
            energy_mj=energy,
        )

    @property
    def fp32_cost(self) -> PlanCost:
        return self(QuantPlan({}))


__all__ = ["CostModel", "PlanCost", "measure_fp32_latency_ms"]
