"""Accuracy predictor (being split into parts)."""

from workbench.predictor.dataset import *  # noqa: F403
from workbench.predictor.dataset import __all__, _drop_map, _log_floor, _MLP  # noqa: F401
