"""Quantization-aware training (QAT) of a QuantPlan on a Task.

:func:`train_qat` quantizes a copy of ``task.model`` with the plan (:func:`~workbench.quant.quantize_model`,
calibrated on the task's calibration data) and fine-tunes it through the fake-quant modules:

- straight-through estimator for weights and activations (gradient 1 inside the integer range, 0 outside);
- ``scale_mode="lsq"``: LSQ learned step sizes (Esser et al., 2020) for the weight quantizers, one step per grid
  row (per output channel for ``per_channel`` plans: learnable per-channel scales, per group, or per tensor), and
  for the static activation quantizers, each step-size gradient multiplied by the published
  ``g = 1 / sqrt(N * Qp)`` (``N`` elements share the step: a row of the weight grid, or one sample's
  activation; ``Qp`` the grid's largest code). ``"frozen"`` keeps the calibrated scales;
- BatchNorm folded into the quantized convolutions (``bn="fold"``, as ``quantize_model`` does) or kept with
  frozen running statistics (``bn="freeze"``); every BatchNorm left in the model uses its running statistics;
- knowledge distillation from the FP32 model (``distill_weight``, ``temperature``);
- a quantization loss term (``quant_loss_weight``): each layer's ``||W - Q(W)||^2 / ||W||^2`` averaged with the
  layers' weight counts, pulling weights towards their grid and (with LSQ) steps towards low error;
- a granularity penalty (``bit_penalty``): every planned integer layer gets a softmax over ``bit_candidates``
  that mixes its weight fake-quantized at each candidate width, and the loss adds ``bit_penalty`` times the
  expected average weight bits (weighted by parameters). After the relaxed phase (``relax_fraction`` of the
  epochs) each layer takes its most likely width: the rest of the run fine-tunes that discrete plan, which
  :meth:`QuantPlan.validate` accepts and every other stage can use.

Checkpoints (``checkpoint=PATH``) are written atomically every epoch (and when ``max_steps`` stops a run): model,
optimizer, phase, history, best state, RNG, a hash of the config, plan and model, and a SHA-256 of the whole
content. ``resume=True`` continues from one and gives the same result as an uninterrupted run; a checkpoint of
another config or model, or one truncated, edited or corrupted (its content hash no longer matches), is refused
with the file and the mismatch named, and never overwritten unless ``overwrite=True``. The caller's model is
never modified.
"""

from workbench.qat.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    _read_checkpoint,
    model_fingerprint,
)
from workbench.qat.config import BN_MODES, MAX_EPOCHS, OPTIMIZERS, SCALE_MODES, SCHEDULES, QATConfig, QATError
from workbench.qat.inputs import plans_from_search
from workbench.qat.losses import distillation_loss, quantization_loss
from workbench.qat.lsq import LearnedScale, LearnedScales, learn_scales, lsq_grad_factor
from workbench.qat.mixed_bits import MixedBitWeightQuantizer, expected_weight_bits, learned_plan
from workbench.qat.result import HISTORY_COLUMNS, QATResult, qat_table
from workbench.qat.timing import StepTimes, compare_step_times
from workbench.qat.train import train_qat, train_steps
from workbench.qat.trainer import _Trainer

__all__ = [
    "BN_MODES",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "HISTORY_COLUMNS",
    "MAX_EPOCHS",
    "OPTIMIZERS",
    "SCALE_MODES",
    "SCHEDULES",
    "LearnedScale",
    "LearnedScales",
    "MixedBitWeightQuantizer",
    "QATConfig",
    "QATError",
    "QATResult",
    "StepTimes",
    "_Trainer",
    "_read_checkpoint",
    "compare_step_times",
    "distillation_loss",
    "expected_weight_bits",
    "learn_scales",
    "learned_plan",
    "lsq_grad_factor",
    "model_fingerprint",
    "plans_from_search",
    "qat_table",
    "quantization_loss",
    "train_qat",
    "train_steps",
]
