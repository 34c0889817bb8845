"""Deployment: a plan on real kernels of this CPU, measured against FP32 side by side.

Parts: :mod:`.inputs` (which path suits the model's inputs), :mod:`.fx_int8` (the torch.ao FX int8 handler; its
graph passes in :mod:`.fx_graph`), :mod:`.convert` (:func:`deploy`, the verb), :mod:`.fidelity` (simulated and
deployed side by side against FP32), :mod:`.compare` (:func:`measure_deployment`, :func:`compare_kernels`,
each logging its run through :func:`workbench.tracking.log_stage`); CPU facts and side-by-side timing live in
:mod:`workbench.hardware.timing`.
"""

from workbench.hardware.deploy.compare import (
    DeployConfig,
    DeployResult,
    compare_kernels,
    kernel_metrics,
    measure_deployment,
)
from workbench.hardware.deploy.convert import (
    DEFAULT_PROFILE,
    ENGINES,
    EXECUTABLE,
    DeployedModel,
    _baked_float_model,
    _check_device,
    deploy,
    load_profile,
    resolve_engine,
)
from workbench.hardware.deploy.fidelity import SIM_COSINE_MIN, SimulationMismatchWarning, deployment_fidelity
from workbench.hardware.deploy.fx_graph import channels_last
from workbench.hardware.deploy.inputs import (
    KERNELS,
    DeployInputError,
    choose_kernels,
    integer_inputs,
    static_input_problem,
)
from workbench.hardware.kernels.modules import Bf16Layer
from workbench.hardware.timing import (
    LatencyStats,
    cpu_has_vnni,
    cpu_name,
    keep_freed_memory,
    time_side_by_side,
)

__all__ = [
    "DEFAULT_PROFILE",
    "ENGINES",
    "EXECUTABLE",
    "KERNELS",
    "SIM_COSINE_MIN",
    "Bf16Layer",
    "DeployConfig",
    "DeployInputError",
    "DeployResult",
    "DeployedModel",
    "LatencyStats",
    "SimulationMismatchWarning",
    "_baked_float_model",
    "_check_device",
    "channels_last",
    "choose_kernels",
    "compare_kernels",
    "cpu_has_vnni",
    "cpu_name",
    "keep_freed_memory",
    "deploy",
    "deployment_fidelity",
    "integer_inputs",
    "kernel_metrics",
    "load_profile",
    "measure_deployment",
    "resolve_engine",
    "static_input_problem",
    "time_side_by_side",
]
