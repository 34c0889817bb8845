"""Post-training quantization (PTQ) steps, one registry: ``cle`` (cross-layer equalization, before the swap),
``ranges`` (per-layer range choice), ``gptq`` (Hessian-guided rounding, one solve per layer), ``adaround`` (learned
rounding of low-bit weights) and ``bias_correction`` (after calibration, in that order). Run them through ``quantize_model(..., ptq=[...])``; see
:mod:`workbench.quant.ptq.registry` for the stages and the skip / error rules.
"""

from workbench.quant.ptq.adaround import AdaRoundConfig
from workbench.quant.ptq.bias_correction import BiasCorrectionConfig
from workbench.quant.ptq.cle import CleConfig, cle_pairs
from workbench.quant.ptq.gptq import GptqConfig
from workbench.quant.ptq.ranges import RangesConfig
from workbench.quant.ptq.registry import (
    PTQ_STEPS,
    PtqContext,
    PtqRun,
    PtqSkipWarning,
    PtqStep,
    parse_ptq,
    ptq_step_names,
    register_ptq_step,
    resolve_ptq,
)

DEFAULT_PTQ: tuple[str, ...] = ("bias_correction",)
"""The steps ``quantize`` runs unless ``--ptq`` says otherwise, chosen by measurement (README, "Post-training
quantization"): bias correction costs two forward passes over the calibration samples and lifts W8A8 per-channel
EfficientNet-Lite1 from logit cosine 0.975 to 0.991. ``quantize_model`` itself runs no step unless asked."""

__all__ = [
    "DEFAULT_PTQ",
    "PTQ_STEPS",
    "AdaRoundConfig",
    "BiasCorrectionConfig",
    "CleConfig",
    "GptqConfig",
    "PtqContext",
    "PtqRun",
    "PtqSkipWarning",
    "PtqStep",
    "RangesConfig",
    "cle_pairs",
    "parse_ptq",
    "ptq_step_names",
    "register_ptq_step",
    "resolve_ptq",
]
