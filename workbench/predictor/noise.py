"""Per-layer quantization noise of a model for the featurizer: weight noise power at every bit width and
activation noise power from the layers' input variance."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.devices import model_device
from workbench.quant import QuantSpec, quantize_weight
from workbench.quant.inputs import call_model, move_inputs
from workbench.quant.swap import conv_bn_pairs, fold_batchnorm
from workbench.tasks.task import TaskLike


def _weight_noise(
    model: nn.Module, names: Sequence[str], bits: Sequence[int], granularity: str
) -> tuple[np.ndarray, np.ndarray]:
    """(absolute ||W - Q(W)||^2, relative ||W - Q(W)||^2 / ||W||^2), each ``[n_layers, len(bits)]``, of the
    BatchNorm-folded weights as :func:`quantize_model` quantizes them."""
    folded = copy.deepcopy(model).eval()
    fold_batchnorm(folded, conv_bn_pairs(folded))
    absolute = np.zeros((len(names), len(bits)))
    relative = np.zeros((len(names), len(bits)))
    with torch.no_grad():
        for i, name in enumerate(names):
            w = folded.get_submodule(name).weight.detach().float()
            power = float(w.pow(2).sum())
            for j, b in enumerate(bits):
                if b >= 32:
                    continue
                gran = granularity if b < 16 else "per_tensor"
                err = float((quantize_weight(w, QuantSpec(w_bits=b, granularity=gran)) - w).pow(2).sum())
                absolute[i, j] = err
                relative[i, j] = err / power if power > 0 else 0.0
    return absolute, relative


@torch.no_grad()
def _input_variance(model: nn.Module, names: Sequence[str], x: Any) -> np.ndarray:
    """Variance of each layer's input over one batch."""
    out: dict[str, float] = {}
    handles = []
    modules = dict(model.named_modules())

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple) -> None:
            out[name] = float(args[0].detach().float().var())

        return fn

    for n in names:
        handles.append(modules[n].register_forward_pre_hook(hook(n)))
    was_training = model.training
    try:
        model.eval()
        call_model(model, move_inputs(x, model_device(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return np.array([out.get(n, 0.0) for n in names])


def _act_noise_table(input_var: np.ndarray, bits: Sequence[int]) -> np.ndarray:
    """Activation noise power proxy ``input_var * 2**(-2 * a_bits)`` (16 bits: 8 mantissa bits; 32: 0)."""
    eff = np.array([b if b < 16 else (8 if b == 16 else np.inf) for b in bits], dtype=np.float64)
    return input_var[:, None] * np.power(2.0, -2.0 * eff)[None, :]


def _profile_input_var(profile: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """Per-layer ``input_var`` of a :func:`workbench.profiling.profile_model` frame."""
    if "input_var" not in profile.columns:
        raise ValueError("profile must be a profile_model frame with an 'input_var' column")
    prof = profile.set_index("layer") if "layer" in profile.columns else profile
    missing = [n for n in names if n not in prof.index]
    if missing:
        raise ValueError(f"profile has no rows for layer(s) {missing}")
    return prof.loc[list(names), "input_var"].to_numpy(dtype=np.float64)


def _example_batch(task: TaskLike, n: int = 64) -> torch.Tensor:
    try:
        return task.example_input(n)
    except ValueError:
        return task.example_input(1)
