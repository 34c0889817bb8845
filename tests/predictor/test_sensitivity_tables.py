"""Sensitivity matrices completed to every bit width (workbench.predictor.sensitivity_tables)."""

from __future__ import annotations

import numpy as np

from workbench.predictor.sensitivity_tables import _complete_bits


def test_complete_bits_interpolates_and_extrapolates_by_noise_power() -> None:
    probed = {4: np.array([1.0, -1.0]), 8: np.array([1 / 256, -2.0])}
    out = _complete_bits(probed, [2, 4, 6, 8, 16, 32])
    expected = np.array(
        [
            [16.0, 1.0, 1 / 16, 1 / 256, 1 / 256 * 4.0**-8, 0.0],  # below: x4 per bit; between: geometric
            [-1.0, -1.0, -1.5, -2.0, -2.0 * 4.0**-8, 0.0],  # not positive: narrowest kept, linear between
        ]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-12)
