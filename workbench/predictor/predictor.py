"""The facade: :class:`AccuracyPredictor`, a featurizer and a fitted model, saved as a signed pickle."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench._common.io import atomic_write_bytes
from workbench._common.signed import digest_matches, keyed_digest
from workbench.predictor.config import MIN_FIT_PLANS, TRANSFORMS
from workbench.predictor.dataset import PlanDataset
from workbench.predictor.features import PlanFeaturizer
from workbench.predictor.models import MODEL_NAMES, make_model

_FORMAT = "workbench.predictor"
_FORMAT_VERSION = 2
_SIGNED_MAGIC = b"WBPRED2\n"  # then 32 bytes of HMAC-SHA256, then the pickle


def _forward(y: np.ndarray, transform: str) -> np.ndarray:
    if transform == "signed_log1p":
        return np.sign(y) * np.log1p(np.abs(y))
    return y


def _inverse(z: np.ndarray, transform: str) -> np.ndarray:
    if transform == "signed_log1p":
        return np.sign(z) * np.expm1(np.abs(z))
    return z


def _check_transform(transform: str) -> None:
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown target transform {transform!r}; choose one of {list(TRANSFORMS)}")


@dataclass(eq=False)
class AccuracyPredictor:
    """A featurizer and a fitted model: predicts ``target`` of plans (default ``acc_drop``, the metric loss:
    FP32 metric minus metric x 100; accuracy drop in pp for labelled accuracy). ``info`` holds the training
    count, fit time and seed, and (from the dataset) ``metric_name`` and ``output_key`` of the measured task."""

    featurizer: PlanFeaturizer
    model: Any
    model_name: str
    target: str = "acc_drop"
    transform: str = "signed_log1p"
    columns: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        dataset: PlanDataset,
        featurizer: PlanFeaturizer,
        *,
        model: str = "gbt",
        target: str = "acc_drop",
        transform: str = "signed_log1p",
        seed: int = 0,
        **model_kwargs: Any,
    ) -> AccuracyPredictor:
        """Fit ``model`` (by name) on every plan of ``dataset``; ``transform`` is applied to the target before
        fitting and inverted at prediction."""
        _check_transform(transform)
        est = make_model(model, seed=seed, **model_kwargs)
        n = len(dataset)
        if n < MIN_FIT_PLANS:
            raise ValueError(f"a predictor needs at least {MIN_FIT_PLANS} measured plans to fit, got {n}")
        y = dataset.target(target)
        keep = np.isfinite(y)
        if keep.sum() < MIN_FIT_PLANS:
            raise ValueError(
                f"a predictor needs at least {MIN_FIT_PLANS} plans with a finite {target!r}, "
                f"got {int(keep.sum())}"
            )
        X = featurizer.transform(dataset)[keep]
        columns = np.flatnonzero(X.std(axis=0) > 0)  # features constant over the training plans carry nothing
        t0 = time.perf_counter()
        est.fit(X[:, columns], _forward(y[keep], transform))
        info = {"n_train": int(keep.sum()), "fit_seconds": time.perf_counter() - t0, "seed": seed}
        for key in ("metric_name", "output_key"):
            if key in dataset.info:
                info[key] = dataset.info[key]
        return cls(featurizer, est, model, target, transform, columns, info)

    def features(self, plans: Any) -> np.ndarray:
        """The model's input: featurizer output restricted to the features that varied in training."""
        X = self.featurizer.transform(plans)
        return X if self.columns is None else X[:, self.columns]

    def predict(self, plans: Any) -> np.ndarray:
        """Predicted ``target`` of each plan (QuantPlans, a PlanDataset or bit arrays; see
        :meth:`PlanFeaturizer.encode`)."""
        X = self.features(plans)
        if hasattr(self.model, "predict_members"):
            return _inverse(self.model.predict_members(X), self.transform).mean(axis=0)
        return _inverse(self.model.predict(X), self.transform)

    def predict_with_uncertainty(self, plans: Any) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) over the ensemble members, in target units. Needs ``model="ensemble"``."""
        if not hasattr(self.model, "predict_members"):
            raise ValueError(
                f"model {self.model_name!r} gives no uncertainty; fit with model='ensemble' "
                f"(choices: {list(MODEL_NAMES)})"
            )
        members = _inverse(self.model.predict_members(self.features(plans)), self.transform)
        return members.mean(axis=0), members.std(axis=0)

    def plans_per_second(self, n: int = 10000, *, repeats: int = 5, seed: int = 0) -> float:
        """Featurize + predict throughput on ``n`` random bit arrays (median of ``repeats`` timed runs)."""
        rng = np.random.default_rng(seed)
        choices = np.asarray(self.featurizer.count_bits)
        arr = choices[rng.integers(0, len(choices), size=(n, len(self.featurizer.layer_names)))]
        self.predict(arr[: min(n, 64)])  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.predict(arr)
            times.append(time.perf_counter() - t0)
        return n / statistics.median(times)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the predictor (a pickle, signed with this installation's key: see :meth:`load`); refuses to
        replace an existing file unless ``overwrite``."""
        import pickle

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        payload = pickle.dumps({"format": _FORMAT, "version": _FORMAT_VERSION, "predictor": self})
        return atomic_write_bytes(path, _SIGNED_MAGIC + keyed_digest(payload) + payload)

    @classmethod
    def load(cls, path: str | Path) -> AccuracyPredictor:
        """Read a predictor written by :meth:`save` on this installation. A fitted predictor (scikit-learn
        trees, a torch MLP) is stored as a pickle, which could run code; so the file carries an HMAC-SHA256 of
        its content under this installation's secret key (:func:`workbench.paths.signing_key`) and is
        unpickled only when it matches. A file written elsewhere, edited, truncated, or in the old unsigned
        joblib format is refused before any of it is unpickled: rebuild it here (``python -m workbench
        predictor --save``)."""
        import pickle

        from workbench.paths import data_dir

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"predictor file {path} does not exist")
        blob = path.read_bytes()
        head = len(_SIGNED_MAGIC)
        if not blob.startswith(_SIGNED_MAGIC) or len(blob) < head + 32:
            raise ValueError(
                f"{path} is not a signed workbench predictor file (unsigned or old joblib files are pickles and "
                "are never loaded); rebuild it with `python -m workbench predictor --save ...`"
            )
        digest, payload = blob[head : head + 32], blob[head + 32 :]
        if not digest_matches(digest, payload):
            raise ValueError(
                f"predictor file {path} fails its signature check: it was edited, truncated, or written by "
                f"another installation (key {data_dir() / '.signing-key'}); it is not unpickled. Rebuild it here"
            )
        data = pickle.loads(payload)  # signed by this installation's key just above  # noqa: S301
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a workbench predictor file")
        return data["predictor"]
