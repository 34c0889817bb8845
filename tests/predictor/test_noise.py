"""Per-layer quantization noise tables of the featurizer (workbench.predictor.noise)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from workbench.predictor.noise import _act_noise_table, _profile_input_var, _weight_noise


def test_activation_noise_power_halves_per_bit_squared() -> None:
    table = _act_noise_table(np.array([1.0, 4.0]), [2, 8, 16, 32])
    expected = np.array([[2.0**-4, 2.0**-16, 2.0**-16, 0.0], [4 * 2.0**-4, 4 * 2.0**-16, 4 * 2.0**-16, 0.0]])
    np.testing.assert_allclose(table, expected, rtol=1e-12)  # 16 bits: 8 mantissa bits; 32 bits: none


def test_weight_noise_falls_with_bits_and_is_relative_to_the_weight_power() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    absolute, relative = _weight_noise(model, ["0", "2"], [2, 4, 8, 32], "per_channel")
    assert absolute.shape == relative.shape == (2, 4)
    assert (absolute[:, -1] == 0).all() and (np.diff(absolute, axis=1) < 0).all()
    for i, name in enumerate(["0", "2"]):
        power = float(model.get_submodule(name).weight.detach().pow(2).sum())
        np.testing.assert_allclose(relative[i], absolute[i] / power, rtol=1e-12)
    assert 0 < relative[0, 0] < 1 and relative[0, 2] < relative[0, 0] / 100  # 8 bits: far below 2 bits


def test_profile_input_variance_follows_the_layer_order() -> None:
    profile = pd.DataFrame({"layer": ["b", "a"], "input_var": [2.0, 3.0]})
    np.testing.assert_array_equal(_profile_input_var(profile, ["a", "b"]), [3.0, 2.0])
    with pytest.raises(ValueError, match=r"no rows for layer\(s\) \['c'\]"):
        _profile_input_var(profile, ["a", "c"])
