"""The built-in metrics: the output-error probes (``output_mse``, ``output_kl``), the accuracy-drop probe
(``acc_drop``), the Hutchinson Hessian trace with HAWQ-V2 ``omega`` (``hessian``) and the Fisher score
(``fisher``), registered on import."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from workbench.quant.modules import quantize_weight
from workbench.sensitivity.curvature import fisher_scores
from workbench.sensitivity.probes import SensitivityContext
from workbench.sensitivity.registry import MetricOutput, OutputMetric, SensitivityMetric, register_metric


@register_metric
class OutputMSE(OutputMetric):
    """Mean squared error of the logits against FP32 on the calibration batches."""

    name = "output_mse"
    description = "MSE of the final logits against FP32 (calibration data)"

    def score(self, reference: Tensor, quantized: Tensor, targets: Tensor) -> float:
        return float((quantized.double() - reference.double()).pow(2).mean())


@register_metric
class OutputKL(OutputMetric):
    """KL(FP32 softmax || quantized softmax) of the logits, averaged over calibration samples."""

    name = "output_kl"
    description = "KL(FP32 softmax || quantized softmax), mean over samples (calibration data)"

    def score(self, reference: Tensor, quantized: Tensor, targets: Tensor) -> float:
        log_p = F.log_softmax(reference.double(), dim=1)
        log_q = F.log_softmax(quantized.double(), dim=1)
        return float(F.kl_div(log_q, log_p, log_target=True, reduction="batchmean"))


@register_metric
class AccuracyDrop(OutputMetric):
    """Top-1 accuracy drop (percentage points) on the validation split against the FP32 model: the metric loss
    (FP32 metric minus metric) of labelled top-1 accuracy on the chosen output."""

    name = "acc_drop"
    split = "val"
    description = "top-1 accuracy drop in percentage points (validation data)"
    needs_labels = True

    def score(self, reference: Tensor, quantized: Tensor, targets: Tensor) -> float:
        ref = (reference.argmax(dim=1) == targets).double().mean()
        q = (quantized.argmax(dim=1) == targets).double().mean()
        return float(100.0 * (ref - q))


@register_metric
class HessianMetric(SensitivityMetric):
    """Hutchinson Hessian trace per layer weight and the HAWQ-V2 sensitivity
    ``omega = (trace / numel) * ||W - Q(W)||^2`` (the average trace, as in HAWQ-V2 eq. 5: the expected
    second-order loss change of a perturbation of that norm spread evenly over the weights).

    Table rows: ``hessian_trace`` (kind "layer") and ``omega`` (kind "weight", per bits and granularity).
    Per-layer columns: hessian_trace, hessian_trace_per_param, hutchinson_iters. Per-channel rows:
    ``hessian_trace`` (w_bits 32) and ``omega`` per weight bits with per-channel quantization
    (``(channel trace / params per channel) * ||W_c - Q(W_c)||^2``).
    """

    name = "hessian"
    kind = "weight"
    needs_labels = True
    produces = ("omega", "hessian_trace")
    layer_outputs = ("hessian_trace",)
    description = "Hutchinson Hessian trace and HAWQ-V2 omega = trace / numel * ||W - Q(W)||^2"

    def compute(self, ctx: SensitivityContext) -> MetricOutput:
        hutch = ctx.hutchinson()
        cfg = ctx.config
        out = MetricOutput()
        for info in ctx.layers:
            name = info.name
            w = ctx.weight(name)
            trace = hutch.trace[name]
            mean_trace = trace / w.numel()
            out.add(name, trace, metric="hessian_trace")
            out.add_layer_stat(name, "hessian_trace", trace)
            out.add_layer_stat(name, "hessian_trace_per_param", mean_trace)
            out.add_layer_stat(name, "hutchinson_iters", hutch.iterations[name])
            for gran in cfg.granularities:
                for b in cfg.w_bits:
                    err = float((quantize_weight(w, cfg.weight_spec(b, gran)) - w).double().pow(2).sum())
                    out.add(name, mean_trace * err, metric="omega", kind="weight", granularity=gran, w_bits=b)
            if cfg.per_channel:
                ch_trace = hutch.channel_trace[name]
                ch_mean = ch_trace / (w.numel() // w.shape[0])
                out.add_channels(name, ch_trace, metric="hessian_trace")
                for b in cfg.w_bits:
                    diff = quantize_weight(w, cfg.weight_spec(b, "per_channel")) - w
                    err_c = diff.double().pow(2).reshape(w.shape[0], -1).sum(dim=1).cpu().numpy()
                    out.add_channels(name, ch_mean * err_c, metric="omega", w_bits=b)
        return out


@register_metric
class FisherMetric(SensitivityMetric):
    """Mean over calibration samples of ``||dL/dy||^2`` of each layer's output ``y`` (cross-entropy loss).

    Table rows: ``fisher`` (kind "layer"); per-layer column ``fisher``; per-channel rows ``fisher`` (the same
    sum restricted to one output channel; the channels add up to the layer's value).
    """

    name = "fisher"
    kind = "layer"
    description = "mean over samples of the squared gradient norm of the layer output"
    needs_labels = True

    def compute(self, ctx: SensitivityContext) -> MetricOutput:
        layer_names = [info.name for info in ctx.layers]
        total, per_channel = fisher_scores(
            ctx.float_model, layer_names, ctx.batches("calib"), output_key=ctx.output_key
        )
        out = MetricOutput()
        for name in layer_names:
            out.add(name, total[name], metric="fisher")
            out.add_layer_stat(name, "fisher", total[name])
            if ctx.config.per_channel:
                out.add_channels(name, per_channel[name], metric="fisher")
        return out
