"""The kernel menu: one registry of deployment handlers per layer kind (Linear, Conv, Embedding).

Parts: :mod:`.registry` (:func:`register_kernel`, :func:`choose_kernel`, :data:`KERNEL_MENU`), :mod:`.codes`
(the simulation's weight codes, checked to rebuild its weights exactly), :mod:`.modules` (the deployed modules),
:mod:`.linear` / :mod:`.dynamic` / :mod:`.embedding` (the handlers, registered on import), :mod:`.apply`
(:func:`deploy_layers`: the chosen modules swapped into a deployed model).

=============  =====================================================================================
kind           kernels, in menu order
=============  =====================================================================================
linear         fp32, bf16, int4_weight_only, int8_weight_only, int8_static (FX), int8_dynamic
conv           fp32, bf16, int8_static (FX)
embedding      fp32, packed_lookup
=============  =====================================================================================
"""

from workbench.hardware.kernels import dynamic as _dynamic  # noqa: F401 - registers its handler
from workbench.hardware.kernels import embedding as _embedding  # noqa: F401 - registers its handlers
from workbench.hardware.kernels import linear as _linear  # noqa: F401 - registers its handlers
from workbench.hardware.kernels.apply import deploy_layers
from workbench.hardware.kernels.codes import WeightCodes, weight_codes
from workbench.hardware.kernels.modules import (
    Bf16Layer,
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    PackedEmbedding,
)
from workbench.hardware.kernels.registry import (
    FALLBACK,
    KERNEL_MENU,
    LAYER_KINDS,
    KernelChoice,
    KernelError,
    KernelFallbackWarning,
    KernelHandler,
    choose_kernel,
    layer_kind,
    menu,
    menu_table,
    register_kernel,
)

__all__ = [
    "FALLBACK",
    "KERNEL_MENU",
    "LAYER_KINDS",
    "Bf16Layer",
    "Int4WeightOnlyLinear",
    "Int8WeightOnlyLinear",
    "KernelChoice",
    "KernelError",
    "KernelFallbackWarning",
    "KernelHandler",
    "PackedEmbedding",
    "WeightCodes",
    "choose_kernel",
    "deploy_layers",
    "layer_kind",
    "menu",
    "menu_table",
    "register_kernel",
    "weight_codes",
]
