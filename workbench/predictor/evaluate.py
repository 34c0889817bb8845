"""K-fold evaluation of predictor models on held-out plans: rank correlation (Spearman, Kendall), MAE and
throughput (:func:`evaluate_predictors`)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from workbench.predictor.config import MIN_FIT_PLANS
from workbench.predictor.dataset import PlanDataset
from workbench.predictor.features import PlanFeaturizer
from workbench.predictor.models import _MODELS, MODEL_NAMES
from workbench.predictor.predictor import AccuracyPredictor, _check_transform


def min_plans_for_folds(k: int) -> int:
    """The fewest plans ``k``-fold evaluation takes (``MIN_FIT_PLANS`` to fit per fold, two per fold)."""
    return max(2 * k, math.ceil(MIN_FIT_PLANS * k / (k - 1)))


def evaluate_predictors(
    dataset: PlanDataset,
    featurizer: PlanFeaturizer,
    models: Sequence[str] = ("ridge", "mlp", "gbt", "ensemble"),
    *,
    k: int = 5,
    seed: int = 0,
    target: str = "acc_drop",
    transform: str = "signed_log1p",
    throughput_n: int = 10000,
    model_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    track: bool = False,
) -> pd.DataFrame:
    """K-fold cross-validation over held-out plans, one row per model: mean (and std over folds) of Spearman,
    Kendall and MAE, the Spearman of all out-of-fold predictions pooled, per-fold n_train / n_test, fit
    seconds and plans_per_second (of the last fold's predictor). ``df.attrs["folds"]`` holds the per-fold
    rows and ``df.attrs["predictions"]`` the out-of-fold predictions (plan_id, model, fold, y_true, y_pred).
    ``track`` logs the table, the folds and ``<model>.spearman`` / ``kendall`` / ``mae`` /
    ``plans_per_second`` to an MLflow run of stage "predictor"."""
    from sklearn.model_selection import KFold

    n = _check_evaluation(dataset, models, k, transform)
    y = dataset.target(target)
    folds = list(KFold(n_splits=k, shuffle=True, random_state=seed).split(np.arange(n)))
    settings = {"target": target, "transform": transform, "seed": seed}
    fold_rows: list[dict[str, Any]] = []
    pred_rows: list[pd.DataFrame] = []
    summary: list[dict[str, Any]] = []
    for name in models:
        kwargs = dict((model_kwargs or {}).get(name, {}))
        oof, last, rows, preds = _cross_validate(dataset, featurizer, name, folds, y, settings, kwargs)
        fold_rows += rows
        pred_rows += preds
        summary.append(_summary_row(name, fold_rows, y, oof, last, k, throughput_n))
    table = pd.DataFrame(summary)
    table.attrs["folds"] = pd.DataFrame(fold_rows)
    table.attrs["predictions"] = pd.concat(pred_rows, ignore_index=True)
    if track:
        params = {"k": k, "seed": seed, "target": target, "transform": transform, "models": list(models),
                  "n_plans": n, "dataset": dataset.info.get("key")}  # fmt: skip
        _track_evaluation(table, summary, params)
    return table


def _check_evaluation(dataset: PlanDataset, models: Sequence[str], k: Any, transform: str) -> int:
    """The number of plans of ``dataset``, after checking the model names, ``k``, ``transform`` and that every
    fold leaves enough plans to fit."""
    unknown = [m for m in models if m not in _MODELS]
    if unknown or not models:
        raise ValueError(f"unknown predictor model(s) {unknown}; choose from {list(MODEL_NAMES)}")
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an int >= 2 folds, got {k!r}")
    _check_transform(transform)
    n = len(dataset)
    need = min_plans_for_folds(k)
    if n < need:
        raise ValueError(
            f"{k}-fold evaluation needs at least {need} plans ({MIN_FIT_PLANS} to fit per fold), got {n}"
        )
    return n


def _cross_validate(
    dataset: PlanDataset,
    featurizer: PlanFeaturizer,
    name: str,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    y: np.ndarray,
    settings: Mapping[str, Any],
    kwargs: Mapping[str, Any],
) -> tuple[np.ndarray, AccuracyPredictor | None, list[dict[str, Any]], list[pd.DataFrame]]:
    """Fit model ``name`` on each fold's training plans and predict its test plans: (out-of-fold predictions,
    the last fold's predictor, one row per fold, one frame of predictions per fold)."""
    oof = np.full(len(dataset), np.nan)
    last: AccuracyPredictor | None = None
    fold_rows: list[dict[str, Any]] = []
    pred_rows: list[pd.DataFrame] = []
    for f, (tr, te) in enumerate(folds):
        t0 = time.perf_counter()
        pred = AccuracyPredictor.fit(dataset.subset(tr), featurizer, model=name, **settings, **kwargs)
        fit_s = time.perf_counter() - t0
        p = pred.predict(dataset.subset(te))
        oof[te] = p
        last = pred
        fold_rows.append(_fold_row(name, f, y, tr, te, p, fit_s))
        pred_rows.append(
            pd.DataFrame(
                {
                    "plan_id": dataset.frame["plan_id"].to_numpy()[te],
                    "model": name,
                    "fold": f,
                    "y_true": y[te],
                    "y_pred": p,
                }  # fmt: skip
            )
        )
    return oof, last, fold_rows, pred_rows


def _fold_row(
    name: str, fold: int, y: np.ndarray, tr: np.ndarray, te: np.ndarray, p: np.ndarray, fit_s: float
) -> dict[str, Any]:
    """Spearman, Kendall and MAE of one fold's test predictions ``p``, its plan counts and fit seconds."""
    from scipy import stats

    ok = np.isfinite(y[te])  # plans without a finite target are not scored (fit drops them too)
    return {
        "model": name,
        "fold": fold,
        "spearman": float(stats.spearmanr(y[te][ok], p[ok]).statistic),
        "kendall": float(stats.kendalltau(y[te][ok], p[ok]).statistic),
        "mae": float(np.mean(np.abs(y[te][ok] - p[ok]))),
        "n_train": int(np.isfinite(y[tr]).sum()),
        "n_test": int(ok.sum()),
        "fit_seconds": fit_s,
    }


def _summary_row(
    name: str,
    fold_rows: Sequence[Mapping[str, Any]],
    y: np.ndarray,
    oof: np.ndarray,
    last: AccuracyPredictor | None,
    k: int,
    throughput_n: int,
) -> dict[str, Any]:
    """One model's row of the table: means and stds over its folds, the pooled Spearman, throughput."""
    from scipy import stats

    per = pd.DataFrame([r for r in fold_rows if r["model"] == name])
    return {
        "model": name,
        "spearman": per["spearman"].mean(),
        "spearman_std": per["spearman"].std(ddof=0),
        "kendall": per["kendall"].mean(),
        "kendall_std": per["kendall"].std(ddof=0),
        "mae": per["mae"].mean(),
        "mae_std": per["mae"].std(ddof=0),
        "spearman_pooled": float(stats.spearmanr(y[np.isfinite(y)], oof[np.isfinite(y)]).statistic),
        "n_train": int(np.isfinite(y).sum()) - round(per["n_test"].mean()),  # mean fold sizes
        "n_test": round(per["n_test"].mean()),
        "k": k,
        "fit_seconds": per["fit_seconds"].mean(),
        "plans_per_second": last.plans_per_second(throughput_n) if last is not None else math.nan,
    }


def _track_evaluation(
    table: pd.DataFrame, summary: Sequence[Mapping[str, Any]], params: dict[str, Any]
) -> None:
    """Log ``<model>.spearman`` / ``kendall`` / ``mae`` / ``plans_per_second``, the table and the folds to an
    MLflow run of stage "predictor"."""
    from workbench import tracking

    with tracking.start_run("predictor", run_name="predictor-eval", params=params) as run:
        for row in summary:
            run.log_metrics(
                {f"{row['model']}.{m}": row[m] for m in ("spearman", "kendall", "mae", "plans_per_second")}
            )
        run.log_dataframe(table, "predictor_eval")
        run.log_dataframe(table.attrs["folds"], "predictor_folds")
