"""PlanFeaturizer (workbench.predictor.features) on digits_cnn."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tests.predictor.helpers import fake_sensitivity
from workbench import predictor as P
from workbench.predictor import PlanDataset, PlanFeaturizer
from workbench.quant import PlanError, QuantPlan, QuantSpec, quantizable_layers
from workbench.tasks import Task


def test_featurizer_plans_and_arrays_agree(featurizer: PlanFeaturizer, built: PlanDataset) -> None:
    X = featurizer.transform(built)
    assert X.shape == (36, len(featurizer.feature_names)) and np.isfinite(X).all()
    np.testing.assert_array_equal(featurizer.transform(built.plans), X)
    np.testing.assert_array_equal(featurizer.transform(built.bit_array()), X)
    w, _ = built.bits()
    np.testing.assert_array_equal(featurizer.transform(w), X)  # activations default to 8 bits
    np.testing.assert_array_equal(featurizer.transform(built.plans[3]), X[3:4])
    names = featurizer.feature_names
    assert {
        "log_sens_omega:conv1",
        "log_sens_output_mse:fc2",
        "sum_sens_output_mse",
        "avg_weight_bits",
    } <= set(names)
    # omega at the plan's bits, gathered per layer, is the table lookup
    col = names.index("log_sens_omega:fc1")
    j = featurizer.bits.index(int(w[5, 2]))
    table = featurizer.w_tables["sens_omega"]
    assert X[5, col] == pytest.approx(math.log(table[2, j] + P._log_floor(table)))
    assert featurizer.transform(np.array([[8, 8, 8, 8]]))[0, names.index("avg_weight_bits")] == 8.0


def test_featurizer_rejects_bad_plans(featurizer: PlanFeaturizer) -> None:
    with pytest.raises(PlanError, match="unknown layer"):
        featurizer.transform([QuantPlan({"nope": QuantSpec(w_bits=4)})])
    with pytest.raises(ValueError, match="expected"):
        featurizer.transform(np.full((3, 5), 8))
    with pytest.raises(ValueError, match=r"\[7\]"):
        featurizer.transform(np.array([[8, 7, 8, 8]]))
    partial = featurizer.transform(QuantPlan({"conv1": QuantSpec(w_bits=4)}))  # other layers stay float32
    np.testing.assert_array_equal(
        partial, featurizer.transform(np.array([[[4, 8], [32, 32], [32, 32], [32, 32]]]))
    )


def test_featurizer_works_with_partial_or_no_sensitivity(task: Task, built: PlanDataset) -> None:
    bare = PlanFeaturizer.fit(task)
    only_mse = PlanFeaturizer.fit(task, fake_sensitivity(task, metrics=("output_mse",)))
    assert not any("sens_" in n for n in bare.feature_names)
    assert any("sens_output_mse" in n for n in only_mse.feature_names)
    assert "trace_noise" in only_mse.w_tables  # Hessian trace x weight noise stands in for the missing omega
    for f in (bare, only_mse):
        X = f.transform(built)
        assert X.shape[0] == 36 and np.isfinite(X).all()


def test_featurizer_uses_profile_input_variance(task: Task) -> None:
    names = quantizable_layers(task.model)
    profile = pd.DataFrame({"layer": names, "input_var": [1.0, 2.0, 4.0, 8.0]})
    f = PlanFeaturizer.fit(task, profile=profile)
    np.testing.assert_allclose(f.a_tables["act_noise"][:, f.bits.index(8)], np.array([1, 2, 4, 8]) * 2.0**-16)
    with pytest.raises(ValueError, match="input_var"):
        PlanFeaturizer.fit(task, profile=profile.drop(columns="input_var"))
