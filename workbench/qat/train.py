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

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from workbench import distributed, tracking
from workbench.devices import on_device
from workbench.quant import PlanError, QuantPlan, QuantSpec, quant_modules, quantize_model, save_packed
from workbench.quant.inputs import call_model, move_inputs, primary_output, split_batch
from workbench.quant.introspect import quantizable_layers
from workbench.quant.modules import ActQuantizer, WeightQuantizer
from workbench.quant.spec import INT_BITS

__all__ = [
    "BN_MODES",
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

SCALE_MODES: tuple[str, ...] = ("frozen", "lsq")
BN_MODES: tuple[str, ...] = ("fold", "freeze")
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")
MAX_EPOCHS = 1000
CHECKPOINT_FORMAT = "workbench-qat-checkpoint"
CHECKPOINT_VERSION = 2  # 2 adds ``content_sha256``; version 1 checkpoints (no content hash) still resume
_SCALE_EPS = 1e-8
# Fields that do not change what a run computes: a checkpoint written with other values still resumes.
_RUN_FIELDS = ("checkpoint", "resume", "overwrite", "max_steps")


class QATError(ValueError):
    """A QAT config, task or checkpoint that cannot be used. The message names the bad value."""


def _choices(values: Iterable[Any]) -> str:
    return ", ".join(repr(v) for v in values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ============================================================================================ config


@dataclass(frozen=True, kw_only=True)
class QATConfig:
    """Knobs of quantization-aware training; the defaults fine-tune a digits model in a few epochs.

    Optimisation: ``optimizer`` (AdamW as :func:`workbench.models.train_model`, or SGD with ``momentum``), ``lr``
    in (0, 1], ``weight_decay`` (weights only, never scales or bit logits), ``schedule`` (per-step cosine decay
    to zero over ``epochs``, or constant), ``batch_size`` (None: the task's train loader's). Learned scales take
    ``scale_lr`` times their calibrated value as learning rate (Adam's step is about its learning rate, whatever
    the gradient's size, so a step size of 0.002 needs a learning rate far below a weight's); the bit logits
    are trained by plain SGD (momentum 0.9) at ``bit_lr``, so that a larger penalty moves them further.

    Quantization: ``scale_mode`` (``"frozen"`` or ``"lsq"``), ``learn_act_scales`` (LSQ also for static
    activation ranges), ``bn`` (``"fold"`` or ``"freeze"``), ``calib_batches`` (None: all).

    Loss: ``distill_weight`` in [0, 1] mixes cross-entropy with the distillation loss
    (``(1 - w) CE + w T^2 KL``) at ``temperature``; ``quant_loss_weight`` >= 0; ``bit_penalty`` >= 0 with
    ``bit_candidates`` (integer widths), ``relax_fraction`` (share of the epochs, rounded up, spent relaxed) and
    ``bit_init`` (initial logit of the plan's own width; the others start at 0).

    Run: ``epochs`` in [1, 1000], ``patience`` (stop after that many epochs without a better validation
    accuracy; None: never), ``restore_best`` (end with the weights of the best validation epoch), ``seed``,
    ``checkpoint`` (a file path), ``resume``, ``overwrite`` (start over on an existing checkpoint, and replace
    an existing packed file), ``max_steps`` (stop after that many optimizer steps in all, a checkpoint is
    written there; None: no limit).
    """

    epochs: int = 8
    lr: float = 5e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    batch_size: int | None = None
    scale_mode: str = "lsq"
    learn_act_scales: bool = True
    scale_lr: float = 1e-2
    bn: str = "fold"
    calib_batches: int | None = None
    distill_weight: float = 0.0
    temperature: float = 4.0
    quant_loss_weight: float = 0.0
    bit_penalty: float = 0.0
    bit_candidates: tuple[int, ...] = (2, 3, 4, 6, 8)
    bit_lr: float = 10.0
    bit_init: float = 2.0
    relax_fraction: float = 0.5
    patience: int | None = None
    restore_best: bool = True
    seed: int = 0
    checkpoint: str | None = None
    resume: bool = False
    overwrite: bool = False
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.bit_candidates, list):
            object.__setattr__(self, "bit_candidates", tuple(self.bit_candidates))
        if isinstance(self.checkpoint, Path):
            object.__setattr__(self, "checkpoint", str(self.checkpoint))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`QATError` naming the first bad field, its value and the valid range or choices."""
        if not _is_int(self.epochs) or not 1 <= self.epochs <= MAX_EPOCHS:
            raise QATError(f"QATConfig.epochs={self.epochs!r} must be an int in [1, {MAX_EPOCHS}]")
        if not _is_number(self.lr) or not 0 < self.lr <= 1:
            raise QATError(f"QATConfig.lr={self.lr!r} must be a number in (0, 1]")
        for name, lo, hi in (
            ("momentum", 0.0, 1.0),
            ("weight_decay", 0.0, 1.0),
            ("distill_weight", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if not _is_number(value) or not lo <= value <= hi:
                raise QATError(f"QATConfig.{name}={value!r} must be a number in [{lo:g}, {hi:g}]")
        for name, options in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("scale_mode", SCALE_MODES),
            ("bn", BN_MODES),
        ):
            value = getattr(self, name)
            if value not in options:
                raise QATError(f"QATConfig.{name}={value!r} is not valid; choose one of {_choices(options)}")
        for name in ("batch_size", "calib_batches", "patience", "max_steps"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise QATError(f"QATConfig.{name}={value!r} must be None or an int >= 1")
        if not _is_number(self.scale_lr) or not 0 < self.scale_lr <= 1:
            raise QATError(f"QATConfig.scale_lr={self.scale_lr!r} must be a number in (0, 1]")
        if not _is_number(self.bit_lr) or not 0 < self.bit_lr <= 100:
            raise QATError(f"QATConfig.bit_lr={self.bit_lr!r} must be a number in (0, 100]")
        if not _is_number(self.temperature) or not 0 < self.temperature <= 100:
            raise QATError(f"QATConfig.temperature={self.temperature!r} must be a number in (0, 100]")
        for name in ("quant_loss_weight", "bit_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= 1e6:
                raise QATError(f"QATConfig.{name}={value!r} must be a number in [0, 1e6] (0 = off)")
        cands = self.bit_candidates
        if (
            not isinstance(cands, tuple)
            or len(cands) < 2
            or any(not _is_int(b) or b not in INT_BITS for b in cands)
            or len(set(cands)) != len(cands)
        ):
            raise QATError(
                f"QATConfig.bit_candidates={cands!r} must hold at least two distinct integer widths "
                f"from {_choices(INT_BITS)}"
            )
        if not _is_number(self.relax_fraction) or not 0 < self.relax_fraction <= 1:
            raise QATError(f"QATConfig.relax_fraction={self.relax_fraction!r} must be a number in (0, 1]")
        if not _is_number(self.bit_init) or abs(self.bit_init) > 20:
            raise QATError(f"QATConfig.bit_init={self.bit_init!r} must be a number in [-20, 20]")
        for name in ("learn_act_scales", "restore_best", "resume", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise QATError(f"QATConfig.{name}={getattr(self, name)!r} must be True or False")
        if not _is_int(self.seed):
            raise QATError(f"QATConfig.seed={self.seed!r} must be an int")
        if self.checkpoint is not None and (not isinstance(self.checkpoint, str) or not self.checkpoint):
            raise QATError(f"QATConfig.checkpoint={self.checkpoint!r} must be None or a file path")
        if self.resume and self.checkpoint is None:
            raise QATError("QATConfig.resume=True needs checkpoint=PATH (the file to continue from)")

    @property
    def relax_epochs(self) -> int:
        """Epochs spent with relaxed bit widths (0 without a bit penalty)."""
        if self.bit_penalty <= 0:
            return 0
        return min(self.epochs, max(1, math.ceil(self.epochs * self.relax_fraction)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bit_candidates"] = list(self.bit_candidates)
        return d

    def with_(self, **changes: Any) -> QATConfig:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)


# ============================================================================================ loss terms


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch (Hinton et al.).

    Exactly 0 when the logits are equal; the ``T^2`` keeps its gradient on the scale of cross-entropy's.
    """
    t = float(temperature)
    log_s = F.log_softmax(student_logits / t, dim=1)
    log_t = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * (t * t)


def _weight_parts(mod: nn.Module) -> list[tuple[Tensor, nn.Module]]:
    """(float tensor, its quantizer) pairs of a fake-quant layer whose weights are integer-quantized."""
    if mod.spec.rank_ratio is not None:
        parts = [(mod.lowrank_a, mod.w_quant), (mod.lowrank_b, mod.w_quant_b)]
    elif mod.spec.sparsity > 0:
        parts = [(mod.weight * mod.weight_mask, mod.w_quant)]
    else:
        parts = [(mod.weight, mod.w_quant)]
    return [(t, q) for t, q in parts if isinstance(q, MixedBitWeightQuantizer) or q.is_integer]


def quantization_loss(model: nn.Module) -> Tensor:
    """Distance between every quantized layer's float weights and their quantized values.

    Per layer ``||W - Q(W)||^2 / ||W||^2`` (a noise-to-signal ratio; ``Q`` sees ``W`` detached, so the gradient
    pulls ``W`` towards its grid point and, with learned steps, the step towards lower error), averaged over
    layers with their weight counts as weights. 0 for a model without integer-quantized weights.
    """
    total = None
    count = 0
    for mod in quant_modules(model).values():
        for w, q in _weight_parts(mod):
            err = (w - q(w.detach())).pow(2).sum() / w.detach().pow(2).sum().clamp_min(1e-12)
            n = w.numel()
            total = err * n if total is None else total + err * n
            count += n
    if total is None:
        return torch.zeros((), device=next((p.device for p in model.parameters()), None))
    return total / count


# ============================================================================================ relaxed bits


class MixedBitWeightQuantizer(nn.Module):
    """A weight quantizer with relaxed bit width: softmax(logits)-weighted mix of one quantizer per candidate.

    Each candidate is a :class:`WeightQuantizer` of the layer's spec at that width, calibrated on the weight
    with the spec's observer. :meth:`choice` is the most likely width (ties: the narrowest).
    """

    def __init__(self, spec: QuantSpec, weight: Tensor, candidates: tuple[int, ...], *, init: float) -> None:
        super().__init__()
        self.spec = spec
        self.candidates = tuple(sorted(candidates))
        self.quantizers = nn.ModuleList()
        for b in self.candidates:
            wq = WeightQuantizer(spec.with_(w_bits=b), weight.shape, device=weight.device)
            wq.calibrate(weight.detach())
            self.quantizers.append(wq)
        logits = torch.zeros(len(self.candidates), device=weight.device)
        if spec.w_bits in self.candidates:
            logits[self.candidates.index(spec.w_bits)] = float(init)
        self.logits = nn.Parameter(logits)
        self.register_buffer(
            "bit_values", torch.tensor(self.candidates, dtype=torch.float32, device=weight.device), False
        )

    is_integer = True
    enabled = True

    def probs(self) -> Tensor:
        return torch.softmax(self.logits, dim=0)

    def expected_bits(self) -> Tensor:
        return (self.probs() * self.bit_values).sum()

    def choice(self) -> int:
        return self.candidates[int(torch.argmax(self.logits.detach()))]

    def forward(self, weight: Tensor) -> Tensor:
        p = self.probs()
        out = p[0] * self.quantizers[0](weight)
        for k in range(1, len(self.quantizers)):
            out = out + p[k] * self.quantizers[k](weight)
        return out

    def extra_repr(self) -> str:
        probs = ", ".join(f"{b}:{p:.2f}" for b, p in zip(self.candidates, self.probs().tolist()))
        return f"bits~{{{probs}}}"


def _relaxable(spec: QuantSpec) -> bool:
    return spec.channel_bits is None and spec.rank_ratio is None and spec.w_bits in INT_BITS


def _relax(model: nn.Module, candidates: tuple[int, ...], init: float) -> list[str]:
    """Give every planned integer layer (not low-rank, no per-channel bits) a relaxed weight quantizer."""
    relaxed = []
    for name, mod in quant_modules(model).items():
        if not _relaxable(mod.spec):
            continue
        w = mod.weight * mod.weight_mask if mod.spec.sparsity > 0 else mod.weight
        mod.w_quant = MixedBitWeightQuantizer(mod.spec, w.detach(), candidates, init=init)
        relaxed.append(name)
    return relaxed


def _mixed(model: nn.Module) -> dict[str, MixedBitWeightQuantizer]:
    return {
        n: m.w_quant
        for n, m in quant_modules(model).items()
        if isinstance(m.w_quant, MixedBitWeightQuantizer)
    }


def _discretize(model: nn.Module, bits: Mapping[str, int]) -> None:
    """Replace each relaxed quantizer by its candidate at ``bits[layer]`` (keeping its scales)."""
    modules = quant_modules(model)
    for name, b in bits.items():
        mod = modules[name]
        mixed = mod.w_quant
        if not isinstance(mixed, MixedBitWeightQuantizer):
            raise QATError(f"layer {name!r} has no relaxed bit width to fix")
        if b not in mixed.candidates:
            raise QATError(f"layer {name!r}: {b} bits is not a candidate ({list(mixed.candidates)})")
        wq = mixed.quantizers[mixed.candidates.index(b)]
        spec = mod.spec.with_(w_bits=int(b))
        mod.w_quant = wq
        mod.spec = spec
        mod.a_quant.spec = spec
    plan = getattr(model, "quant_plan", None)
    if isinstance(plan, QuantPlan):
        model.quant_plan = QuantPlan({n: modules[n].spec if n in bits else s for n, s in plan.items()})


def learned_plan(model: nn.Module, plan: QuantPlan) -> QuantPlan:
    """``plan`` with every relaxed layer of ``model`` at its most likely width (a discrete, valid plan)."""
    choices = {n: q.choice() for n, q in _mixed(model).items()}
    return QuantPlan({n: s.with_(w_bits=choices[n]) if n in choices else s for n, s in plan.items()})


def _layer_weight_counts(model: nn.Module) -> dict[str, int]:
    modules = dict(model.named_modules())
    return {n: int(modules[n].weight.numel()) for n in quantizable_layers(model)}


def expected_weight_bits(model: nn.Module, plan: QuantPlan, counts: Mapping[str, int]) -> Tensor:
    """Average weight bits of a (possibly relaxed) quantized model, weighted by each layer's weight count.

    ``counts``: weights per quantizable layer of the float model (layers outside the plan count as 32 bits,
    as in :meth:`QuantPlan.summary`); relaxed layers contribute their expected width (differentiable).
    """
    mixed = _mixed(model)
    total = sum(counts.values())
    const = 0.0
    for name, n in counts.items():
        if name not in mixed:
            spec = plan.get(name)
            const += n * (32.0 if spec is None else spec.mean_weight_bits())
    out = torch.tensor(const, device=next((p.device for p in model.parameters()), None))
    for name, q in mixed.items():
        out = out + counts[name] * q.expected_bits()
    return out / total


# ============================================================================================ LSQ


def lsq_grad_factor(qmax: Tensor | float, n: int) -> Tensor:
    """The published LSQ step-size gradient scale ``1 / sqrt(n * Qp)`` (``n`` values share the step)."""
    return 1.0 / torch.sqrt(torch.as_tensor(qmax, dtype=torch.float32) * float(n))


def _to_parameter(module: nn.Module, name: str) -> nn.Parameter:
    t = module._buffers.pop(name)
    module._non_persistent_buffers_set.discard(name)
    p = nn.Parameter(t.detach().clone())
    module.register_parameter(name, p)
    return p


def _to_buffer(module: nn.Module, name: str) -> None:
    p = module._parameters.pop(name)
    module.register_buffer(name, p.detach().clone())


def _act_numel(model: nn.Module, example: Tensor) -> dict[ActQuantizer, int]:
    """Values per sample each activation quantizer sees (one forward pass of ``example``)."""
    seen: dict[ActQuantizer, int] = {}
    handles = []
    for m in model.modules():
        if isinstance(m, ActQuantizer):

            def hook(mod: nn.Module, args: tuple, _seen=seen) -> None:
                _seen[mod] = int(args[0][0].numel())

            handles.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_model(model, example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


@dataclass
class LearnedScale:
    """One learned step size: its quantizer, the Parameter, its LSQ gradient factor and calibrated magnitude."""

    module: nn.Module
    param: nn.Parameter
    grad_factor: Tensor
    init: float


@dataclass
class LearnedScales:
    """Step sizes turned into Parameters by :func:`learn_scales`; :meth:`close` turns them back into buffers."""

    items: list[LearnedScale] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list, repr=False)

    @property
    def params(self) -> list[nn.Parameter]:
        return [item.param for item in self.items]

    def clamp_(self) -> None:
        """Keep every step size positive (after an optimizer step)."""
        with torch.no_grad():
            for item in self.items:
                item.param.clamp_(min=_SCALE_EPS)

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        for item in self.items:
            if isinstance(item.module._parameters.get("scale"), nn.Parameter):
                _to_buffer(item.module, "scale")
        self.items, self.hooks = [], []


def learn_scales(model: nn.Module, example_input: Tensor, *, act: bool = True) -> LearnedScales:
    """LSQ: turn the step sizes of a quantized model's integer weight quantizers (one per grid row: per channel,
    per group or per tensor) and, with ``act``, of its static activation quantizers into Parameters (in place).

    Each step's gradient is multiplied by the published ``g = 1 / sqrt(N * Qp)`` (a hook on the Parameter, the
    same as LSQ's ``grad_scale`` in the forward pass): ``N`` values share the step (a weight-grid row, one
    sample's activation or one channel of it), ``Qp`` is the grid's largest code. ``example_input`` (a batch of
    one is enough) measures the activation sizes.
    """
    out = LearnedScales()
    weight_quantizers = [m for m in model.modules() if isinstance(m, WeightQuantizer) and m.is_integer]
    act_quantizers: list[ActQuantizer] = []
    numel: dict[ActQuantizer, int] = {}
    if act:
        numel = _act_numel(model, example_input)
        act_quantizers = [m for m in model.modules() if isinstance(m, ActQuantizer) and m.needs_calibration]

    def add(m: nn.Module, g: Tensor) -> None:
        p = _to_parameter(m, "scale")
        out.hooks.append(p.register_hook(lambda grad, g=g: grad * g))
        out.items.append(LearnedScale(m, p, g, float(p.detach().abs().mean())))

    for m in weight_quantizers:
        add(m, lsq_grad_factor(m.qmax, _grid_cols(m)).to(m.scale.device))
    for m in act_quantizers:
        if m not in numel:  # never ran (calibration would have refused it): leave it frozen
            continue
        n = numel[m] // (m.scale.numel() if m.per_channel else 1)
        add(m, lsq_grad_factor(m.qmax.reshape(()), max(n, 1)).to(m.scale.device))
    return out


def _grid_cols(wq: WeightQuantizer) -> int:
    """Values per grid row (one scale) of a weight quantizer (a per-group row counts its padding)."""
    spec = wq.spec
    if spec.granularity == "per_group":
        return int(spec.group_size)
    return max(1, math.prod(wq.weight_shape) // int(wq.scale.shape[0]))


# ============================================================================================ trainer


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _split(batch: Any) -> tuple[Any, Tensor]:
    """``(inputs, labels)`` of a training batch; inputs may be a tensor, a tuple or a dict of tensors."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise QATError(
            f"train batches must be (inputs, labels) tuples (inputs: a tensor, tuple or dict), got "
            f"{type(batch).__name__}"
        )
    x, y = split_batch(batch)
    if not isinstance(y, Tensor):
        raise QATError(f"train batch labels must be a tensor, got {type(y).__name__}")
    return x, y


class _Trainer:
    """One QAT model, its optimizer and loss terms; ``step`` is one optimizer step."""

    def __init__(
        self,
        model: nn.Module,
        config: QATConfig,
        *,
        plan: QuantPlan,
        teacher: nn.Module | None,
        counts: Mapping[str, int],
        example: Tensor,
        relaxed: bool,
        output_key: str | int | None = None,
    ) -> None:
        self.model = model
        self.output_key = output_key  # the output tensor the losses use (None: the primary output)
        self.config = config
        self.plan = plan
        self.teacher = teacher
        self.counts = counts
        self.relaxed = relaxed
        self.learned = LearnedScales()
        if config.scale_mode == "lsq":
            self.learned = learn_scales(model, example, act=config.learn_act_scales)
        learned_ids = {id(p) for p in self.learned.params}
        logits = [q.logits for q in _mixed(model).values()] if relaxed else []
        logit_ids = {id(p) for p in logits}
        for q in _mixed(model).values():  # logits of a discretized or frozen run are not trained
            q.logits.requires_grad_(relaxed)
        weights = [
            p
            for p in model.parameters()
            if p.requires_grad and id(p) not in learned_ids and id(p) not in logit_ids
        ]
        groups = [{"params": weights, "weight_decay": config.weight_decay, "base_lr": config.lr}]
        for item in self.learned.items:
            lr = config.scale_lr * max(item.init, _SCALE_EPS)
            groups.append({"params": [item.param], "weight_decay": 0.0, "base_lr": lr})
        for g in groups:
            g["lr"] = g["base_lr"]
        if config.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=config.lr)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
        # Plain SGD for the bit logits: Adam would normalise the penalty's gradient away, so the penalty's
        # strength would not matter (only its sign); with SGD a larger penalty moves the logits further.
        self.bit_optimizer = torch.optim.SGD(logits, lr=config.bit_lr, momentum=0.9) if logits else None
        self.device = next(model.parameters()).device
        # In a process group, forward / backward go through a DDP replica (gradients averaged over ranks)
        self.dist = distributed.current()
        self.forward_model: nn.Module = model
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def set_lr(self, factor: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor

    def train_mode(self) -> None:
        self.model.train()
        _freeze_bn(self.model)

    def _share(self, mean: Tensor, out: Tensor, n_local: int, n_global: int) -> Tensor:
        """This rank's share of a batch-mean loss: summed over ranks and averaged by DDP (divided by the world
        size), the shares give the mean over the global batch, whatever the slice sizes."""
        if not self.dist.active:
            return mean
        if n_local == 0:
            return out.sum() * 0.0  # keeps every parameter in the graph, as DDP requires
        return mean * (n_local * self.dist.world_size / n_global)

    def step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        cfg = self.config
        x, y = move_inputs(x, self.device), y.to(self.device)
        n_global = int(y.shape[0])
        x, y = distributed.shard(x, y, self.dist)
        n_local = int(y.shape[0])
        self.optimizer.zero_grad(set_to_none=True)
        if self.bit_optimizer is not None:
            self.bit_optimizer.zero_grad(set_to_none=True)
        out = primary_output(call_model(self.forward_model, x), key=self.output_key)
        ce = self._share(F.cross_entropy(out, y) if n_local else out.sum(), out, n_local, n_global)
        loss = ce
        parts = {"ce_loss": ce}
        if cfg.distill_weight > 0 and self.teacher is not None:
            with torch.no_grad():
                t_out = primary_output(call_model(self.teacher, x), key=self.output_key)
            kd = distillation_loss(out, t_out, cfg.temperature) if n_local else out.sum()
            kd = self._share(kd, out, n_local, n_global)
            loss = (1.0 - cfg.distill_weight) * ce + cfg.distill_weight * kd
            parts["distill_loss"] = kd
        if cfg.quant_loss_weight > 0:
            ql = quantization_loss(self.model)
            loss = loss + cfg.quant_loss_weight * ql
            parts["quant_loss"] = ql
        if self.relaxed:
            bits = expected_weight_bits(self.model, self.plan, self.counts)
            loss = loss + cfg.bit_penalty * bits
            parts["expected_bits"] = bits
        loss.backward()
        self.optimizer.step()
        if self.bit_optimizer is not None:
            self.bit_optimizer.step()
        self.learned.clamp_()
        parts["loss"] = loss
        if self.dist.active:  # report the global batch's losses: batch terms summed, the others are equal
            names = [k for k in ("ce_loss", "distill_loss", "loss") if k in parts]
            total = distributed.all_reduce_sum(torch.stack([parts[k].detach().float() for k in names]))
            for k, v in zip(names, total / self.dist.world_size, strict=True):
                parts[k] = v
        return {k: float(v.detach()) for k, v in parts.items()}

    def close(self) -> None:
        """Learned scales back to buffers: the model is a plain quantized model again."""
        self.forward_model = self.model  # drops the DDP replica (and its gradient hooks)
        self.learned.close()
        for q in _mixed(self.model).values():
            q.logits.requires_grad_(False)


def _lr_factor(config: QATConfig, step: int, total: int) -> float:
    if config.schedule == "constant" or total <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def _train_batches(loader: Any, *, epoch: int, config: QATConfig) -> Iterable:
    """The epoch's batches: a DataLoader over a sized dataset is reshuffled with a generator seeded by (seed,
    epoch), so any epoch (and a resumed one) sees the same order; other iterables are used as they are."""
    dataset = getattr(loader, "dataset", None)
    batch_size = config.batch_size or getattr(loader, "batch_size", None)
    if isinstance(loader, DataLoader) and batch_size and hasattr(dataset, "__len__"):
        g = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=g,
            collate_fn=loader.collate_fn,
            drop_last=loader.drop_last,
        )
    return loader


def _steps_per_epoch(loader: Any, config: QATConfig) -> int:
    batches = _train_batches(loader, epoch=0, config=config)
    try:
        n = len(batches)  # type: ignore[arg-type]
    except TypeError:
        n = sum(1 for _ in batches)
    if n == 0:
        raise QATError("the task's train loader is empty; QAT needs at least one training batch")
    return n


# ============================================================================================ checkpoints


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over a model's class and state (names, shapes, dtypes, values)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for key, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _run_key(
    config: QATConfig, plan: QuantPlan, steps_per_epoch: int, output_key: str | int | None = None
) -> dict[str, Any]:
    cfg = {k: v for k, v in config.to_dict().items() if k not in _RUN_FIELDS}
    key = {"config": cfg, "plan": plan.to_dict(), "steps_per_epoch": steps_per_epoch}
    if output_key is not None:  # the losses use another output (None keeps earlier checkpoints' keys)
        key["output_key"] = output_key
    return key


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _content_hash(obj: Any) -> str:
    """SHA-256 over a checkpoint's content: tensors by dtype, shape and raw bytes, everything else by type and
    value (mapping keys sorted). ``torch.load`` reads a checkpoint whose tensor bytes were flipped or edited
    without complaint; this hash does not match it any more."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"T:{t.dtype}:{tuple(o.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(o, Mapping):
            h.update(f"D{len(o)}:".encode())
            for k in sorted(o, key=repr):
                walk(k)
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"{type(o).__name__}{len(o)}:".encode())
            for v in o:
                walk(v)
        else:
            h.update(f"{type(o).__name__}:{o!r};".encode())

    walk(obj)
    return h.hexdigest()


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise QATError(
            f"checkpoint {path} is not a readable QAT checkpoint (truncated or corrupted? {type(e).__name__}: {e})"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise QATError(f"checkpoint {path} is not a QAT checkpoint (written by workbench.qat.train_qat)")
    version = ckpt.get("version")
    if version == 1:  # written before checkpoints carried a content hash: key and model are still checked
        warnings.warn(
            f"checkpoint {path} predates content hashes (version 1): its contents cannot be verified",
            stacklevel=3,
        )
    elif version != CHECKPOINT_VERSION:
        raise QATError(f"checkpoint {path} has version {version!r}; this code reads {CHECKPOINT_VERSION}")
    else:
        stored = ckpt.pop("content_sha256", None)
        if stored is None or stored != _content_hash(ckpt):
            what = "has no content hash" if stored is None else "does not match its content hash"
            raise QATError(
                f"checkpoint {path} {what}: it was edited or corrupted after it was written; pass a new "
                "checkpoint path or overwrite=True to start over"
            )
    return ckpt


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: checkpoint {a!r} != now {b!r}"]


def _open_checkpoint(config: QATConfig, key: dict[str, Any], fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: start fresh); refuses mismatches and silent overwrites."""
    if config.checkpoint is None:
        return None
    path = Path(config.checkpoint)
    if path.is_dir():
        raise QATError(f"checkpoint={str(path)!r} is a directory; pass a file path")
    if not path.exists():
        if config.resume:
            raise FileNotFoundError(
                f"resume=True but checkpoint {path} does not exist; run without resume to start it"
            )
        return None
    if config.overwrite:
        return None
    if not config.resume:
        raise FileExistsError(
            f"checkpoint {path} exists; pass resume=True (--resume) to continue it, overwrite=True "
            "(--overwrite) to start over, or a new checkpoint path"
        )
    ckpt = _read_checkpoint(path)
    if ckpt["model_fingerprint"] != fingerprint:
        raise QATError(
            f"checkpoint {path} was written for another model ({ckpt.get('model_class')} with fingerprint "
            f"{ckpt['model_fingerprint'][:12]}, this model's is {fingerprint[:12]}); pass a new checkpoint path "
            "or overwrite=True"
        )
    if ckpt["key_hash"] != _hash(key):
        diffs = _diff(ckpt["key"], key)
        raise QATError(
            f"checkpoint {path} was written by a different QAT config or plan ({'; '.join(diffs[:6])}); pass a "
            "new checkpoint path or overwrite=True"
        )
    return ckpt


# ============================================================================================ result


@dataclass(frozen=True)
class QATResult:
    """Outcome of :func:`train_qat`. Accuracies are the task metric (``metric_name``: "accuracy" for labelled
    top-1, a fidelity kind, an eval_fn's name) on the test split (``val_*`` on validation); ``drop_*_pp`` are the
    metric loss x 100 (FP32 metric minus metric; accuracy drop in pp for labelled accuracy). ``output_key``: the
    output tensor the losses and the default metric used (None: the primary output).

    ``history``: one row per epoch (``epoch``, ``phase``, ``steps``, ``loss``, ``ce_loss``, ``distill_loss``,
    ``quant_loss``, ``expected_bits``, ``val_accuracy``, ``lr``, ``seconds``); an epoch cut short by
    ``max_steps`` has ``partial=True``. ``final_plan`` is the plan of ``model`` (the learned one with a bit
    penalty). ``step_ms``: median wall time of this run's optimizer steps (None when it took none).
    """

    task: str
    plan: QuantPlan = field(repr=False)
    final_plan: QuantPlan = field(repr=False)
    config: QATConfig = field(repr=False)
    fp32_accuracy: float
    accuracy_before: float
    accuracy_after: float
    val_accuracy_before: float
    val_accuracy_after: float
    avg_weight_bits: float
    input_avg_weight_bits: float
    avg_act_bits: float
    size_bytes: int
    fp32_size_bytes: int
    packed_bytes: int
    packed_path: str | None
    steps: int
    epochs_run: int
    best_epoch: int | None
    stopped_early: bool
    interrupted: bool
    resumed_at_step: int | None
    step_ms: float | None
    seconds: float
    history: pd.DataFrame = field(repr=False)
    run_id: str | None = None
    world_size: int = 1
    metric_name: str = "accuracy"
    output_key: str | int | None = None
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def drop_before_pp(self) -> float:
        return 100.0 * (self.fp32_accuracy - self.accuracy_before)

    @property
    def drop_after_pp(self) -> float:
        return 100.0 * (self.fp32_accuracy - self.accuracy_after)

    def to_dict(self) -> dict[str, Any]:
        skip = {"plan", "final_plan", "config", "history", "model"}
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in skip}
        d["drop_before_pp"] = self.drop_before_pp
        d["drop_after_pp"] = self.drop_after_pp
        d["config"] = self.config.to_dict()
        d["plan"] = self.plan.to_dict()
        d["final_plan"] = self.final_plan.to_dict()
        d["history"] = json.loads(self.history.to_json(orient="records"))
        return d


HISTORY_COLUMNS = [
    "epoch", "phase", "steps", "loss", "ce_loss", "distill_loss", "quant_loss", "expected_bits",
    "val_accuracy", "lr", "seconds", "partial",
]  # fmt: skip


def qat_table(results: Mapping[str, QATResult]) -> pd.DataFrame:
    """One row per named result: bits, accuracies (FP32, before, after, drops in pp), sizes, steps, time."""
    rows = []
    for name, r in results.items():
        rows.append(
            {
                "name": name,
                "avg_weight_bits": r.avg_weight_bits,
                "fp32_accuracy": r.fp32_accuracy,
                "accuracy_before": r.accuracy_before,
                "accuracy_after": r.accuracy_after,
                "drop_before_pp": r.drop_before_pp,
                "drop_after_pp": r.drop_after_pp,
                "packed_bytes": r.packed_bytes,
                "epochs_run": r.epochs_run,
                "step_ms": r.step_ms,
                "seconds": r.seconds,
            }
        )
    return pd.DataFrame(rows)


def plans_from_search(
    result: Any, *, k: int = 1, max_weight_fraction: float | None = None, column: str = "accuracy"
) -> dict[str, QuantPlan]:
    """The ``k`` best front plans of a search result (:class:`workbench.search.SearchResult`): highest
    ``column`` first (ties: fewer weight bytes), within ``max_weight_fraction`` of the FP32 weight bytes.

    Keys are labels such as ``"ilp weight_size<=9.5% #3 (2.93 bits)"``.
    """
    if not _is_int(k) or k < 1:
        raise QATError(f"k={k!r} must be an int >= 1")
    front = getattr(result, "front", None)
    if not isinstance(front, pd.DataFrame) or "plan" not in front.columns:
        raise QATError(f"result must be a search result with a front of plans, got {type(result).__name__}")
    if column not in front.columns:
        raise QATError(f"column={column!r} is not in the front; columns: {list(front.columns)}")
    df = front
    if max_weight_fraction is not None:
        df = df[df["weight_bytes"] <= max_weight_fraction * result.fp32_weight_bytes]
    if df.empty:
        smallest = float(front["weight_bytes"].min() / result.fp32_weight_bytes) if len(front) else math.nan
        raise QATError(
            f"no front plan within max_weight_fraction={max_weight_fraction!r} (the smallest has {smallest:.4f}); "
            "raise the fraction or search with a tighter budget"
        )
    df = df.sort_values([column, "weight_bytes"], ascending=[False, True]).head(k)
    out = {}
    for _, row in df.iterrows():
        label = (
            f"{row.get('label', 'plan')} #{row.get('trial', len(out))} ({row['avg_weight_bits']:.2f} bits)"
        )
        out[label] = QuantPlan.from_json(row["plan"])
    return out


# ============================================================================================ training


def _check_task(task: Any) -> None:
    for attr in ("model", "calib_loader", "val_loader", "test_loader", "evaluate"):
        if not hasattr(task, attr):
            raise QATError(
                f"task must be a workbench.tasks.Task (missing {attr!r}), got {type(task).__name__}"
            )
    if not isinstance(task.model, nn.Module):
        raise QATError(f"task.model must be a torch.nn.Module, got {type(task.model).__name__}")
    if getattr(task, "train_loader", None) is None:
        raise QATError(
            f"task {getattr(task, 'name', '?')!r} has no train loader; QAT needs training data "
            "(task_from_model(..., train_loader=...))"
        )


def _metric_name(task: Any) -> str:
    """The task's :attr:`~workbench.tasks.Task.metric_name` ("accuracy" for a task-like object without one)."""
    name = getattr(task, "metric_name", None)
    if isinstance(name, str):
        return name
    metric = getattr(task, "metric", None)
    if metric is None:
        return "accuracy"
    from workbench.tasks import metric_name

    return metric_name(metric)


def _resolve_plan(plan: Any, model: nn.Module) -> QuantPlan:
    from workbench.pipeline import resolve_plan

    if not isinstance(plan, (QuantPlan, str, os.PathLike)):
        raise PlanError(
            f"plan must be a QuantPlan, a plan JSON path or a shorthand such as 'uniform:w4a8', "
            f"got {type(plan).__name__}"
        )
    plan = resolve_plan(plan, model)
    plan.validate(model)
    return plan


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class _Progress:
    """Everything a checkpoint restores besides model and optimizer."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0
    global_step: int = 0
    phase: str = "discrete"
    learned_bits: dict[str, int] | None = None
    sums: dict[str, float] = field(default_factory=dict)
    seen: int = 0
    epoch_seconds: float = 0.0
    best_val: float = -1.0
    best_epoch: int | None = None
    best_state: dict[str, Tensor] | None = None
    since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    stopped_early: bool = False


def _save_checkpoint(
    path: Path,
    *,
    key: dict[str, Any],
    fingerprint: str,
    model: nn.Module,
    trainer: _Trainer,
    prog: _Progress,
) -> None:
    content = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "key": json.loads(json.dumps(key, default=str)),
        "key_hash": _hash(key),
        "model_fingerprint": fingerprint,
        "model_class": type(model).__name__,
        "model_state": model.state_dict(),
        "optimizer_state": trainer.optimizer.state_dict(),
        "bit_optimizer_state": (
            trainer.bit_optimizer.state_dict() if trainer.bit_optimizer is not None else None
        ),
        "progress": {
            "epoch": prog.epoch,
            "step_in_epoch": prog.step_in_epoch,
            "global_step": prog.global_step,
            "phase": prog.phase,
            "learned_bits": prog.learned_bits,
            "sums": dict(prog.sums),
            "seen": prog.seen,
            "epoch_seconds": prog.epoch_seconds,
            "best_val": prog.best_val,
            "best_epoch": prog.best_epoch,
            "since_best": prog.since_best,
            "history": list(prog.history),
            "done": prog.done,
            "stopped_early": prog.stopped_early,
        },
        "best_state": prog.best_state,
        "rng": torch.get_rng_state(),
        "torch_version": str(torch.__version__),
    }
    content["content_sha256"] = _content_hash(content)
    _atomic_save(content, path)


def _history_row(prog: _Progress, *, val: float, lr: float, partial: bool, steps: int) -> dict[str, Any]:
    seen = max(prog.seen, 1)
    row: dict[str, Any] = {"epoch": prog.epoch + 1, "phase": prog.phase, "steps": steps}
    for k in ("loss", "ce_loss", "distill_loss", "quant_loss", "expected_bits"):
        row[k] = prog.sums[k] / seen if k in prog.sums else float("nan")
    row.update({"val_accuracy": val, "lr": lr, "seconds": prog.epoch_seconds, "partial": partial})
    return row


def train_qat(
    task: Any,
    plan: QuantPlan | str | os.PathLike,
    config: QATConfig | None = None,
    *,
    packed_path: str | os.PathLike | None = None,
    track: bool = True,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> QATResult:
    """Quantization-aware training of ``plan`` on ``task``; returns the trained model and its measurements.

    ``plan``: a :class:`QuantPlan`, a plan JSON path or a shorthand (``uniform:w2a8:per_channel``). The model
    is a quantized copy of ``task.model`` (never modified). ``packed_path``: where the packed low-bit model is
    written (refused if it exists, unless ``config.overwrite``); a temporary file otherwise, removed once its
    size is read (and logged). ``track``: one MLflow run of stage ``"qat"`` with per-epoch metrics (step =
    epoch), the input and final plans, the history table and the packed model as artifacts. ``device``:
    where to train (``cpu``, ``cuda``, ``cuda:N``; None: where the task's model is). The cross-entropy and
    distillation losses take the output ``task.output_key`` chooses (a key, attribute or tuple index; None: the
    primary output, see :func:`~workbench.quant.inputs.primary_output`).

    Data parallel: inside a torch.distributed process group (``torchrun``, see :mod:`workbench.distributed`)
    every process trains a DistributedDataParallel replica on its slice of each global batch, so the run
    equals a single-process run up to floating-point summation order; rank 0 alone tracks, writes the
    checkpoint and the packed file.
    """
    config = config if config is not None else QATConfig()
    if not isinstance(config, QATConfig):
        raise QATError(f"config must be a QATConfig, got {type(config).__name__}")
    _check_task(task)
    dist_info = distributed.current()
    if device is not None:
        task = on_device(task, distributed.process_device(device))
    plan = _resolve_plan(plan, task.model)
    if packed_path is not None:
        packed_path = Path(packed_path)
        if packed_path.exists() and not config.overwrite:
            raise FileExistsError(f"packed model {packed_path} exists; pass overwrite=True to replace it")
    steps_per_epoch = _steps_per_epoch(task.train_loader, config)
    output_key = getattr(task, "output_key", None)
    key = _run_key(config, plan, steps_per_epoch, output_key)
    fingerprint = model_fingerprint(task.model)
    ckpt = _open_checkpoint(config, key, fingerprint)
    total_steps = config.epochs * steps_per_epoch
    t_start = time.perf_counter()
    counts = _layer_weight_counts(task.model)
    example = task.example_input(1)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        qmodel = quantize_model(
            task.model,
            plan,
            task.calib_loader,
            fold_bn=config.bn == "fold",
            max_calib_batches=config.calib_batches,
            seed=config.seed,
        )
        example = move_inputs(example, next(qmodel.parameters()).device)
        fp32_acc = task.evaluate(task.model, "test")
        acc_before = task.evaluate(qmodel, "test")
        val_before = task.evaluate(qmodel, "val")
        teacher = None
        if config.distill_weight > 0:
            teacher = copy.deepcopy(task.model).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

        prog = _Progress(phase="relaxed" if config.relax_epochs > 0 else "discrete")
        if prog.phase == "relaxed":
            _relax(qmodel, config.bit_candidates, config.bit_init)
        resumed_at = None
        if ckpt is not None:
            saved = ckpt["progress"]
            for k, v in saved.items():
                setattr(prog, k, v)
            prog.best_state = ckpt["best_state"]
            if prog.phase == "discrete" and prog.learned_bits:
                _discretize(qmodel, prog.learned_bits)
            qmodel.load_state_dict(ckpt["model_state"])
            resumed_at = prog.global_step
        trainer = _Trainer(
            qmodel, config, plan=plan, teacher=teacher, counts=counts, example=example,
            relaxed=prog.phase == "relaxed", output_key=output_key,
        )  # fmt: skip
        if ckpt is not None:
            trainer.optimizer.load_state_dict(ckpt["optimizer_state"])
            if trainer.bit_optimizer is not None:
                trainer.bit_optimizer.load_state_dict(ckpt["bit_optimizer_state"])
            torch.set_rng_state(ckpt["rng"])
        ckpt_path = Path(config.checkpoint) if config.checkpoint else None

        def save() -> None:
            if ckpt_path is not None and dist_info.is_main:
                _save_checkpoint(
                    ckpt_path, key=key, fingerprint=fingerprint, model=qmodel, trainer=trainer, prog=prog
                )

        step_times: list[float] = []
        interrupted = False
        partial_row: dict[str, Any] | None = None
        run_params = {
            "task": getattr(task, "name", "task"),
            "plan_layers": len(plan),
            "world_size": dist_info.world_size,
            "device": str(next(qmodel.parameters()).device),
            **config.to_dict(),
        }
        with tracking.start_run(
            "qat",
            run_name=f"qat-{getattr(task, 'name', 'task')}",
            params={k: v for k, v in run_params.items() if v is not None},
            enabled=None if track and dist_info.is_main else False,
            tags={"resumed_at_step": resumed_at} if resumed_at is not None else None,
        ) as run:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=config.epochs, initial=prog.epoch, desc=f"qat {getattr(task, 'name', '')}".strip(),
                disable=not progress, leave=False,
            )  # fmt: skip
            try:
                while not prog.done and prog.epoch < config.epochs:
                    if config.max_steps is not None and prog.global_step >= config.max_steps:
                        interrupted = True
                        break
                    if prog.phase == "relaxed" and prog.epoch >= config.relax_epochs:
                        trainer.close()
                        prog.learned_bits = {n: q.choice() for n, q in _mixed(qmodel).items()}
                        _discretize(qmodel, prog.learned_bits)
                        prog.phase = "discrete"
                        trainer = _Trainer(
                            qmodel, config, plan=qmodel.quant_plan, teacher=teacher, counts=counts,
                            example=example, relaxed=False, output_key=output_key,
                        )  # fmt: skip
                    trainer.train_mode()
                    batches = iter(_train_batches(task.train_loader, epoch=prog.epoch, config=config))
                    for _ in range(prog.step_in_epoch):  # a resumed epoch skips the batches it already did
                        next(batches)
                    t_epoch = time.perf_counter()
                    for batch in batches:
                        if config.max_steps is not None and prog.global_step >= config.max_steps:
                            interrupted = True
                            break
                        x, y = _split(batch)
                        trainer.set_lr(_lr_factor(config, prog.global_step, total_steps))
                        t0 = time.perf_counter()
                        parts = trainer.step(x, y)
                        step_times.append(time.perf_counter() - t0)
                        n = int(y.shape[0])
                        for k, v in parts.items():
                            prog.sums[k] = prog.sums.get(k, 0.0) + v * n
                        prog.seen += n
                        prog.step_in_epoch += 1
                        prog.global_step += 1
                    prog.epoch_seconds += time.perf_counter() - t_epoch
                    lr = trainer.optimizer.param_groups[0]["lr"]
                    if interrupted:
                        save()
                        if prog.step_in_epoch:
                            val = task.evaluate(qmodel, "val")
                            partial_row = _history_row(
                                prog, val=val, lr=lr, partial=True, steps=prog.step_in_epoch
                            )
                        break
                    val = task.evaluate(qmodel, "val")
                    row = _history_row(prog, val=val, lr=lr, partial=False, steps=prog.step_in_epoch)
                    prog.history.append(row)
                    if prog.phase == "discrete":
                        # patience counts epochs without a better accuracy; among equally good epochs the
                        # latest (further down the learning-rate schedule) is kept
                        prog.since_best = 0 if val > prog.best_val else prog.since_best + 1
                        if val >= prog.best_val:
                            prog.best_val, prog.best_epoch = val, prog.epoch + 1
                            prog.best_state = _state(qmodel) if config.restore_best else None
                    prog.epoch += 1
                    prog.step_in_epoch, prog.sums, prog.seen, prog.epoch_seconds = 0, {}, 0, 0.0
                    if config.patience is not None and prog.since_best >= config.patience:
                        prog.done = prog.stopped_early = True
                    metrics = {k: v for k, v in row.items() if k not in ("epoch", "phase", "partial")}
                    run.log_metrics(metrics, step=row["epoch"])
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", val_acc=f"{val:.4f}")
                    save()
            finally:
                bar.close()
            trainer.close()
            if prog.phase == "relaxed":  # stopped inside the relaxed phase: fix the most likely widths
                _discretize(qmodel, {n: q.choice() for n, q in _mixed(qmodel).items()})
            if not interrupted and config.restore_best and prog.best_state is not None:
                qmodel.load_state_dict(prog.best_state)
            qmodel.eval()
            final_plan: QuantPlan = qmodel.quant_plan
            acc_after = task.evaluate(qmodel, "test")
            val_after = task.evaluate(qmodel, "val")
            summary = final_plan.summary(task.model, example)
            in_summary = plan.summary(task.model, example)
            with tempfile.TemporaryDirectory() as tmp:
                own = packed_path is not None and dist_info.is_main
                target = packed_path if own else Path(tmp) / "model.wbq"
                packed = save_packed(qmodel, target, overwrite=config.overwrite).file_bytes
                run.log_artifact(target, "packed")
            history = pd.DataFrame(
                prog.history + ([partial_row] if partial_row else []), columns=HISTORY_COLUMNS
            )
            result = QATResult(
                task=getattr(task, "name", "task"),
                plan=plan,
                final_plan=final_plan,
                config=config,
                fp32_accuracy=fp32_acc,
                accuracy_before=acc_before,
                accuracy_after=acc_after,
                val_accuracy_before=val_before,
                val_accuracy_after=val_after,
                avg_weight_bits=summary.avg_weight_bits,
                input_avg_weight_bits=in_summary.avg_weight_bits,
                avg_act_bits=summary.avg_act_bits,
                size_bytes=summary.size_bytes,
                fp32_size_bytes=summary.fp32_size_bytes,
                packed_bytes=packed,
                packed_path=str(packed_path) if packed_path is not None else None,
                steps=prog.global_step,
                epochs_run=prog.epoch,
                best_epoch=prog.best_epoch,
                stopped_early=prog.stopped_early,
                interrupted=interrupted,
                resumed_at_step=resumed_at,
                step_ms=1e3 * statistics.median(step_times) if step_times else None,
                seconds=time.perf_counter() - t_start,
                history=history,
                run_id=getattr(run, "run_id", None),
                world_size=dist_info.world_size,
                metric_name=_metric_name(task),
                output_key=output_key,
                model=qmodel,
            )
            run.log_metrics(
                {
                    "fp32_accuracy": fp32_acc,
                    "accuracy_before": acc_before,
                    "accuracy_after": acc_after,
                    "avg_weight_bits": result.avg_weight_bits,
                    "packed_bytes": packed,
                    "step_ms": result.step_ms,
                },
                step=prog.epoch,
            )
            run.log_plan(plan, "input_plan")
            run.log_plan(final_plan, "final_plan")
            run.log_dataframe(history, "history")
            run.log_json(result.to_dict(), "qat_result")
    return result


def train_steps(
    task: Any,
    plan: QuantPlan | str | os.PathLike,
    config: QATConfig | None = None,
    *,
    max_steps: int = 3,
    track: bool = False,
    progress: bool = False,
) -> QATResult:
    """:func:`train_qat` stopped after ``max_steps`` optimizer steps (the cheap entry point for tests)."""
    config = config if config is not None else QATConfig()
    return train_qat(task, plan, config.with_(max_steps=max_steps), track=track, progress=progress)


# ============================================================================================ timing


@dataclass(frozen=True)
class StepTimes:
    """Median wall time (ms) of QAT and FP32 training steps measured side by side (interleaved)."""

    fp32_ms: float
    qat_ms: float
    steps: int
    warmup: int
    threads: int
    fp32_times_ms: tuple[float, ...] = field(repr=False)
    qat_times_ms: tuple[float, ...] = field(repr=False)

    @property
    def ratio(self) -> float:
        return self.qat_ms / self.fp32_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "fp32_ms": self.fp32_ms,
            "qat_ms": self.qat_ms,
            "ratio": self.ratio,
            "steps": self.steps,
            "warmup": self.warmup,
            "threads": self.threads,
        }


def _cycle(loader: Iterable) -> Iterator[Any]:
    while True:
        yield from loader


def compare_step_times(
    task: Any,
    plan: QuantPlan | str | os.PathLike,
    config: QATConfig | None = None,
    *,
    steps: int = 40,
    warmup: int = 5,
) -> StepTimes:
    """QAT step time against the FP32 training step, interleaved on the same batches, medians after ``warmup``.

    The FP32 step is :func:`workbench.models.train_model`'s (AdamW, cross-entropy, BatchNorm in training mode);
    the QAT step is :func:`train_qat`'s with ``config`` (distillation, loss terms and learned scales included).
    Both train private copies; the task's model is not modified.
    """
    config = config if config is not None else QATConfig()
    _check_task(task)
    if not _is_int(steps) or steps < 1 or not _is_int(warmup) or warmup < 0:
        raise QATError(
            f"steps must be an int >= 1 and warmup an int >= 0, got steps={steps!r}, warmup={warmup!r}"
        )
    plan = _resolve_plan(plan, task.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        qmodel = quantize_model(
            task.model, plan, task.calib_loader, fold_bn=config.bn == "fold",
            max_calib_batches=config.calib_batches, seed=config.seed,
        )  # fmt: skip
        relaxed = config.relax_epochs > 0
        if relaxed:
            _relax(qmodel, config.bit_candidates, config.bit_init)
        teacher = copy.deepcopy(task.model).eval() if config.distill_weight > 0 else None
        example = task.example_input(1)
        output_key = getattr(task, "output_key", None)
        trainer = _Trainer(
            qmodel, config, plan=plan, teacher=teacher, counts=_layer_weight_counts(task.model),
            example=example, relaxed=relaxed, output_key=output_key,
        )  # fmt: skip
        fp32 = copy.deepcopy(task.model).train()
        opt = torch.optim.AdamW(fp32.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        trainer.train_mode()

        def fp32_step(x: Tensor, y: Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(primary_output(call_model(fp32, x), key=output_key), y).backward()
            opt.step()

        batches = _cycle(_train_batches(task.train_loader, epoch=0, config=config))
        t_fp, t_q = [], []
        for i in range(warmup + steps):
            x, y = _split(next(batches))
            order = (0, 1) if i % 2 == 0 else (1, 0)  # alternate who goes first
            for which in order:
                t0 = time.perf_counter()
                if which == 0:
                    fp32_step(x, y)
                else:
                    trainer.set_lr(1.0)
                    trainer.step(x, y)
                dt = 1e3 * (time.perf_counter() - t0)
                if i >= warmup:
                    (t_fp if which == 0 else t_q).append(dt)
        trainer.close()
    return StepTimes(
        fp32_ms=statistics.median(t_fp),
        qat_ms=statistics.median(t_q),
        steps=steps,
        warmup=warmup,
        threads=torch.get_num_threads(),
        fp32_times_ms=tuple(t_fp),
        qat_times_ms=tuple(t_q),
    )
