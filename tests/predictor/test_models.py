"""The regressor registry (workbench.predictor.models) on synthetic additive targets."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from tests.predictor.helpers import synthetic_dataset
from workbench.predictor import AccuracyPredictor, PlanFeaturizer, make_model


def test_ridge_recovers_additive_target(featurizer: PlanFeaturizer) -> None:
    train = synthetic_dataset(featurizer, 120, seed=1)
    test = synthetic_dataset(featurizer, 200, seed=2)
    pred = AccuracyPredictor.fit(train, featurizer, model="ridge", transform="none")
    rho = scipy.stats.spearmanr(test.target(), pred.predict(test)).statistic
    assert rho > 0.95


@pytest.mark.parametrize("name", ["ridge", "mlp", "gbt", "ensemble"])
def test_every_model_fits_and_ranks(featurizer: PlanFeaturizer, name: str) -> None:
    train = synthetic_dataset(featurizer, 120, seed=1)
    test = synthetic_dataset(featurizer, 100, seed=2)
    kwargs = {"n_members": 3} if name == "ensemble" else {}
    pred = AccuracyPredictor.fit(train, featurizer, model=name, seed=0, **kwargs)
    p = pred.predict(test)
    assert p.shape == (100,) and np.isfinite(p).all()
    assert scipy.stats.spearmanr(test.target(), p).statistic > 0.8
    assert pred.plans_per_second(n=2000, repeats=2) > 0


def test_models_are_seeded(featurizer: PlanFeaturizer) -> None:
    X = featurizer.transform(synthetic_dataset(featurizer, 50))
    y = np.arange(50, dtype=float)
    a = make_model("mlp", seed=3, steps=50).fit(X, y).predict(X)
    b = make_model("mlp", seed=3, steps=50).fit(X, y).predict(X)
    c = make_model("mlp", seed=4, steps=50).fit(X, y).predict(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
