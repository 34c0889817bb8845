"""Relaxed bit widths: the bit penalty lowers the bits and the run ends with a discrete plan."""

from __future__ import annotations

import pytest

from workbench.qat import MixedBitWeightQuantizer, QATConfig, train_qat
from workbench.quant import QuantPlan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bit_penalty_lowers_bits_and_ends_with_a_discrete_plan(tiny_task):
    plan = QuantPlan.from_shorthand("uniform:w4a8:per_channel", tiny_task.model)
    bits = []
    for penalty in (0.0001, 0.2, 1.0):
        config = QATConfig(bit_penalty=penalty, epochs=2, relax_fraction=1.0, bit_init=0.5, bit_lr=0.5)
        r = train_qat(tiny_task, plan, config, track=False, progress=False)
        r.final_plan.validate(tiny_task.model)
        assert set(r.final_plan) == set(plan)
        assert all(s.w_bits in config.bit_candidates and s.a_bits == 8 for s in r.final_plan.layers.values())
        assert not any(isinstance(m, MixedBitWeightQuantizer) for m in r.model.modules())
        assert r.model.quant_plan == r.final_plan and r.packed_bytes > 0
        assert r.history["expected_bits"].notna().all()
        bits.append(r.avg_weight_bits)
    # measured: 4.0, 2.52, 2.19 (the 4-bit plan's width starts most likely; the penalty pulls towards 2)
    assert bits[0] >= bits[1] >= bits[2] and bits[2] <= bits[0] - 1.5, bits
