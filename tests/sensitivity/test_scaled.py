"""ScaledSensitivity: probed widths keep their measured values, the others follow the layer's exact weight
quantization noise from the nearest probed width (the wider on a tie), and everything else is the result's."""

from __future__ import annotations

import pytest

from workbench.quant import QuantSpec
from workbench.quant.error import weight_error
from workbench.quant.modules import quantize_weight
from workbench.sensitivity import SensitivityConfig, analyze_sensitivity
from workbench.sensitivity.scaled import ScaledSensitivity


@pytest.fixture(scope="module")
def probed(digits_cnn_task):
    config = SensitivityConfig(w_bits=(2, 4), a_bits=(), granularities=("per_channel",), metrics=("output_mse",),
                               per_channel=False, cost_metric=None, progress=False)  # fmt: skip
    return analyze_sensitivity(digits_cnn_task, config, track=False, cache=False)


def _noise(model, layer: str, bits: int) -> float:
    w = model.get_submodule(layer).weight.detach()
    return weight_error(w, quantize_weight(w, QuantSpec(w_bits=bits, granularity="per_channel"))).mse


def test_unprobed_widths_follow_the_weight_noise_of_the_nearest_probe(probed, digits_cnn_task):
    scaled = ScaledSensitivity(probed, digits_cnn_task.model, (2, 3, 4, 6, 8), base_spec=QuantSpec())
    m = scaled.matrix("output_mse")
    raw = probed.matrix("output_mse")
    assert list(m.columns) == [2, 3, 4, 6, 8]
    assert (m[2] == raw[2]).all() and (m[4] == raw[4]).all()  # measured values kept exactly
    model = digits_cnn_task.model
    for layer in m.index:
        for b, b0 in ((3, 4), (6, 4), (8, 4)):  # 3 is as near 2 as 4: the wider probe wins
            expected = raw.loc[layer, b0] * _noise(model, layer, b) / _noise(model, layer, b0)
            assert m.loc[layer, b] == pytest.approx(expected, rel=1e-12)
        assert m.loc[layer, 8] < m.loc[layer, 6] < m.loc[layer, 4]  # less noise, less error
    assert scaled.matrix("output_mse", bits=(8, 2)).columns.tolist() == [8, 2]
    assert scaled.metrics() == probed.metrics() and scaled.layer_names == probed.layer_names
    assert scaled.info["scaled_to_bits"] == [2, 3, 4, 6, 8]
