"""Runtime adaptation: per-input precision under a resource budget (seeds 002, 003, 004).

The pieces, in the order an input meets them:

- :class:`SwitchableModel` - the model with BatchNorm folded and every Conv2d / Linear holding its weights
  pre-quantized at each candidate bit width (per output channel), so switching precision recomputes nothing;
  activations are quantized with per-input (dynamic) scales at ``a_bits``. Layers are grouped (seed 003's layer
  grouping: ``"stage"`` = top-level module, ``"layer"`` = each layer, or explicit groups) and a **precision map**
  gives each group its weight bits.
- :class:`ProbeEngine` - seed 003's sensitivity analysis engine: on a small calibration subset it runs forward
  passes with one group at each candidate precision and measures the local error (the group's own output) and
  the downstream error (KL divergence of the model's output); then it builds a **ladder** of precision maps from
  the all-high map down to the all-low map, each step lowering the group whose step costs the least downstream
  error per BOP saved, measured on the whole model (feedback: upstream precision is chosen by the error it causes
  downstream, not by its local error).
- :class:`InputAnalyzer` - statistics of each input (range, variance, entropy of its histogram) and of each
  group's input on the first rung (seed 004's granularity controllers watch input variance).
- Policies choose a rung of the ladder per input:
  :class:`StaticPolicy` (one rung for all), :class:`RulePolicy` (input statistics against the calibration
  profile: higher variance / entropy -> more bits), :class:`LearnedPolicy` (a small controller trained on
  calibration data to predict, per input, the cheapest rung that keeps the FP32 prediction, from the statistics
  and the cheapest rung's output), :class:`CascadePolicy` (run the cheapest rung; escalate while the output is
  not confident: downstream error refines the choice).
- :class:`ResourceManager` - enforces the global budget (average BOPs, average weight bits or latency on a
  hardware profile) over the stream: it sets each policy's knob on calibration data and overrides local
  decisions that would break the running average.
- :class:`AdaptiveRuntime` - ties them together, serves batches, validates inputs (a bad input is rejected with
  a reason and the others are served), and accounts the time spent analysing and selecting apart from inference.

:func:`evaluate_runtime` compares dynamic precision with the best static precision map of equal average cost on
clean and shifted data (noise, contrast, blur).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from workbench.devices import model_device, on_device
from workbench.quant.introspect import layer_costs, quantizable_layers
from workbench.quant.modules import quantize_weight
from workbench.quant.spec import QuantPlan, QuantSpec
from workbench.quant.swap import conv_bn_pairs, fold_batchnorm, get_module, set_module

BUDGET_KINDS: tuple[str, ...] = ("bops", "avg_bits", "latency")
SHIFTS: tuple[str, ...] = ("clean", "noise", "contrast", "blur")
POLICIES: tuple[str, ...] = ("static", "rule", "learned", "cascade")


class RuntimeBudgetError(ValueError):
    """No precision map meets the budget; the message names the cheapest feasible budget."""


class RuntimeInputError(ValueError):
    """An input the runtime cannot serve (wrong shape or dtype); the message names what was expected."""


# ============================================================================================ switchable model


class SwitchableLayer(nn.Module):
    """A Conv2d / Linear with weights pre-quantized at every candidate bit width and per-input activation scales.

    ``bits`` selects the weights used by the next forward (32 = float). Activations are fake-quantized per input
    (one asymmetric scale per sample) at ``a_bits`` (32 = float)."""

    def __init__(self, layer: nn.Module, w_bits: Sequence[int], a_bits: int) -> None:
        super().__init__()
        self.kind = "conv" if isinstance(layer, nn.Conv2d) else "linear"
        self.conv_args: dict[str, Any] = {}
        if self.kind == "conv":
            self.conv_args = {
                "stride": layer.stride,
                "padding": layer.padding,
                "dilation": layer.dilation,
                "groups": layer.groups,
            }
        w = layer.weight.detach().clone()
        self.bias = (
            None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        )
        bank = {32: w}
        for b in w_bits:
            if b < 32:
                bank[int(b)] = quantize_weight(
                    w, QuantSpec(w_bits=int(b), a_bits=32, granularity="per_channel")
                )
        self.bank = bank
        self.a_bits = int(a_bits)
        self.bits = max(bank)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_bits >= 32:
            return x
        flat = x.reshape(x.shape[0], -1)
        lo = flat.amin(1).clamp(max=0.0)
        hi = flat.amax(1).clamp(min=0.0)
        levels = 2**self.a_bits - 1
        scale = ((hi - lo) / levels).clamp(min=1e-8)
        zero = torch.round(-lo / scale)
        shape = (-1,) + (1,) * (x.dim() - 1)
        s, z = scale.view(shape), zero.view(shape)
        return (torch.clamp(torch.round(x / s) + z, 0, levels) - z) * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act(x)
        w = self.bank[self.bits]
        if self.kind == "conv":
            return F.conv2d(x, w, self.bias, **self.conv_args)
        return F.linear(x, w, self.bias)


def _groups_of(layers: Sequence[str], groups: str | Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    if isinstance(groups, Mapping):
        out = {str(g): list(ls) for g, ls in groups.items()}
        seen = [n for ls in out.values() for n in ls]
        unknown = sorted(set(seen) - set(layers))
        if unknown:
            raise ValueError(f"groups name unknown layers {unknown}; layers: {list(layers)}")
        missing = [n for n in layers if n not in seen]
        dup = sorted({n for n in seen if seen.count(n) > 1})
        if missing or dup:
            raise ValueError(f"groups must cover every layer once: missing {missing}, repeated {dup}")
        return out
    if groups == "layer":
        return {n: [n] for n in layers}
    if groups == "stage":
        out: dict[str, list[str]] = {}
        for n in layers:
            out.setdefault(n.split(".")[0], []).append(n)
        return out
    raise ValueError(f"groups={groups!r} is not valid; choose 'stage', 'layer' or a dict group -> layers")


class SwitchableModel(nn.Module):
    """A private copy of ``model`` (BatchNorm folded) whose layer groups switch weight bits per forward.

    It lives on ``model``'s device (the pre-quantized weight banks are built there; move ``model``, not this
    object); :meth:`run` takes inputs on any device and returns logits on the CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        w_bits: Sequence[int] = (2, 3, 4, 6, 8),
        a_bits: int = 8,
        groups: str | Mapping[str, Sequence[str]] = "stage",
    ) -> None:
        super().__init__()
        net = copy.deepcopy(model).eval()
        fold_batchnorm(net, conv_bn_pairs(net))
        self.layers = quantizable_layers(net)
        if not self.layers:
            raise ValueError("the model has no Conv2d / Linear layer to switch")
        self.groups = _groups_of(self.layers, groups)
        self.w_bits = tuple(sorted({int(b) for b in w_bits}))
        for name in self.layers:
            set_module(net, name, SwitchableLayer(get_module(net, name), self.w_bits, a_bits))
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self.a_bits = a_bits
        self.device = model_device(net)

    @property
    def group_names(self) -> list[str]:
        return list(self.groups)

    def set_map(self, precision_map: Mapping[str, int]) -> None:
        for g, layer_names in self.groups.items():
            b = int(precision_map[g])
            if b not in self.w_bits and b != 32:
                raise ValueError(f"bits {b} for group {g!r} not in the candidates {self.w_bits}")
            for n in layer_names:
                get_module(self.net, n).bits = b

    @torch.inference_mode()
    def run(self, x: torch.Tensor, precision_map: Mapping[str, int]) -> torch.Tensor:
        """Logits of ``x`` (moved to the model's device) under ``precision_map``, on the CPU."""
        self.set_map(precision_map)
        return self.net(x.to(self.device)).cpu()

    def plan(self, precision_map: Mapping[str, int]) -> QuantPlan:
        """The map as a QuantPlan (weights per channel at the group's bits, dynamic ``a_bits`` activations)."""
        specs = {}
        for g, names in self.groups.items():
            b = int(precision_map[g])
            for n in names:
                if b < 32:
                    specs[n] = QuantSpec(w_bits=b, a_bits=self.a_bits, a_dynamic=True)
        return QuantPlan(specs)


# ============================================================================================ costs


@dataclass(frozen=True)
class MapCost:
    bops: float
    avg_bits: float
    latency_ms: float


class MapCoster:
    """BOPs, MAC-weighted average weight bits and (with a profile) estimated latency per input of a map."""

    def __init__(
        self, model: nn.Module, smodel: SwitchableModel, example_input: torch.Tensor, profile: Any = None
    ):
        self.smodel = smodel
        costs = layer_costs(model, example_input)
        self.macs = {g: [costs[n].macs for n in names] for g, names in smodel.groups.items()}
        self.total_macs = sum(sum(v) for v in self.macs.values())
        self.estimator = None
        if profile is not None:
            from workbench.hardware.estimate import CostEstimator

            self.estimator = CostEstimator(model, example_input, profile, batch_size=1)
        self._cache: dict[tuple, MapCost] = {}

    def __call__(self, precision_map: Mapping[str, int]) -> MapCost:
        key = tuple(int(precision_map[g]) for g in self.smodel.group_names)
        if key in self._cache:
            return self._cache[key]
        a = self.smodel.a_bits
        bops = sum(m * int(precision_map[g]) * a for g, ms in self.macs.items() for m in ms)
        avg = sum(m * int(precision_map[g]) for g, ms in self.macs.items() for m in ms) / self.total_macs
        lat = math.nan
        if self.estimator is not None:
            lat = self.estimator(self.smodel.plan(precision_map)).latency_ms
        cost = MapCost(float(bops), float(avg), float(lat))
        self._cache[key] = cost
        return cost

    def value(self, precision_map: Mapping[str, int], kind: str) -> float:
        c = self(precision_map)
        return {"bops": c.bops, "avg_bits": c.avg_bits, "latency": c.latency_ms}[kind]


# ============================================================================================ probe engine


def _kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-input KL(softmax(ref) || softmax(logits))."""
    p = F.log_softmax(ref_logits, dim=1)
    q = F.log_softmax(logits, dim=1)
    return (p.exp() * (p - q)).sum(1)


@dataclass
class ProbeResult:
    """Per-group sensitivity (local and downstream error at each bit width) and the ladder of maps."""

    table: pd.DataFrame
    ladder: list[dict[str, int]]
    ladder_kl: list[float]


class ProbeEngine:
    """Seed 003's sensitivity analysis engine, run on a small calibration subset."""

    def __init__(self, smodel: SwitchableModel, coster: MapCoster) -> None:
        self.smodel = smodel
        self.coster = coster

    def _local_outputs(self, x: torch.Tensor, precision_map: Mapping[str, int]) -> dict[str, torch.Tensor]:
        outs: dict[str, torch.Tensor] = {}
        handles = []
        for n in self.smodel.layers:
            mod = get_module(self.smodel.net, n)
            handles.append(mod.register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o.detach())))
        try:
            self.smodel.run(x, precision_map)
        finally:
            for h in handles:
                h.remove()
        return outs

    def run(self, x: torch.Tensor, *, kind: str = "bops") -> ProbeResult:
        sm = self.smodel
        top = {g: max(sm.w_bits) for g in sm.group_names}
        ref = sm.run(x, {g: 32 for g in sm.group_names})
        ref_local = self._local_outputs(x, {g: 32 for g in sm.group_names})
        rows = []
        for g in sm.group_names:
            for b in sm.w_bits:
                m = {**top, g: b}
                loc = self._local_outputs(x, m)
                local = np.mean(
                    [
                        float(
                            ((loc[n] - ref_local[n]) ** 2).mean()
                            / (ref_local[n] ** 2).mean().clamp(min=1e-12)
                        )
                        for n in sm.groups[g]
                    ]
                )
                down = float(_kl(ref, sm.run(x, m)).mean())
                rows.append({"group": g, "w_bits": b, "local_rel_mse": local, "downstream_kl": down})
        table = pd.DataFrame(rows)
        # ladder: from all-high down to all-low, each step the move with the least downstream KL per cost saved,
        # measured on the whole model with the moves already taken (feedback, interactions included)
        current = dict(top)
        ladder = [dict(current)]
        ladder_kl = [float(_kl(ref, sm.run(x, current)).mean())]
        levels = list(sm.w_bits)
        while True:
            best = None
            for g in sm.group_names:
                i = levels.index(current[g])
                if i == 0:
                    continue
                cand = {**current, g: levels[i - 1]}
                saved = self.coster.value(current, kind) - self.coster.value(cand, kind)
                kl = float(_kl(ref, sm.run(x, cand)).mean())
                score = (kl - ladder_kl[-1]) / max(saved, 1e-12)
                if best is None or score < best[0]:
                    best = (score, cand, kl)
            if best is None:
                break
            current = best[1]
            ladder.append(dict(current))
            ladder_kl.append(best[2])
        # cheapest first
        return ProbeResult(table=table, ladder=ladder[::-1], ladder_kl=ladder_kl[::-1])


# ============================================================================================ input analysis


class InputAnalyzer:
    """Per-input statistics: range, variance, entropy (32-bin histogram) of the input."""

    names = ("range", "variance", "entropy", "abs_mean")

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        flat = x.reshape(x.shape[0], -1).float()
        lo, hi = flat.amin(1), flat.amax(1)
        var = flat.var(1, unbiased=False)
        bins = 32
        norm = ((flat - lo[:, None]) / (hi - lo).clamp(min=1e-8)[:, None] * (bins - 1)).round().long()
        counts = torch.zeros(flat.shape[0], bins, device=flat.device).scatter_add_(
            1, norm, torch.ones_like(flat)
        )
        p = counts / counts.sum(1, keepdim=True)
        ent = -(p * torch.log2(p.clamp(min=1e-12))).sum(1)
        return torch.stack([hi - lo, var, ent, flat.abs().mean(1)], 1).cpu().numpy()


def _output_features(logits: torch.Tensor) -> np.ndarray:
    p = F.softmax(logits.float(), dim=1)
    top2 = p.topk(2, dim=1).values
    ent = -(p * torch.log(p.clamp(min=1e-12))).sum(1)
    return torch.stack([top2[:, 0], top2[:, 0] - top2[:, 1], ent], 1).cpu().numpy()


# ============================================================================================ policies


class Policy:
    """Chooses a rung per input. ``knob`` trades accuracy for cost (set by the resource manager)."""

    name = "policy"
    uses_probe_rung = False

    def fit(
        self, runtime: AdaptiveRuntime, x: torch.Tensor, logits: list[torch.Tensor], ref: torch.Tensor
    ) -> None:
        return None

    def scores(
        self, runtime: AdaptiveRuntime, x: torch.Tensor, probe_logits: torch.Tensor | None
    ) -> np.ndarray:
        raise NotImplementedError

    def choose(self, scores: np.ndarray, knob: float, n_rungs: int) -> np.ndarray:
        raise NotImplementedError


class StaticPolicy(Policy):
    """The same rung for every input: ``knob`` is the rung index."""

    name = "static"

    def scores(self, runtime, x, probe_logits):
        return np.zeros(x.shape[0])

    def choose(self, scores, knob, n_rungs):
        return np.full(len(scores), int(round(knob)), dtype=int)


class RulePolicy(Policy):
    """Seed 004's granularity controller: inputs whose statistics say "harder" (calibrated direction of variance
    and entropy against the rung each calibration input needed) get more bits. Costs no extra forward pass."""

    name = "rule"

    def __init__(self) -> None:
        self.mean = self.std = self.weights = None

    def fit(self, runtime, x, logits, ref):
        feats = runtime.analyzer(x)
        self.mean, self.std = feats.mean(0), feats.std(0) + 1e-8
        z = (feats - self.mean) / self.std
        need = _needed_rung(logits, ref)
        # direction: correlation of each statistic with the rung the input needed
        w = np.array(
            [
                np.corrcoef(z[:, j], need)[0, 1] if z[:, j].std() > 0 and need.std() > 0 else 0.0
                for j in range(z.shape[1])
            ]
        )
        self.weights = np.nan_to_num(w)

    def scores(self, runtime, x, probe_logits):
        z = (runtime.analyzer(x) - self.mean) / self.std
        return z @ self.weights  # higher: needs more bits

    def choose(self, scores, knob, n_rungs):
        # knob in [0, n_rungs - 1]: the rung of an average input, shifted by the input's score
        return np.clip(np.round(knob + scores), 0, n_rungs - 1).astype(int)


def _needed_rung(logits: list[torch.Tensor], ref: torch.Tensor) -> np.ndarray:
    """Per input, the cheapest rung from which every more expensive rung agrees with FP32 (else the top)."""
    target = ref.argmax(1)
    agree = torch.stack([lg.argmax(1) == target for lg in logits], 1).cpu().numpy()  # [N, K]
    n, k = agree.shape
    need = np.full(n, k - 1)
    for i in range(n):
        ok = agree[i]
        for r in range(k):
            if ok[r:].all():
                need[i] = r
                break
    return need


class LearnedPolicy(Policy):
    """A small controller (per-rung logistic regressions on input statistics and the cheapest rung's output)
    predicting whether each rung keeps the FP32 prediction; the input runs the cheapest rung predicted to agree
    with probability >= ``knob``. Costs one extra pass of the cheapest rung (the probe)."""

    name = "learned"
    uses_probe_rung = True

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed
        self.weights = self.bias = self.mean = self.scale = None

    def _features(self, runtime, x, probe_logits):
        return np.concatenate([runtime.analyzer(x), _output_features(probe_logits)], 1)

    def fit(self, runtime, x, logits, ref):
        from sklearn.linear_model import LogisticRegression

        feats = self._features(runtime, x, logits[runtime.probe_rung])
        self.mean, self.scale = feats.mean(0), feats.std(0) + 1e-8
        z = (feats - self.mean) / self.scale
        target = ref.argmax(1)
        # one logistic regression per rung, kept as a weight matrix: serving is one matrix product
        weights = np.zeros((z.shape[1], len(logits)))
        bias = np.zeros(len(logits))
        for r, lg in enumerate(logits):
            y = (lg.argmax(1) == target).cpu().numpy().astype(int)
            if y.min() == y.max():
                bias[r] = 30.0 if y[0] == 1 else -30.0  # always / never agrees on calibration data
                continue
            clf = LogisticRegression(C=1.0, max_iter=500, random_state=self.seed).fit(z, y)
            weights[:, r], bias[r] = clf.coef_[0], clf.intercept_[0]
        self.weights, self.bias = weights, bias

    def scores(self, runtime, x, probe_logits):
        z = (self._features(runtime, x, probe_logits) - self.mean) / self.scale
        p = 1.0 / (1.0 + np.exp(-(z @ self.weights + self.bias)))
        return np.maximum.accumulate(p, axis=1)  # a more expensive rung is at least as safe

    def choose(self, scores, knob, n_rungs, low: int = 0):
        ok = scores[:, low:] >= knob
        return low + np.where(ok.any(1), ok.argmax(1), n_rungs - 1 - low)


class CascadePolicy(Policy):
    """Feedback through the output: every input runs the probe rung; an input whose top-1 softmax margin is below
    ``knob`` is run again on the escalation rung. Both runs are paid for. The (probe, escalation, threshold)
    triple is the one with the best calibration agreement with FP32 within the budget."""

    name = "cascade"
    uses_probe_rung = True

    def scores(self, runtime, x, probe_logits):
        return _output_features(probe_logits)[:, 1]

    def choose(self, scores, knob, n_rungs):  # not used: serve() escalates on the probe output
        raise NotImplementedError


# ============================================================================================ runtime


@dataclass(frozen=True)
class RuntimeConfig:
    """Knobs of :class:`AdaptiveRuntime` (defaults work on digits)."""

    w_bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    a_bits: int = 8
    groups: str | Mapping[str, Sequence[str]] = "stage"
    budget_kind: str = "bops"
    probe_samples: int = 128
    probe_agreement: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("probe_agreement",):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ValueError(f"{name}={v!r} must lie in (0, 1]")
        bad = [b for b in self.w_bits if b not in (2, 3, 4, 5, 6, 8)]
        if bad or not self.w_bits:
            raise ValueError(
                f"w_bits {list(self.w_bits)} not valid; choose integer bits from 2, 3, 4, 5, 6, 8"
            )
        if self.a_bits not in (4, 6, 8, 16, 32):
            raise ValueError(f"a_bits={self.a_bits!r} not valid; choose 4, 6, 8, 16 or 32")
        if self.budget_kind not in BUDGET_KINDS:
            raise ValueError(f"budget_kind={self.budget_kind!r} not valid; choose one of {BUDGET_KINDS}")
        if self.probe_samples < 8:
            raise ValueError(f"probe_samples must be >= 8, got {self.probe_samples}")


@dataclass
class ServeResult:
    """One served batch: logits (NaN rows for rejected inputs), chosen rung per input (-1: rejected), the
    rungs each input ran, its cost, rejection reasons, and timings."""

    logits: torch.Tensor
    rung: np.ndarray
    cost: np.ndarray
    runs: list[list[int]]
    errors: dict[int, str]
    inference_s: float
    overhead_s: float

    @property
    def overhead_fraction(self) -> float:
        return self.overhead_s / self.inference_s if self.inference_s > 0 else math.nan


class ResourceManager:
    """Global budget over the stream: picks the policy knob meeting ``budget`` on calibration data, then, while
    serving, overrides decisions that would lift the running average cost over the budget."""

    def __init__(self, budget: float, rung_costs: np.ndarray, *, slack: float = 0.0) -> None:
        self.budget = float(budget)
        self.rung_costs = np.asarray(rung_costs, dtype=float)
        if self.budget < self.rung_costs.min() * (1 - 1e-9):
            raise RuntimeBudgetError(
                f"budget {budget:.6g} is below the cheapest precision map's cost {self.rung_costs.min():.6g}; "
                f"feasible budgets are >= {self.rung_costs.min():.6g} (the cheapest precision map)"
            )
        self.slack = slack
        self.spent = 0.0
        self.served = 0
        self.overrides = 0

    def reset(self) -> None:
        self.spent, self.served, self.overrides = 0.0, 0, 0

    def admit(self, wanted: int, extra_cost: float = 0.0) -> int:
        """The rung an input may run: ``wanted`` or the most expensive cheaper rung keeping the running average
        within budget (never below the cheapest)."""
        limit = self.budget * (1 + self.slack) * (self.served + 1) - self.spent - extra_cost
        r = wanted
        while r > 0 and self.rung_costs[r] > limit:
            r -= 1
        if r != wanted:
            self.overrides += 1
        return r

    def charge(self, cost: float) -> None:
        self.spent += cost
        self.served += 1


def _policy(name: str | Policy, seed: int) -> Policy:
    if isinstance(name, Policy):
        return name
    table = {"static": StaticPolicy, "rule": RulePolicy, "cascade": CascadePolicy}
    if name == "learned":
        return LearnedPolicy(seed=seed)
    if name not in table:
        raise ValueError(f"policy={name!r} not valid; choose one of {POLICIES}")
    return table[name]()


class AdaptiveRuntime:
    """Per-input dynamic precision under a budget. See the module docstring.

    ``model``: a float model (never modified). ``policy``: ``static``, ``rule``, ``learned``, ``cascade`` or a
    :class:`Policy`. ``budget``: average cost per input in ``config.budget_kind`` units (BOPs, bits, or ms on
    ``profile``). ``calib``: calibration inputs (tensor or loader) for the probe engine, the policy and the
    resource manager.
    """

    def __init__(
        self,
        model: nn.Module,
        policy: str | Policy,
        budget: float,
        profile: Any = None,
        *,
        calib: Any,
        config: RuntimeConfig | None = None,
        smodel: SwitchableModel | None = None,
        probe: ProbeResult | None = None,
        calib_logits: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
    ) -> None:
        self.config = cfg = config or RuntimeConfig()
        if cfg.budget_kind == "latency" and profile is None:
            raise ValueError("budget_kind='latency' needs a hardware profile (profile=...)")
        x_cal = _inputs(calib)
        self.input_shape = tuple(x_cal.shape[1:])
        self.smodel = smodel or SwitchableModel(
            model, w_bits=cfg.w_bits, a_bits=cfg.a_bits, groups=cfg.groups
        )
        self.coster = MapCoster(model, self.smodel, x_cal[:1], profile)
        self.analyzer = InputAnalyzer()
        gen = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(x_cal.shape[0], generator=gen)[: cfg.probe_samples]
        self.probe = probe or ProbeEngine(self.smodel, self.coster).run(x_cal[idx], kind=cfg.budget_kind)
        self.ladder = self.probe.ladder
        self.rung_costs = np.array([self.coster.value(m, cfg.budget_kind) for m in self.ladder])
        self.policy = _policy(policy, cfg.seed)
        self.budget = float(budget)
        # calibration: per-rung logits of the calibration inputs, agreement with FP32, the probe and escalation
        # rungs, the policy's fit, and the knob that meets the budget
        if calib_logits is None:
            calib_logits = self.calibration_logits(x_cal)
        ref, logits = calib_logits
        self.num_classes = int(ref.shape[1])
        target = ref.argmax(1)
        self.agreement = np.array([float((lg.argmax(1) == target).float().mean()) for lg in logits])
        k = len(self.ladder)
        good = np.nonzero(self.agreement >= cfg.probe_agreement)[0]
        self.probe_rung = int(good[0]) if len(good) else k - 1
        self.escalation_rung = self.probe_rung  # the cascade calibrates both below
        floor = (
            self.rung_costs[self.probe_rung]
            if isinstance(self.policy, LearnedPolicy)
            else float(self.rung_costs.min())
        )
        if self.budget < floor * (1 - 1e-9):
            raise RuntimeBudgetError(
                f"budget {budget:.6g} ({cfg.budget_kind}) is below the cheapest cost policy "
                f"{self.policy.name!r} can run, {floor:.6g}; feasible budgets are >= {floor:.6g}"
            )
        self.manager = ResourceManager(budget, self.rung_costs)
        self.policy.fit(self, x_cal, logits, ref)
        if isinstance(self.policy, CascadePolicy):
            self.probe_rung, self.escalation_rung, self.knob = self._calibrate_cascade(logits, target)
        else:
            self.knob = self._calibrate_knob(x_cal, logits)

    def calibration_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """FP32 logits and each rung's logits of ``x`` (shareable between runtimes with the same ladder)."""
        ref = self.smodel.run(x, {g: 32 for g in self.smodel.group_names})
        return ref, [self.smodel.run(x, m) for m in self.ladder]

    @property
    def min_cost(self) -> float:
        return float(self.rung_costs[self.probe_rung] if self.policy.uses_probe_rung else self.rung_costs[0])

    # -- selection -----------------------------------------------------------------------------------------
    def _simulate(
        self, scores: np.ndarray, logits: list[torch.Tensor], knob: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(final rung, cost) per input for ``knob`` without the stream override (calibration)."""
        k = len(self.ladder)
        c = self.rung_costs
        p, h = self.probe_rung, self.escalation_rung
        if isinstance(self.policy, CascadePolicy):
            esc = scores < knob
            rung = np.where(esc, h, p)
            cost = c[p] + np.where(esc, c[h], 0.0)
            return rung, cost
        if isinstance(self.policy, LearnedPolicy):
            rung = self.policy.choose(scores, knob, k, low=p)
            return rung, c[p] + np.where(rung != p, c[rung], 0.0)
        rung = self.policy.choose(scores, knob, k)
        return rung, c[rung]

    def _calibrate_cascade(self, logits: list[torch.Tensor], target: torch.Tensor) -> tuple[int, int, float]:
        """(probe rung, escalation rung, margin threshold) with the best calibration agreement with FP32 whose
        expected cost per input stays within the budget."""
        c = self.rung_costs
        k = len(self.ladder)
        preds = [lg.argmax(1) for lg in logits]
        margins = [_output_features(lg)[:, 1] for lg in logits]
        best = None
        for p in range(k):
            if c[p] > self.budget * (1 + 1e-9):
                break
            ok_p = (preds[p] == target).cpu().numpy()
            # ties (common on a small calibration set) go to the triple that uses more of the budget
            use = 1e-3 * c[p] / self.budget
            if best is None or ok_p.mean() + use > best[0]:
                best = (ok_p.mean() + use, p, p, 0.0)  # no escalation at all
            order = np.argsort(margins[p], kind="stable")
            for h in range(p + 1, k):
                room = (self.budget - c[p]) / c[h]
                n_esc = int(np.floor(min(1.0, room) * len(order) + 1e-9))
                if n_esc <= 0:
                    continue
                ok_h = (preds[h] == target).cpu().numpy()
                # escalating the n least confident inputs; the threshold is the margin of the last one escalated
                gain = np.cumsum(ok_h[order][:n_esc].astype(int) - ok_p[order][:n_esc].astype(int))
                j = int(np.argmax(gain))
                agree = (
                    ok_p.mean()
                    + gain[j] / len(order)
                    + 1e-3 * (c[p] + (j + 1) / len(order) * c[h]) / self.budget
                )
                if agree > best[0] + 1e-12:
                    tau = float(margins[p][order][j]) + 1e-7
                    best = (agree, p, h, tau)
        if best is None:
            raise RuntimeBudgetError(
                f"budget {self.budget:.6g} is below every rung's cost (min {c.min():.6g})"
            )
        return best[1], best[2], best[3]

    def _calibrate_knob(self, x: torch.Tensor, logits: list[torch.Tensor]) -> float:
        k = len(self.ladder)
        probe = logits[self.probe_rung] if self.policy.uses_probe_rung else None
        scores = self.policy.scores(self, x, probe)
        if isinstance(self.policy, StaticPolicy):
            ok = [r for r in range(k) if self.rung_costs[r] <= self.budget * (1 + 1e-9)]
            return float(max(ok))
        if isinstance(self.policy, (LearnedPolicy, CascadePolicy)):
            lo, hi = 0.0, 1.0  # higher threshold -> more expensive
        else:
            lo, hi = -2.0 * k, 2.0 * k
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            _, cost = self._simulate(scores, logits, mid)
            if cost.mean() <= self.budget:
                lo = mid
            else:
                hi = mid
        return lo

    # -- serving ---------------------------------------------------------------------------------------------
    def _validate(self, x: Any) -> tuple[torch.Tensor, dict[int, str]]:
        if not isinstance(x, torch.Tensor):
            raise RuntimeInputError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
        if not torch.is_floating_point(x):
            raise RuntimeInputError(f"inputs must be floating point, got dtype {x.dtype}")
        if x.dim() == len(self.input_shape):
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != self.input_shape:
            raise RuntimeInputError(
                f"inputs of shape {tuple(x.shape)} do not match the model's input shape "
                f"[N, {', '.join(map(str, self.input_shape))}]"
            )
        x = x.float()
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
        errors = {int(i): "input contains NaN or Inf values" for i in torch.nonzero(bad).flatten()}
        return x, errors

    def serve(self, x: Any) -> ServeResult:
        """Run a batch: each valid input gets the rung its policy chose, capped by the resource manager.
        Inputs with NaN / Inf values are rejected (NaN logits, rung -1, a reason in ``errors``); the others are
        served. A batch of the wrong shape or dtype raises :class:`RuntimeInputError`."""
        t0 = time.perf_counter()
        x, errors = self._validate(x)
        n = x.shape[0]
        idx = np.array([i for i in range(n) if i not in errors], dtype=int)
        k = len(self.ladder)
        c = self.rung_costs
        rung = np.full(n, -1)
        cost = np.zeros(n)
        runs: list[list[int]] = [[] for _ in range(n)]
        infer = 0.0
        logits = None
        if len(idx):
            xs = x[torch.from_numpy(idx)]
            probe_logits = None
            p, h = self.probe_rung, self.escalation_rung
            if self.policy.uses_probe_rung:
                ti = time.perf_counter()
                probe_logits = self.smodel.run(xs, self.ladder[p])
                infer += time.perf_counter() - ti
            scores = self.policy.scores(self, xs, probe_logits)
            m = len(idx)
            if isinstance(self.policy, CascadePolicy):
                # what this batch may spend so that the stream's average stays within the budget
                allowance = self.budget * (self.manager.served + m) - self.manager.spent
                logits = probe_logits.clone()
                level = np.full(m, p)
                spent = np.full(m, c[p])
                total = float(spent.sum())
                unsure = np.nonzero(scores < self.knob)[0]
                take = []
                for a in unsure[np.argsort(scores[unsure], kind="stable")]:  # least confident first
                    if h != p and total + c[h] <= allowance + 1e-9:
                        take.append(a)
                        total += c[h]
                    else:
                        self.manager.overrides += 1
                for j in range(m):
                    runs[idx[j]].append(p)
                if take:
                    sel = torch.from_numpy(np.array(take, dtype=int))
                    ti = time.perf_counter()
                    logits[sel] = self.smodel.run(xs[sel], self.ladder[h])
                    infer += time.perf_counter() - ti
                    level[take] = h
                    spent[take] += c[h]
                    for a in take:
                        runs[idx[a]].append(h)
                for j in range(m):
                    self.manager.charge(float(spent[j]))
                rung[idx], cost[idx] = level, spent
            else:
                if isinstance(self.policy, LearnedPolicy):
                    wanted = self.policy.choose(scores, self.knob, k, low=p)
                else:
                    wanted = self.policy.choose(scores, self.knob, k)
                chosen = np.empty(m, dtype=int)
                probe_cost = c[p] if self.policy.uses_probe_rung else 0.0
                for j in range(m):
                    if self.policy.uses_probe_rung:
                        r = int(wanted[j])
                        if r != p:
                            admitted = self.manager.admit(r, probe_cost)  # counts an override itself
                            r = admitted if admitted > p else p  # else keep the probe rung's answer
                        chosen[j] = r
                        spent = probe_cost + (c[r] if r != p else 0.0)
                    else:
                        chosen[j] = self.manager.admit(int(wanted[j]))
                        spent = c[chosen[j]]
                    self.manager.charge(float(spent))
                    cost[idx[j]] = spent
                    runs[idx[j]] = ([p] if probe_cost and chosen[j] != p else []) + [int(chosen[j])]
                rung[idx] = chosen
                logits = None
                for r in np.unique(chosen):
                    sel = torch.from_numpy(np.nonzero(chosen == r)[0])
                    if probe_logits is not None and r == p:
                        out = probe_logits[sel]
                    else:
                        ti = time.perf_counter()
                        out = self.smodel.run(xs[sel], self.ladder[int(r)])
                        infer += time.perf_counter() - ti
                    if logits is None:
                        logits = torch.empty(m, out.shape[1])
                    logits[sel] = out
        out_logits = torch.full((n, self.num_classes), math.nan)
        if logits is not None:
            out_logits[torch.from_numpy(idx)] = logits
        total_s = time.perf_counter() - t0
        return ServeResult(out_logits, rung, cost, runs, errors, infer, total_s - infer)


def _inputs(data: Any) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data.float()
    parts = [b[0] if isinstance(b, (tuple, list)) else b for b in data]
    if not parts:
        raise ValueError("calibration data is empty")
    return torch.cat(parts).float()


def _labels(data: Any) -> torch.Tensor:
    return torch.cat([b[1] for b in data])


stack_inputs = _inputs
"""All inputs of a tensor or a loader of ``(x, y)`` batches, as one float tensor."""
stack_labels = _labels
"""All labels of a loader of ``(x, y)`` batches, as one tensor."""


# ============================================================================================ shifted data


def shift_inputs(x: torch.Tensor, kind: str, *, seed: int = 0, severity: float = 1.0) -> torch.Tensor:
    """A distribution-shifted copy of ``x``: ``noise`` (Gaussian, 0.3 x severity of the input std), ``contrast``
    (halved around the mean, x severity), ``blur`` (3x3 Gaussian), or ``clean``."""
    if kind == "clean":
        return x.clone()
    if kind == "noise":
        gen = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same noise on every device
        return x + 0.3 * severity * x.std() * torch.randn(x.shape, generator=gen).to(x.device)
    if kind == "contrast":
        m = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        return m + (x - m) * (1 - 0.5 * severity)
    if kind == "blur":
        k = torch.tensor([1.0, 2.0, 1.0], device=x.device)
        k2 = (k[:, None] * k[None, :]) / 16.0
        c = x.shape[1]
        w = k2.expand(c, 1, 3, 3).contiguous()
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), w, groups=c)
    raise ValueError(f"shift {kind!r} not valid; choose one of {SHIFTS}")


# ============================================================================================ evaluation


@dataclass
class RuntimeEvaluation:
    """Static vs dynamic precision at several budgets on clean and shifted data (``table``: one row per data,
    budget, method), plus the static maps considered and the probe result."""

    table: pd.DataFrame
    static_maps: pd.DataFrame
    probe: ProbeResult
    info: dict[str, Any] = field(default_factory=dict)


def static_candidates(
    smodel: SwitchableModel, coster: MapCoster, probe: ProbeResult, kind: str, *, max_allocations: int = 40
) -> list[dict[str, int]]:
    """Static maps: the ladder, the uniform maps, and HAWQ-style allocations (least summed per-group downstream
    KL at a cost) - enumerated exactly over the groups' bit choices, Pareto-pruned, ``max_allocations`` of them
    spread evenly along the cost axis."""
    import itertools

    kl = {(r.group, r.w_bits): r.downstream_kl for r in probe.table.itertuples()}
    groups = smodel.group_names
    maps = [dict(m) for m in probe.ladder]
    maps += [{g: b for g in groups} for b in smodel.w_bits]
    combos = list(itertools.product(smodel.w_bits, repeat=len(groups)))
    if len(combos) <= 20000:
        pts = []
        for combo in combos:
            m = dict(zip(groups, combo, strict=True))
            pts.append((coster.value(m, kind), sum(kl[(g, b)] for g, b in m.items()), m))
        pts.sort(key=lambda t: (t[0], t[1]))
        best = math.inf
        front = []
        for _cost, err, m in pts:
            if err < best - 1e-12:
                best = err
                front.append(m)
        if len(front) > max_allocations:
            pick = np.unique(np.linspace(0, len(front) - 1, max_allocations).round().astype(int))
            front = [front[i] for i in pick]
        maps += front
    seen, out = set(), []
    for m in maps:
        key = tuple(m[g] for g in groups)
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


def evaluate_runtime(
    task: Any,
    *,
    budgets: Sequence[float] = (0.4, 0.5, 0.6),
    policies: Sequence[str] = ("rule", "learned", "cascade"),
    shifts: Sequence[str] = SHIFTS,
    config: RuntimeConfig | None = None,
    profile: Any = None,
    split: str = "test",
    oracle: bool = True,
    serve_batch: int = 64,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> RuntimeEvaluation:
    """Accuracy and average cost per input of dynamic precision (each policy) against the best static precision
    map of equal or lower average cost, for each budget and data variant.

    ``budgets`` are fractions of the all-``max(w_bits)`` map's cost. The static comparison is optimistic for
    static: among all static candidates (:func:`static_candidates`) the one with the best accuracy **on the
    evaluated data** within the dynamic run's average cost. Also reported: the cheapest static map reaching the
    dynamic accuracy, and the BOPs saving of dynamic against it. The data is served as a stream of batches of
    ``serve_batch`` inputs. With ``oracle`` a row per data variant gives the headroom: every input on the cheapest
    rung from which all dearer rungs keep the FP32 answer (it knows each answer, so no runnable policy matches
    its cost; its accuracy is that of keeping the FP32 answers).

    ``device``: where the switchable model runs (``cpu``, ``cuda``, ``cuda:N``; None: where ``task.model``
    is); the model is copied there, the data stays on the CPU and is moved batch by batch, logits come back to
    the CPU. Sampling (probe subset, noise shift) uses CPU generators, so every device sees the same inputs. A
    device this machine lacks raises :class:`workbench.devices.DeviceError` before any work.
    """
    from tqdm.auto import tqdm

    task = on_device(task, device)
    cfg = config or RuntimeConfig()
    x_cal = _inputs(task.calib_loader)
    smodel = SwitchableModel(task.model, w_bits=cfg.w_bits, a_bits=cfg.a_bits, groups=cfg.groups)
    coster = MapCoster(task.model, smodel, x_cal[:1], profile)
    gen = torch.Generator().manual_seed(cfg.seed)
    probe = ProbeEngine(smodel, coster).run(
        x_cal[torch.randperm(x_cal.shape[0], generator=gen)[: cfg.probe_samples]], kind=cfg.budget_kind
    )
    top = coster.value({g: max(cfg.w_bits) for g in smodel.group_names}, cfg.budget_kind)
    statics = static_candidates(smodel, coster, probe, cfg.budget_kind)
    loader = task.loader(split)
    x_test, y_test = _inputs(loader), _labels(loader)
    rows, static_rows = [], []
    runtimes: dict[tuple[str, float], Any] = {}
    ladder_logits = (
        smodel.run(x_cal, {g: 32 for g in smodel.group_names}),
        [smodel.run(x_cal, m) for m in probe.ladder],
    )
    bar = tqdm(
        total=len(shifts) * len(budgets) * len(policies), desc="runtime evaluation", disable=not progress
    )
    for shift in shifts:
        xs = shift_inputs(x_test, shift, seed=cfg.seed)
        static_acc = []
        for m in statics:
            pred = smodel.run(xs, m).argmax(1)
            acc = float((pred == y_test).float().mean())
            c = coster(m)
            static_acc.append((coster.value(m, cfg.budget_kind), acc, m))
            static_rows.append(
                {
                    "data": shift,
                    "map": _map_str(m),
                    "cost": static_acc[-1][0],
                    "bops": c.bops,
                    "avg_bits": c.avg_bits,
                    "accuracy": acc,
                }  # fmt: skip
            )
        ref_logits = smodel.run(xs, {g: 32 for g in smodel.group_names})
        fp32_acc = float((ref_logits.argmax(1) == y_test).float().mean())
        if oracle:
            # the headroom: each input on the cheapest rung from which every dearer rung keeps the FP32 answer
            rung_logits = [smodel.run(xs, m) for m in probe.ladder]
            need = _needed_rung(rung_logits, ref_logits)
            pred = torch.stack([rung_logits[r][i].argmax() for i, r in enumerate(need)])
            costs = np.array([coster.value(m, cfg.budget_kind) for m in probe.ladder])[need]
            acc_o = float((pred == y_test).float().mean())
            reach = [t for t in static_acc if t[1] >= acc_o - 1e-12]
            cheapest = min(reach, key=lambda t: t[0]) if reach else None
            rows.append(
                {
                    "data": shift,
                    "budget_fraction": math.nan,
                    "budget": math.nan,
                    "policy": "oracle",
                    "accuracy": acc_o,
                    "avg_cost": float(costs.mean()),
                    "avg_bops": float(np.mean([coster(probe.ladder[r]).bops for r in need])),
                    "avg_weight_bits": float(np.mean([coster(probe.ladder[r]).avg_bits for r in need])),
                    "overhead_fraction": math.nan,
                    "overrides": 0,
                    "static_accuracy": math.nan,
                    "static_cost": math.nan,
                    "static_map": "",
                    "static_cost_at_equal_accuracy": cheapest[0] if cheapest else math.nan,
                    "cost_saving_at_equal_accuracy": 1 - float(costs.mean()) / cheapest[0]
                    if cheapest
                    else math.nan,
                    "fp32_accuracy": fp32_acc,
                    "note": "upper bound: knows per input which rung keeps the FP32 answer (not a runnable policy)",
                }
            )
        for frac in budgets:
            budget = frac * top
            for pol in policies:
                key = (pol, budget)
                if key not in runtimes:
                    try:
                        runtimes[key] = AdaptiveRuntime(
                            task.model, pol, budget, profile, calib=x_cal, config=cfg, smodel=smodel, probe=probe,
                            calib_logits=ladder_logits,
                        )  # fmt: skip
                    except RuntimeBudgetError as e:
                        runtimes[key] = e
                if isinstance(runtimes[key], RuntimeBudgetError):
                    rows.append({"data": shift, "budget_fraction": frac, "budget": budget, "policy": pol,
                                 "accuracy": math.nan, "note": str(runtimes[key])})  # fmt: skip
                    bar.update(1)
                    continue
                rt = runtimes[key]
                rt.manager.reset()
                res = _serve_stream(rt, xs, serve_batch)
                acc = float((res.logits.argmax(1) == y_test).float().mean())
                rung_bops = np.array([coster(m).bops for m in rt.ladder])
                rung_bits = np.array([coster(m).avg_bits for m in rt.ladder])
                served = [rs for rs in res.runs if rs]  # rejected inputs (none here) ran nothing
                bops = float(np.mean([sum(rung_bops[r] for r in rs) for rs in served]))
                bits = float(np.mean([rung_bits[rs[-1]] for rs in served]))
                avg_cost = float(res.cost[res.rung >= 0].mean())
                within = [t for t in static_acc if t[0] <= avg_cost * (1 + 1e-9)]
                best_static = max(within, key=lambda t: (t[1], -t[0])) if within else None
                reach = [t for t in static_acc if t[1] >= acc - 1e-12]
                cheapest_equal = min(reach, key=lambda t: t[0]) if reach else None
                rows.append(
                    {
                        "data": shift,
                        "budget_fraction": frac,
                        "budget": budget,
                        "policy": pol,
                        "accuracy": acc,
                        "avg_cost": avg_cost,
                        "avg_bops": bops,
                        "avg_weight_bits": bits,
                        "overhead_fraction": res.overhead_fraction,
                        "overrides": rt.manager.overrides,
                        "static_accuracy": best_static[1] if best_static else math.nan,
                        "static_cost": best_static[0] if best_static else math.nan,
                        "static_map": _map_str(best_static[2]) if best_static else "",
                        "static_cost_at_equal_accuracy": cheapest_equal[0] if cheapest_equal else math.nan,
                        "cost_saving_at_equal_accuracy": (
                            1 - avg_cost / cheapest_equal[0] if cheapest_equal else math.nan
                        ),
                        "fp32_accuracy": fp32_acc,
                        "note": "",
                    }
                )
                bar.update(1)
    bar.close()
    return RuntimeEvaluation(
        table=pd.DataFrame(rows),
        static_maps=pd.DataFrame(static_rows),
        probe=probe,
        info={"budget_kind": cfg.budget_kind, "top_cost": top, "ladder": [_map_str(m) for m in probe.ladder]},
    )


def _serve_stream(rt: AdaptiveRuntime, x: torch.Tensor, batch: int) -> ServeResult:
    """Serve ``x`` as a stream of batches of ``batch`` inputs (the manager sees them in order) and join the
    results."""
    parts = [rt.serve(x[i : i + batch]) for i in range(0, x.shape[0], batch)]
    errors = {}
    for k, part in enumerate(parts):
        errors.update({k * batch + i: e for i, e in part.errors.items()})
    return ServeResult(
        logits=torch.cat([p.logits for p in parts]),
        rung=np.concatenate([p.rung for p in parts]),
        cost=np.concatenate([p.cost for p in parts]),
        runs=[r for p in parts for r in p.runs],
        errors=errors,
        inference_s=sum(p.inference_s for p in parts),
        overhead_s=sum(p.overhead_s for p in parts),
    )


def _map_str(m: Mapping[str, int]) -> str:
    return " ".join(f"{g}:{b}" for g, b in m.items())
