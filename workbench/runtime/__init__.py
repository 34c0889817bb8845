"""Runtime adaptation: per-input precision under a resource budget (seeds 002, 003, 004).

The pieces, in the order an input meets them:

- :class:`SwitchableModel` - the model with BatchNorm folded and every quantizable layer (Conv1d, Conv2d, Linear,
  Embedding) holding, per candidate bit width, the quantization core's fake-quant twin (built with
  :func:`~workbench.quant.quantize_model`) with its weight quantized once (per output channel), so switching
  precision recomputes nothing; activations are quantized by the core's ``ActQuantizer`` with one dynamic range
  per input (``a_granularity='per_sample'``) at ``a_bits`` (an Embedding is weight-only). Layers are grouped (seed
  003's layer grouping: ``"stage"`` = top-level module, ``"layer"`` = each layer, or explicit groups) and a
  **precision map** gives each group its weight bits; :meth:`SwitchableModel.plan` is the QuantPlan a map runs
  (:func:`runtime_spec` per layer), and :meth:`SwitchableModel.from_plans` builds the model from QuantPlans.
- :class:`ProbeEngine` - seed 003's sensitivity analysis engine: on a small calibration subset it runs forward
  passes with one group at each candidate precision and measures the local error (the group's own output) and
  the downstream error (KL divergence of the model's output); then it builds a **ladder** of precision maps from
  the all-high map down to the all-low map, each step lowering the group whose step costs the least downstream
  error per BOP saved, measured on the whole model (feedback: upstream precision is chosen by the error it causes
  downstream, not by its local error). The ladder as QuantPlans, one per rung, is ``ProbeResult.ladder_plans`` and
  :attr:`AdaptiveRuntime.ladder_plans`; ``AdaptiveRuntime(..., plans=[...])`` serves a ladder of QuantPlans.
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

On real kernels (issue 26): :class:`DeployedLadder` deploys a ladder of QuantPlans once each through a
:class:`Deployer` adapter (default :func:`torch_ao_deployer`: torch.ao int8 static / bf16 / fp32; a rung that cannot
deploy falls back to its simulation with the reason named); :class:`ManagedRuntime` serves a stream
(``serve(iterable)`` yields a :class:`StreamItem` per item: output, rung, measured seconds, or a rejection reason)
with a :class:`LatencyManager` stepping rungs down / up against an :class:`SLOConfig` (p95 over a window, CPU
load and memory through :class:`PsutilMachine`; clock and readings injectable), the average-cost budget of
:class:`ResourceManager` kept, and optionally a :class:`ConfidenceCascade` (cheap rung's margin / confidence /
entropy, threshold calibrated to a target agreement with the top rung).

:func:`evaluate_runtime` compares dynamic precision with the best static precision map of equal average cost on
clean and shifted data (noise, contrast, blur); :class:`RuntimeFactory` builds the parts runtimes share once.

Parts (each imports only those above it): ``config`` (constants, errors, :class:`RuntimeConfig`), ``data``
(stacking loaders, shifted inputs), ``switchable``, ``costs``, ``probe``, ``analysis`` (input statistics),
``policies``, ``manager``, ``result``, ``engine`` (:class:`AdaptiveRuntime`), ``factory``, ``evaluate``; and for
real kernels ``deployed`` (the ladder), ``machine`` (readings, the latency manager), ``cascade``, ``stream``.
"""

from workbench.runtime.analysis import InputAnalyzer
from workbench.runtime.cascade import SCORES, ConfidenceCascade, confidence
from workbench.runtime.config import (
    BUDGET_KINDS,
    POLICIES,
    SHIFTS,
    RuntimeBudgetError,
    RuntimeConfig,
    RuntimeInputError,
)
from workbench.runtime.costs import MapCost, MapCoster
from workbench.runtime.data import _inputs, _labels, shift_inputs, stack_inputs, stack_labels
from workbench.runtime.deployed import (
    ON_FAIL,
    DeployedLadder,
    Deployer,
    Deployment,
    Rung,
    simulated_deployer,
    torch_ao_deployer,
)
from workbench.runtime.engine import AdaptiveRuntime
from workbench.runtime.evaluate import evaluate_runtime, static_candidates
from workbench.runtime.factory import RuntimeFactory
from workbench.runtime.machine import (
    LatencyManager,
    Machine,
    MachineReading,
    PsutilMachine,
    RungMove,
    SLOConfig,
    idle_machine,
)
from workbench.runtime.manager import ResourceManager
from workbench.runtime.policies import CascadePolicy, LearnedPolicy, Policy, RulePolicy, StaticPolicy
from workbench.runtime.probe import ProbeEngine, ProbeResult
from workbench.runtime.result import SUMMARY_COLUMNS, RuntimeEvaluation, ServeResult
from workbench.runtime.stream import ManagedRuntime, StreamItem, stream_summary, stream_table
from workbench.runtime.switchable import SwitchableLayer, SwitchableModel, frozen_twin, runtime_spec

__all__ = [
    "BUDGET_KINDS",
    "ON_FAIL",
    "POLICIES",
    "SCORES",
    "SHIFTS",
    "SUMMARY_COLUMNS",
    "AdaptiveRuntime",
    "CascadePolicy",
    "ConfidenceCascade",
    "DeployedLadder",
    "Deployer",
    "Deployment",
    "InputAnalyzer",
    "LatencyManager",
    "LearnedPolicy",
    "Machine",
    "MachineReading",
    "ManagedRuntime",
    "MapCost",
    "MapCoster",
    "Policy",
    "ProbeEngine",
    "ProbeResult",
    "PsutilMachine",
    "ResourceManager",
    "RulePolicy",
    "Rung",
    "RungMove",
    "RuntimeBudgetError",
    "RuntimeConfig",
    "RuntimeEvaluation",
    "RuntimeFactory",
    "RuntimeInputError",
    "SLOConfig",
    "ServeResult",
    "StaticPolicy",
    "StreamItem",
    "SwitchableLayer",
    "SwitchableModel",
    "_inputs",
    "_labels",
    "confidence",
    "evaluate_runtime",
    "frozen_twin",
    "idle_machine",
    "runtime_spec",
    "shift_inputs",
    "simulated_deployer",
    "stack_inputs",
    "stack_labels",
    "static_candidates",
    "stream_summary",
    "stream_table",
    "torch_ao_deployer",
]
