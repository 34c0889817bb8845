"""The regressor registry: ``ridge``, ``mlp``, ``gbt`` and ``ensemble`` models behind :func:`make_model`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench._common.threads import torch_threads


class RidgeModel:
    """Additive linear baseline: standardized features -> ridge regression (alpha by leave-one-out CV)."""

    name = "ridge"

    def __init__(self, *, alphas: Sequence[float] = tuple(np.logspace(-3, 3, 13)), seed: int = 0) -> None:
        self.alphas = tuple(float(a) for a in alphas)
        self.seed = seed
        self._pipe: Any = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgeModel:
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self._pipe = make_pipeline(StandardScaler(), RidgeCV(alphas=self.alphas)).fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self._pipe.predict(X), dtype=np.float64)


class _MLP(nn.Module):
    def __init__(self, n_in: int, hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class MLPModel:
    """Shallow torch MLP on standardized features and target, trained full-batch with Adam (seeded; dropout
    and weight decay against the small datasets). ``threads``: torch intra-op threads while fitting /
    predicting (restored afterwards; None leaves torch's setting); one is fastest for nets this small."""

    name = "mlp"

    def __init__(
        self,
        *,
        hidden: Sequence[int] = (64, 32),
        steps: int = 500,
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
        dropout: float = 0.1,
        batch_size: int = 65536,
        threads: int | None = 1,
        seed: int = 0,
    ) -> None:
        self.hidden = tuple(int(h) for h in hidden)
        self.steps = int(steps)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.dropout = float(dropout)
        self.batch_size = int(batch_size)
        self.threads = threads
        self.seed = int(seed)
        self._net: _MLP | None = None
        self._x_mean = self._x_std = None
        self._y_mean = 0.0
        self._y_std = 1.0

    def fit(self, X: np.ndarray, y: np.ndarray) -> MLPModel:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self._x_mean = X.mean(axis=0)
        std = X.std(axis=0)
        self._x_std = np.where(std > 1e-12, std, 1.0)
        self._y_mean = float(y.mean())
        self._y_std = float(y.std()) or 1.0
        xt = torch.as_tensor((X - self._x_mean) / self._x_std, dtype=torch.float32)
        yt = torch.as_tensor((y - self._y_mean) / self._y_std, dtype=torch.float32)
        with torch_threads(self.threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _MLP(X.shape[1], self.hidden, self.dropout)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            net.train()
            for _ in range(self.steps):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(net(xt), yt)
                loss.backward()
                opt.step()
        self._net = net.eval()
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self._net is None:
            raise RuntimeError("MLPModel.predict before fit")
        xs = (np.asarray(X, dtype=np.float64) - self._x_mean) / self._x_std
        out = np.empty(len(xs), dtype=np.float64)
        with torch_threads(self.threads), torch.no_grad():
            for i in range(0, len(xs), self.batch_size):
                chunk = torch.as_tensor(xs[i : i + self.batch_size], dtype=torch.float32)
                out[i : i + self.batch_size] = self._net(chunk).double().numpy()
        return out * self._y_std + self._y_mean


class GBTModel:
    """Gradient-boosted trees: scikit-learn ``GradientBoostingRegressor`` (stochastic: each tree sees a
    ``subsample`` of the plans and a ``max_features`` share of the features). Single-threaded, so it predicts
    fast and steadily on a busy machine (``HistGradientBoostingRegressor``'s OpenMP threads do not)."""

    name = "gbt"

    def __init__(
        self,
        *,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        max_depth: int = 4,
        min_samples_leaf: int = 3,
        subsample: float = 0.8,
        max_features: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.params = {
            "n_estimators": int(n_estimators),
            "learning_rate": float(learning_rate),
            "max_depth": int(max_depth),
            "min_samples_leaf": int(min_samples_leaf),
            "subsample": float(subsample),
            "max_features": float(max_features),
        }
        self.seed = int(seed)
        self._est: Any = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> GBTModel:
        from sklearn.ensemble import GradientBoostingRegressor

        self._est = GradientBoostingRegressor(**self.params, random_state=self.seed).fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self._est.predict(X), dtype=np.float64)


class EnsembleModel:
    """Bootstrap ensemble: ``n_members`` models of the kinds in ``members`` (cycled), each fitted on a
    bootstrap resample with its own seed. ``predict`` is the members' mean; ``return_std=True`` adds their
    standard deviation (the uncertainty for active learning)."""

    name = "ensemble"

    def __init__(
        self,
        *,
        members: Sequence[str] = ("gbt", "mlp"),
        n_members: int = 6,
        bootstrap: bool = True,
        seed: int = 0,
        member_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        bad = [m for m in members if m not in _BASE_MODELS]
        if not members or bad:
            raise ValueError(
                f"ensemble members {bad or list(members)} invalid; choose from {list(_BASE_MODELS)}"
            )
        if n_members < 2:
            raise ValueError(f"an ensemble needs n_members >= 2, got {n_members}")
        self.members = tuple(members)
        self.n_members = int(n_members)
        self.bootstrap = bool(bootstrap)
        self.seed = int(seed)
        self.member_kwargs = {k: dict(v) for k, v in (member_kwargs or {}).items()}
        self._fitted: list[Any] = []

    def fit(self, X: np.ndarray, y: np.ndarray) -> EnsembleModel:
        rng = np.random.default_rng([self.seed, 7])
        self._fitted = []
        for i in range(self.n_members):
            kind = self.members[i % len(self.members)]
            idx = rng.integers(0, len(X), size=len(X)) if self.bootstrap else np.arange(len(X))
            model = _BASE_MODELS[kind](seed=self.seed * 1000 + i, **self.member_kwargs.get(kind, {}))
            self._fitted.append(model.fit(X[idx], y[idx]))
        return self

    def predict_members(self, X: np.ndarray) -> np.ndarray:
        """``[n_members, n_plans]`` predictions."""
        return np.stack([m.predict(X) for m in self._fitted])

    def predict(self, X: np.ndarray, *, return_std: bool = False):
        p = self.predict_members(X)
        return (p.mean(axis=0), p.std(axis=0)) if return_std else p.mean(axis=0)


_BASE_MODELS: dict[str, type] = {"ridge": RidgeModel, "mlp": MLPModel, "gbt": GBTModel}
_MODELS: dict[str, type] = {**_BASE_MODELS, "ensemble": EnsembleModel}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


def make_model(name: str, *, seed: int = 0, **kwargs: Any):
    """A fresh, unfitted model by name (``ridge``, ``mlp``, ``gbt``, ``ensemble``)."""
    if name not in _MODELS:
        raise ValueError(f"unknown predictor model {name!r}; choose one of {list(MODEL_NAMES)}")
    return _MODELS[name](seed=seed, **kwargs)
