"""Per-layer probing: the quantizable layers (:class:`LayerInfo`), single-layer probes (:class:`Probe`) and what
metrics see during one analysis (:class:`SensitivityContext`: private model copies, one with BatchNorm folded
for the probes, data, FP32 references, the probe engine and the shared Hutchinson estimate)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from workbench.quant.inputs import call_model, move_inputs, primary_output, take_inputs
from workbench.quant.introspect import layer_costs
from workbench.quant.modules import ActQuantizer
from workbench.quant.spec import QuantSpec
from workbench.quant.swap import conv_bn_pairs, fold_batchnorm, set_module
from workbench.sensitivity.batches import _device, _labelled, _take
from workbench.sensitivity.config import SensitivityConfig
from workbench.sensitivity.curvature import HutchinsonResult, hutchinson_trace
from workbench.sensitivity.graph import _GraphRunner
from workbench.sensitivity.registry import MetricOutput, OutputMetric
from workbench.sensitivity.schema import FLOAT_BITS, SPLITS
from workbench.tasks.finite import check_finite_output, model_label
from workbench.tasks.task import TaskLike


@dataclass(frozen=True)
class LayerInfo:
    """A quantizable layer: module path, type, forward-order index and static cost."""

    name: str
    op_type: str
    depth: int
    params: int
    weight_params: int
    out_channels: int
    macs: int


@dataclass(frozen=True)
class Probe:
    """One single-layer probe: ``spec`` applied to ``layer`` only."""

    layer: str
    kind: str
    granularity: str
    w_bits: int
    a_bits: int
    spec: QuantSpec


class SensitivityContext:
    """What metrics see during one analysis: private model copies, layers, data, FP32 references, shared
    estimators (the Hutchinson estimate is computed once and shared). Built by :func:`analyze_sensitivity`.

    ``float_model``: unfolded float copy (Hessian, Fisher, weights); ``probe_model``: copy with BatchNorm folded
    (probes). Both are in eval mode; the task's model is never touched. ``output_key``: the task's choice of
    output tensor (None: :func:`~workbench.quant.inputs.primary_output`'s default); every logits, reference and
    loss of the analysis uses it.
    """

    def __init__(
        self, task: TaskLike, config: SensitivityConfig, *, calib: list[tuple[Any, Tensor | None]]
    ) -> None:
        self.task = task
        self.config = config
        self.output_key: str | int | None = task.output_key
        self.float_model = copy.deepcopy(task.model).eval()
        self.device = _device(self.float_model)
        self._batches: dict[str, list[tuple[Any, Tensor | None]]] = {"calib": calib}
        self._references: dict[str, Tensor] = {}
        self._probe_model: nn.Module | None = None
        self._runner: _GraphRunner | None = None
        self._hutchinson: HutchinsonResult | None = None
        self.folded_bn: list[tuple[str, str]] = []
        example = move_inputs(take_inputs(calib[0][0], 1), self.device)
        costs = layer_costs(self.float_model, example)  # insertion order = forward order
        if not costs:
            raise ValueError(
                f"{type(task.model).__name__} has no quantizable layers (Conv1d / Conv2d / Linear / Embedding) reached by the forward pass"
            )
        self.layers: list[LayerInfo] = [
            LayerInfo(
                name=c.name,
                op_type=c.op_type,
                depth=i,
                params=c.params,
                weight_params=c.weight_params,
                out_channels=c.out_channels,
                macs=c.macs,
            )
            for i, c in enumerate(costs.values())
        ]
        if config.include or config.exclude:
            chosen = set(config.selects([info.name for info in self.layers]))
            self.layers = [info for info in self.layers if info.name in chosen]

    # -- data -------------------------------------------------------------------------------------------
    def batches(self, split: str) -> list[tuple[Any, Tensor | None]]:
        """``(inputs, targets)`` batches of ``split`` ("calib": the first ``calib_batches``; "val":
        ``val_batches``, which must have targets); targets are None for calibration data without labels."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        if split not in self._batches:
            loader = self.task.val_loader
            if loader is None:
                raise ValueError("the task has no val_loader (needed by the acc_drop metric)")
            self._batches[split] = _labelled(_take(loader, self.config.val_batches), "the validation split")
        return self._batches[split]

    def targets(self, split: str) -> Tensor | None:
        """Concatenated targets of ``split`` (None when its batches have none)."""
        ys = [y for _, y in self.batches(split)]
        return None if any(y is None for y in ys) else torch.cat(ys).cpu()  # type: ignore[arg-type]

    def weight(self, layer: str) -> Tensor:
        """The float (unfolded) weight of ``layer``, detached."""
        return self.float_model.get_submodule(layer).weight.detach()

    # -- models -----------------------------------------------------------------------------------------
    @property
    def probe_model(self) -> nn.Module:
        """A second private copy with every foldable Conv2d + BatchNorm2d pair folded (as quantize_model does);
        a torch.fx GraphModule when the model can be traced (so probes can reuse upstream activations)."""
        if self._probe_model is None:
            model = copy.deepcopy(self.float_model).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # untraceable models keep their BatchNorm
                self.folded_bn = conv_bn_pairs(model)
            fold_batchnorm(model, self.folded_bn)
            self._runner = (
                _GraphRunner.build(model, [info.name for info in self.layers])
                if self.config.probe_cache_mb > 0
                else None
            )
            self._probe_model = self._runner.gm.eval() if self._runner is not None else model
        return self._probe_model

    @torch.no_grad()
    def logits(self, model: nn.Module, split: str) -> Tensor:
        """Concatenated logits (the :func:`~workbench.quant.inputs.primary_output`) of ``model`` over the batches
        of ``split`` (CPU float32)."""
        return torch.cat(
            [
                self.output(call_model(model, move_inputs(x, self.device))).float().cpu()
                for x, _ in self.batches(split)
            ]
        )

    def output(self, out: Any) -> Tensor:
        """The tensor of a model output that the analysis scores (``output_key``'s, else the primary one)."""
        return primary_output(out, key=self.output_key)

    def reference(self, split: str) -> Tensor:
        """FP32 logits of the (folded) probe model on ``split``; NaN / Inf in them raise
        :class:`~workbench.tasks.finite.NonFiniteOutputError` naming the model and the split."""
        if split not in self._references:
            self._references[split] = self.logits(self.probe_model, split)
            label = model_label(self.task.model, self.task.model, str(getattr(self.task, "name", "?")))
            check_finite_output(self._references[split], model=label, split=split)
        return self._references[split]

    # -- probes -----------------------------------------------------------------------------------------
    def probes(self) -> list[Probe]:
        """Every single-layer probe: weight bits x granularities, then activation bits, per layer."""
        cfg = self.config
        out = []
        for info in self.layers:
            for gran in cfg.granularities:
                for b in cfg.w_bits:
                    out.append(Probe(info.name, "weight", gran, b, FLOAT_BITS, cfg.weight_spec(b, gran)))
            if info.op_type == "Embedding":  # weight-only: its input is token ids, never quantized
                continue
            for b in cfg.a_bits:
                out.append(
                    Probe(info.name, "activation", "per_tensor", FLOAT_BITS, b, cfg.activation_spec(b))
                )
        return out

    @torch.no_grad()
    def _act_quantizers(self, probes: Sequence[Probe]) -> dict[tuple[str, int], ActQuantizer]:
        """Activation quantizers of the activation probes, calibrated in one pass over the calibration batches
        on the layers' FP32 inputs (what :func:`workbench.quant.calibrate` would see for a one-layer plan)."""
        model = self.probe_model
        quantizers: dict[tuple[str, int], ActQuantizer] = {}
        for p in probes:
            if p.kind == "activation":
                q = ActQuantizer(p.spec, seed=self.config.seed).to(self.device)
                if q.needs_calibration:
                    q.start_observing()
                quantizers[(p.layer, p.a_bits)] = q
        observing = [(layer, q) for (layer, _), q in quantizers.items() if q.observing]
        if not observing:
            return quantizers
        by_layer: dict[str, list[ActQuantizer]] = {}
        for layer, q in observing:
            by_layer.setdefault(layer, []).append(q)

        def hook(qs: list[ActQuantizer]):
            def pre_hook(_m: nn.Module, inputs: tuple) -> None:
                for q in qs:
                    q(inputs[0])

            return pre_hook

        handles = [
            model.get_submodule(layer).register_forward_pre_hook(hook(qs)) for layer, qs in by_layer.items()
        ]
        try:
            for x, _ in self.batches("calib"):
                call_model(model, move_inputs(x, self.device))
        finally:
            for h in handles:
                h.remove()
        for _, q in observing:
            q.finish_observing()
        return quantizers

    def run_probes(self, metrics: Sequence[OutputMetric]) -> MetricOutput:
        """Run every probe once and score it with each output metric (forward passes shared). On a traced
        model the probes run streamed (:meth:`_GraphRunner.stream`), in chunks whose outputs fit
        ``probe_cache_mb``."""
        from tqdm.auto import tqdm

        out = MetricOutput()
        if not metrics:
            return out
        splits = sorted({m.split for m in metrics})
        refs = {s: self.reference(s) for s in splits}
        targets = {s: self.targets(s) for s in splits}
        probes = self.probes()
        act_q = self._act_quantizers(probes)
        per_probe = sum(refs[s].numel() * refs[s].element_size() for s in splits)
        size = max(1, int(self.config.probe_cache_mb * 2**20 // max(per_probe, 1)))
        names = "+".join(m.name for m in metrics)
        with tqdm(total=len(probes), desc=f"probes ({names})", leave=False,
                  disable=not self.config.progress) as bar:  # fmt: skip
            for start in range(0, len(probes), size):
                chunk = probes[start : start + size]
                outputs = self._probe_outputs(chunk, splits, act_q, tick=bar.update)
                for p, quantized in zip(chunk, outputs):
                    for m in metrics:
                        value = m.score(refs[m.split], quantized[m.split], targets[m.split])
                        out.add(
                            p.layer, value, metric=m.name, kind=p.kind, granularity=p.granularity,
                            w_bits=p.w_bits, a_bits=p.a_bits,
                        )  # fmt: skip
        return out

    def _twin(self, p: Probe, act_q: dict[tuple[str, int], ActQuantizer]) -> nn.Module:
        twin = _twin(self.probe_model.get_submodule(p.layer), p.spec, seed=self.config.seed)
        if p.kind == "activation":
            twin.a_quant = act_q[(p.layer, p.a_bits)]
        return twin

    @torch.no_grad()
    def _probe_outputs(
        self,
        probes: Sequence[Probe],
        splits: Sequence[str],
        act_q: dict[tuple[str, int], ActQuantizer],
        *,
        tick: Callable[[float], Any] = lambda n: None,
    ) -> list[dict[str, Tensor]]:
        """Each probe's logits on each split: the whole model per probe, or (traced models) one streamed FP32
        pass per batch that re-runs each probed layer's downstream cone with the probe swapped in. ``tick(n)``:
        progress, ``n`` probes' worth of work done (fractions while streaming)."""
        model = self.probe_model
        runner = self._runner
        if runner is None:
            outs = []
            for p in probes:
                original = model.get_submodule(p.layer)
                set_module(model, p.layer, self._twin(p, act_q))
                try:
                    outs.append({s: self.logits(model, s) for s in splits})
                finally:
                    set_module(model, p.layer, original)
                tick(1)
            return outs
        by_layer: dict[str, list[int]] = {}
        for k, p in enumerate(probes):
            by_layer.setdefault(p.layer, []).append(k)
        pieces: list[dict[str, list[Tensor]]] = [{s: [] for s in splits} for _ in probes]
        share = 1.0 / sum(len(self.batches(s)) for s in splits)  # one probe on one batch, in probes' worth
        for s in splits:
            for x, _ in self.batches(s):
                got: dict[int, Any] = {}

                def visit(layer: str, env: dict, got: dict[int, Any] = got) -> None:
                    for k in by_layer.get(layer, ()):
                        original = model.get_submodule(layer)
                        set_module(model, layer, self._twin(probes[k], act_q))
                        try:
                            got[k] = runner.run_cone(layer, env)
                        finally:
                            set_module(model, layer, original)
                        tick(share)

                fp32 = runner.stream(move_inputs(x, self.device), visit)
                for k in range(len(probes)):
                    value = got.get(k)
                    pieces[k][s].append(self.output(fp32 if value is None else value).float().cpu())
        return [{s: torch.cat(v[s]) for s in splits} for v in pieces]

    # -- shared estimators --------------------------------------------------------------------------------
    def hutchinson(self) -> HutchinsonResult:
        """The Hutchinson estimate over all layers (computed once per analysis)."""
        if self._hutchinson is None:
            cfg = self.config
            self._hutchinson = hutchinson_trace(
                self.float_model,
                [info.name for info in self.layers],
                self.batches("calib"),
                tol=cfg.hutchinson_tol,
                max_iter=cfg.hutchinson_max_iter,
                min_iter=cfg.hutchinson_min_iter,
                window=cfg.hutchinson_window,
                seed=cfg.seed,
                progress=cfg.progress,
                output_key=self.output_key,
            )
        return self._hutchinson


def _twin(module: nn.Module, spec: QuantSpec, *, seed: int) -> nn.Module:
    from workbench.quant.modules import quant_twin

    return quant_twin(module, spec, seed=seed).eval()
