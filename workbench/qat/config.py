"""QAT configuration: :class:`QATConfig` (validated knobs), :class:`QATError` and the valid choices."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from workbench.quant.spec import INT_BITS

SCALE_MODES: tuple[str, ...] = ("frozen", "lsq")
BN_MODES: tuple[str, ...] = ("fold", "freeze")
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")
MAX_EPOCHS = 1000


class QATError(ValueError):
    """A QAT config, task or checkpoint that cannot be used. The message names the bad value."""


def _choices(values: Iterable[Any]) -> str:
    return ", ".join(repr(v) for v in values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
