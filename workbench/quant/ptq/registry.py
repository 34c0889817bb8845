"""The one registry of post-training quantization (PTQ) steps, and how :func:`quantize_model` runs them.

A step is registered with a name, the stage it runs in and its place in the fixed order:

* ``before_swap`` steps (``cle``) transform the private float copy after BatchNorm folding, before the layers are
  swapped for their fake-quant twins;
* ``after_calibration`` steps (``ranges``, then ``adaround``, then ``bias_correction``) tune the swapped,
  calibrated model layer by layer on the calibration data.

Whatever order the caller names the steps in, they run in the registry's order. A step that cannot apply to a layer
emits a :class:`PtqSkipWarning` naming the step, the layer and the reason; a step that cannot apply at all raises
:class:`~workbench.quant.spec.PlanError`. Never a silent no-op.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from workbench.quant.spec import PlanError, QuantPlan

STAGES: tuple[str, ...] = ("before_swap", "after_calibration")


class PtqSkipWarning(UserWarning):
    """A PTQ step left a layer (or a pair of layers) as it was; the message names the step, the layer and why."""


def skip(step: str, layer: str, reason: str) -> None:
    """Warn that ``step`` left ``layer`` alone because of ``reason`` (a named skip, never a silent one)."""
    warnings.warn(f"ptq step {step!r} skipped {layer}: {reason}", PtqSkipWarning, stacklevel=3)


@dataclass
class PtqContext:
    """What the steps of one :func:`quantize_model` call share: the plan, the calibration data and knobs, and
    (for the ``after_calibration`` steps that need it) the float reference copy taken just before the swap."""

    plan: QuantPlan
    calib_loader: Any = None
    max_calib_batches: int | None = None
    seed: int = 0
    progress: bool = False
    float_model: nn.Module | None = None
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class PtqStep:
    """A registered PTQ step: ``run(model, config, ctx)`` changes ``model`` (the private copy) in place and returns
    a small report (a dict of numbers / names)."""

    name: str
    stage: str
    order: int
    config_type: type
    run: Callable[[nn.Module, Any, PtqContext], dict[str, Any]]
    needs_data: bool
    needs_float_reference: bool
    summary: str


PTQ_STEPS: dict[str, PtqStep] = {}


def register_ptq_step(
    name: str,
    *,
    stage: str,
    order: int,
    config_type: type,
    needs_data: bool,
    needs_float_reference: bool = False,
    summary: str,
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Decorator registering ``fn(model, config, ctx) -> report`` as the PTQ step ``name``."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} unknown; choose one of {STAGES}")

    def deco(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        if name in PTQ_STEPS:
            raise ValueError(f"PTQ step {name!r} is already registered")
        PTQ_STEPS[name] = PtqStep(
            name, stage, order, config_type, fn, needs_data, needs_float_reference, summary
        )
        return fn

    return deco


def ptq_step_names() -> tuple[str, ...]:
    """The registered step names in their fixed running order."""
    return tuple(s.name for s in sorted(PTQ_STEPS.values(), key=lambda s: (STAGES.index(s.stage), s.order)))


def parse_ptq(text: str | None) -> tuple[str, ...]:
    """``"cle,bias_correction"`` -> ``("cle", "bias_correction")``, validated (``""``, ``"none"``: no step)."""
    if text is None or text.strip().lower() in ("", "none"):
        return ()
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    resolve_ptq(names)
    return names


def resolve_ptq(ptq: Iterable[Any] | str | None) -> list[tuple[PtqStep, Any]]:
    """``(step, config)`` pairs in the registry's order for step names and / or step config objects.

    Raises :class:`PlanError` naming an unknown step (and the valid ones) or a step given twice."""
    if ptq is None:
        return []
    items: Sequence[Any] = parse_ptq(ptq) if isinstance(ptq, str) else list(ptq)
    by_type = {s.config_type: s for s in PTQ_STEPS.values()}
    chosen: dict[str, tuple[PtqStep, Any]] = {}
    for item in items:
        if isinstance(item, str):
            step = PTQ_STEPS.get(item)
            if step is None:
                raise PlanError(f"PTQ step {item!r} unknown; valid steps: {', '.join(ptq_step_names())}")
            config = step.config_type()
        elif type(item) in by_type:
            step, config = by_type[type(item)], item
        else:
            raise PlanError(
                f"PTQ steps are names or step configs, got {type(item).__name__}; valid steps: "
                f"{', '.join(ptq_step_names())}"
            )
        if step.name in chosen:
            raise PlanError(f"PTQ step {step.name!r} is given twice")
        chosen[step.name] = (step, config)
    return [chosen[n] for n in ptq_step_names() if n in chosen]


class PtqRun:
    """The resolved steps of one :func:`quantize_model` call, run at its two stages."""

    def __init__(self, ptq: Iterable[Any] | str | None, ctx: PtqContext) -> None:
        self.steps = resolve_ptq(ptq)
        self.ctx = ctx
        if ctx.calib_loader is None:
            for step, _ in self.steps:
                if step.needs_data:
                    raise PlanError(
                        f"PTQ step {step.name!r} needs calibration data: pass calib_loader to quantize_model"
                    )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(step.name for step, _ in self.steps)

    def before_swap(self, model: nn.Module) -> None:
        """Run the ``before_swap`` steps on the folded float copy, then keep a float reference if needed."""
        self._run(model, "before_swap")
        if any(s.needs_float_reference for s, _ in self.steps):
            self.ctx.float_model = copy.deepcopy(model).eval()

    def after_calibration(self, model: nn.Module) -> None:
        self._run(model, "after_calibration")
        self.ctx.float_model = None

    def _run(self, model: nn.Module, stage: str) -> None:
        for step, config in self.steps:
            if step.stage == stage:
                self.ctx.reports[step.name] = step.run(model, config, self.ctx)
