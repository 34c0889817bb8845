"""User metrics: registering, replacing, refusing a taken name, unregistering; and config validation."""

from __future__ import annotations

import pytest

from tests.sensitivity.helpers import _cheap
from workbench.sensitivity import (
    OutputMetric,
    SensitivityConfig,
    SensitivityMetric,
    analyze_sensitivity,
    available_metrics,
    register_metric,
    unregister_metric,
)


def test_user_metrics_register_and_appear(cnn_task):
    class MaxAbsLogitError(OutputMetric):
        name = "max_abs_logit"

        def score(self, reference, quantized, targets):
            return float((quantized - reference).abs().max())

    class WeightNorm(SensitivityMetric):
        name = "weight_norm"
        kind = "layer"

        def compute(self, ctx):
            from workbench.sensitivity import MetricOutput

            out = MetricOutput()
            for info in ctx.layers:
                out.add(info.name, float(ctx.weight(info.name).norm()), metric=self.name)
            return out

    register_metric(MaxAbsLogitError)
    register_metric(WeightNorm)
    try:
        register_metric(MaxAbsLogitError)  # re-running the defining cell is fine
        assert {"max_abs_logit", "weight_norm"} <= set(available_metrics())

        class Impostor(OutputMetric):
            name = "max_abs_logit"

        with pytest.raises(ValueError, match="taken"):
            register_metric(Impostor)
        cfg = _cheap(metrics=("output_mse", "max_abs_logit", "weight_norm"), cost_metric="max_abs_logit")
        r = analyze_sensitivity(cnn_task, cfg, cache=False)
        assert {"output_mse", "max_abs_logit", "weight_norm"} == set(r.metrics())
        m = r.matrix("max_abs_logit")
        assert (m[2] > m[8]).all()
        mse = r.matrix("output_mse")
        assert (m.pow(2) >= mse).all().all()  # the max squared error bounds the mean one
        norms = r.layer_values("weight_norm")
        assert norms["fc1"] == pytest.approx(float(cnn_task.model.fc1.weight.detach().norm()))
        assert set(r.cost_benefit["metric"]) == {"max_abs_logit"}
    finally:
        unregister_metric("max_abs_logit")
        unregister_metric("weight_norm")
    assert "max_abs_logit" not in available_metrics()
    with pytest.raises(ValueError, match="available"):
        SensitivityConfig(metrics=("max_abs_logit",))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"w_bits": (4, 7)}, r"unsupported bits \[7\]; valid bits: \[2, 3, 4, 5, 6, 8\]"),
        ({"w_bits": (16,)}, "valid bits"),
        ({"w_bits": ()}, "must not be empty"),
        ({"a_bits": (1,)}, "valid bits"),
        ({"granularities": ("per_group",)}, "choose from"),
        ({"metrics": ("output_mse", "nope")}, "unknown sensitivity metric 'nope'; available"),
        ({"metrics": ()}, "must not be empty"),
        ({"calib_batches": 0}, "calib_batches must be an int >= 1"),
        ({"hutchinson_min_iter": 50, "hutchinson_max_iter": 10}, "exceeds"),
        ({"hutchinson_tol": -1.0}, "hutchinson_tol"),
        ({"reference_bits": 7}, "reference_bits"),
        ({"cost_metric": "fisher"}, "per-bit weight metric"),
        ({"metrics": ("fisher",)}, "cost_metric='output_mse'"),
        ({"probe_cache_mb": -1}, "probe_cache_mb"),
        ({"num_threads": 0}, "num_threads must be an int >= 1"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SensitivityConfig(**kwargs)


def test_config_normalises():
    cfg = SensitivityConfig(w_bits=[8, 2, 4, 4], metrics=["fisher"], cost_metric=None)
    assert cfg.w_bits == (2, 4, 8) and cfg.metrics == ("fisher",)
    assert SensitivityConfig(metrics=("hessian",), cost_metric="omega").per_bit_weight_metrics() == ["omega"]
