"""AccuracyPredictor (workbench.predictor.predictor): uncertainty, signed save / load, bad inputs."""

from __future__ import annotations

import pickletools
from pathlib import Path

import numpy as np
import pytest

from tests.predictor.helpers import BITS, synthetic_dataset
from workbench.predictor import AccuracyPredictor, PlanDataset, PlanFeaturizer, evaluate_predictors


def test_ensemble_uncertainty_and_save_load(
    featurizer: PlanFeaturizer, built: PlanDataset, tmp_path: Path
) -> None:
    pred = AccuracyPredictor.fit(built, featurizer, model="ensemble", n_members=4)
    mean, std = pred.predict_with_uncertainty(built)
    np.testing.assert_allclose(mean, pred.predict(built))
    assert std.shape == (36,) and (std >= 0).all() and std.max() > 0
    path = pred.save(tmp_path / "pred.joblib")
    with pytest.raises(FileExistsError):
        pred.save(path)
    back = AccuracyPredictor.load(path)
    edited = tmp_path / "edited.joblib"  # one byte of the signed pickle changed: refused before unpickling
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 1
    edited.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="fails its signature check"):
        AccuracyPredictor.load(edited)
    arr = np.random.default_rng(0).choice(BITS, size=(500, 4))
    np.testing.assert_array_equal(back.predict(arr), pred.predict(arr))
    np.testing.assert_array_equal(
        back.predict_with_uncertainty(arr)[1], pred.predict_with_uncertainty(arr)[1]
    )
    gbt = AccuracyPredictor.fit(built, featurizer, model="gbt")
    with pytest.raises(ValueError, match="ensemble"):
        gbt.predict_with_uncertainty(built)


def test_bad_inputs_name_counts_and_choices(featurizer: PlanFeaturizer, built: PlanDataset) -> None:
    with pytest.raises(ValueError, match=r"at least 10 .* got 6"):
        AccuracyPredictor.fit(built.subset(range(6)), featurizer)
    with pytest.raises(ValueError, match=r"at least 13 plans .* got 12"):
        evaluate_predictors(built.subset(range(12)), featurizer, models=("ridge",), k=5)
    with pytest.raises(ValueError, match="ridge"):
        AccuracyPredictor.fit(built, featurizer, model="forest")
    with pytest.raises(ValueError, match="choose from"):
        evaluate_predictors(built, featurizer, models=("forest",))
    with pytest.raises(ValueError, match="transform"):
        AccuracyPredictor.fit(built, featurizer, transform="sqrt")
    with pytest.raises(FileNotFoundError):
        AccuracyPredictor.load("/nonexistent/pred.joblib")


def test_saved_predictor_names_its_classes_by_the_package(featurizer: PlanFeaturizer, tmp_path: Path) -> None:
    """A saved predictor names every class as the flat module did (workbench.predictor.<name>), whichever part
    defines it, so files written before and after the split are alike."""
    pred = AccuracyPredictor.fit(
        synthetic_dataset(featurizer, 30),
        featurizer,
        model="ensemble",
        members=("ridge", "mlp", "gbt"),
        n_members=3,
        member_kwargs={"mlp": {"steps": 5}, "gbt": {"n_estimators": 5}},
    )
    payload = pred.save(tmp_path / "pred.pkl").read_bytes()[len(b"WBPRED2\n") + 32 :]
    strings = [arg for _, arg, _ in pickletools.genops(payload) if isinstance(arg, str)]
    assert {s for s in strings if s.startswith("workbench")} == {"workbench.predictor"}
    classes = {
        "AccuracyPredictor",
        "PlanFeaturizer",
        "EnsembleModel",
        "RidgeModel",
        "MLPModel",
        "_MLP",
        "GBTModel",
    }
    assert classes <= set(strings)
