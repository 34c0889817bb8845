"""Put the kernel menu's choices into a deployed model: each named layer's module built from its simulation twin.

:func:`deploy_layers` chooses a kernel for each layer (:func:`~workbench.hardware.kernels.registry.choose_kernel`),
reports the fallbacks (a warning, or an error under ``strict``) and swaps the layers whose handler builds a module;
a fallback layer keeps what the deployment already holds there (its simulation twin or baked float layer).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from workbench.hardware.kernels.registry import KernelChoice, choose_kernel, report_fallbacks
from workbench.quant.spec import QuantPlan
from workbench.quant.swap import get_module, quant_modules, set_module


def deploy_layers(
    deployed: nn.Module,
    simulated: nn.Module,
    plan: QuantPlan,
    layers: Iterable[str],
    *,
    strict: bool = False,
    allowed: tuple[str, ...] | None = None,
) -> tuple[list[KernelChoice], list[str]]:
    """Swap each of ``layers`` in ``deployed`` (in place) for the module its kernel builds from the twin in
    ``simulated`` (the plan's fake-quant model); ``allowed``: only these kernel names. Returns the choices and
    a note per layer (kernel or fallback reason)."""
    sims = quant_modules(simulated)
    choices = []
    for name in layers:
        twin = sims.get(name)
        if twin is None:
            twin = get_module(simulated, name)
        choices.append(choose_kernel(name, twin, plan.get(name), allowed=allowed))
    notes = report_fallbacks(choices, strict=strict)
    for choice in choices:
        handler = choice.handler
        if handler is None or handler.build is None:
            continue
        module = handler.build(
            sims.get(choice.layer, get_module(simulated, choice.layer)), plan.get(choice.layer)
        )
        set_module(deployed, choice.layer, module.eval())
        notes.append(
            f"{choice.layer}: {choice.kind} kernel {handler.name} ({getattr(module, 'kernel', handler.name)})"
        )
    return choices, notes
