"""evaluate_predictors (workbench.predictor.evaluate): k-fold rank correlation."""

from __future__ import annotations

import contextlib

import pytest

from tests.predictor.helpers import synthetic_dataset
from workbench.predictor import PlanDataset, PlanFeaturizer, evaluate_predictors


def test_evaluate_predictors_kfold(featurizer: PlanFeaturizer, built: PlanDataset) -> None:
    table = evaluate_predictors(built, featurizer, models=("ridge", "gbt"), k=4, throughput_n=1000)
    assert list(table["model"]) == ["ridge", "gbt"]
    assert (table["n_train"] == 27).all() and (table["n_test"] == 9).all()
    uneven = evaluate_predictors(
        built.subset(range(35)), featurizer, models=("ridge",), k=3, throughput_n=100
    )
    assert uneven.loc[0, "n_train"] + uneven.loc[0, "n_test"] == 35 and uneven.loc[0, "n_test"] == 12
    assert table[["spearman", "kendall", "mae", "plans_per_second"]].notna().all().all()
    assert (table["spearman"] > 0.3).all()  # real measured plans, tiny dataset: ranks well above chance
    folds = table.attrs["folds"]
    assert len(folds) == 8 and set(folds["fold"]) == {0, 1, 2, 3}
    preds = table.attrs["predictions"]
    assert len(preds) == 72 and set(preds[preds.model == "gbt"]["plan_id"]) == set(built.frame["plan_id"])


def test_evaluate_predictors_synthetic_is_accurate(featurizer: PlanFeaturizer) -> None:
    table = evaluate_predictors(
        synthetic_dataset(featurizer, 100), featurizer, models=("ridge",), k=5, transform="none"
    )
    assert table.loc[0, "spearman"] > 0.95 and table.loc[0, "n_test"] == 20


def test_evaluate_predictors_logs_through_tracking(
    featurizer: PlanFeaturizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calls into workbench.tracking (a real MLflow store is exercised in test_tracking.py)."""
    from workbench import tracking

    logged: dict[str, object] = {"metrics": {}, "tables": []}

    class Recorder:
        def log_metrics(self, metrics, step=None):
            logged["metrics"].update(metrics)

        def log_dataframe(self, df, name):
            logged["tables"].append(name)

    @contextlib.contextmanager
    def fake_start_run(stage, **kwargs):
        logged["stage"], logged["params"] = stage, kwargs.get("params")
        yield Recorder()

    monkeypatch.setattr(tracking, "start_run", fake_start_run)
    table = evaluate_predictors(
        synthetic_dataset(featurizer, 40), featurizer, models=("ridge",), k=4, track=True
    )
    assert logged["stage"] == "predictor" and logged["params"]["k"] == 4
    assert logged["metrics"]["ridge.spearman"] == table.loc[0, "spearman"]
    assert logged["tables"] == ["predictor_eval", "predictor_folds"]
