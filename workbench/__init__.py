"""Adaptive mixed-precision quantization workbench for PyTorch models."""

from workbench.paths import data_dir, project_root

__all__ = ["data_dir", "project_root"]
__version__ = "0.1.0"
