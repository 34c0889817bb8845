"""compare_step_times: interleaved FP32 and QAT steps on private copies (counts only, no timing asserts)."""

from __future__ import annotations

import pytest

from tests.qat.helpers import _same_state, _state
from workbench.qat import QATConfig, QATError, compare_step_times

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_compare_step_times_counts_and_leaves_the_task_model(tiny_task):
    before = _state(tiny_task.model)
    t = compare_step_times(
        tiny_task, "uniform:w4a8:per_channel", QATConfig(distill_weight=0.5), steps=3, warmup=1
    )
    assert t.steps == 3 and t.warmup == 1 and len(t.fp32_times_ms) == len(t.qat_times_ms) == 3
    assert t.fp32_ms > 0 and t.qat_ms > 0 and t.ratio == t.qat_ms / t.fp32_ms
    assert set(t.to_dict()) == {"fp32_ms", "qat_ms", "ratio", "steps", "warmup", "threads"}
    assert _same_state(before, _state(tiny_task.model))
    with pytest.raises(QATError, match="steps must be an int >= 1"):
        compare_step_times(tiny_task, "uniform:w4a8", steps=0)
