"""Hardware: precision profiles (measured and reference), kernel dispatch, cost estimator, real-kernel deploy."""

from workbench.hardware.dispatch import DispatchWarning, LayerDispatch, dispatch_plan, dispatch_table
from workbench.hardware.estimate import CostEstimator, PlanEstimate, estimate_plans
from workbench.hardware.profile import (
    OPS,
    PRECISIONS,
    PrecisionProfile,
    ProfileError,
    available_profiles,
    load_profile,
)

__all__ = [
    "OPS",
    "PRECISIONS",
    "CostEstimator",
    "DispatchWarning",
    "LayerDispatch",
    "PlanEstimate",
    "PrecisionProfile",
    "ProfileError",
    "available_profiles",
    "dispatch_plan",
    "dispatch_table",
    "estimate_plans",
    "load_profile",
]
