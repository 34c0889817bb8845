"""What a replication solves and compares: :class:`ReplicationConfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workbench.search.hawq_replication.ilp import _check_alpha
from workbench.search.hawq_replication.inputs import (
    CONSTRAINTS,
    DEFAULT_DATA,
    MODELS,
    PAPER_ALPHAS,
    _check_choice,
)


@dataclass(frozen=True, kw_only=True)
class ReplicationConfig:
    """What :func:`run_replication` solves and compares.

    ``models`` / ``constraints`` / ``alphas``: the programs (default: the paper's 2 x 3 x 3);
    ``front_alphas``: budgets (evenly spaced alphas in [0, 1]) of the ILP front sweep;
    ``search_trials``: NSGA-II trials per model and constraint (0: no search); ``search_population``: its
    population; ``seed``: its seed; ``max_bruteforce_rows``: brute force when the merged rows are at most this
    many; ``max_dp_cells``: integer-DP grid limit; ``budget_rtol``: relative widening of every limit (float
    summation order); ``data_path``: the data file (default: the package's copy)."""

    models: tuple[str, ...] = MODELS
    constraints: tuple[str, ...] = CONSTRAINTS
    alphas: tuple[float, ...] = PAPER_ALPHAS
    front_alphas: int = 50
    search_trials: int = 300
    search_population: int = 50
    seed: int = 0
    max_bruteforce_rows: int = 20
    max_dp_cells: int = 2_000_000
    budget_rtol: float = 1e-9
    data_path: str | Path | None = None

    def __post_init__(self) -> None:
        for name, values, valid in (
            ("models", self.models, MODELS),
            ("constraints", self.constraints, CONSTRAINTS),
        ):
            if isinstance(values, str) or not values:
                raise ValueError(f"{name} must be a non-empty tuple of {list(valid)}, got {values!r}")
            for v in values:
                _check_choice(v, valid, name[:-1])
        if isinstance(self.alphas, str) or not self.alphas:
            raise ValueError(f"alphas must be a non-empty tuple of numbers in [0, 1], got {self.alphas!r}")
        for a in self.alphas:
            _check_alpha(a)
        for name, value, low in (
            ("front_alphas", self.front_alphas, 2),
            ("search_trials", self.search_trials, 0),
            ("search_population", self.search_population, 2),
            ("seed", self.seed, 0),
            ("max_bruteforce_rows", self.max_bruteforce_rows, 1),
            ("max_dp_cells", self.max_dp_cells, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.max_bruteforce_rows > 24:
            raise ValueError(
                f"max_bruteforce_rows must be <= 24 (2**24 plans), got {self.max_bruteforce_rows}"
            )
        if not isinstance(self.budget_rtol, int | float) or not 0.0 <= self.budget_rtol <= 1e-6:
            raise ValueError(f"budget_rtol must be a number in [0, 1e-6], got {self.budget_rtol!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_path"] = str(self.data_path) if self.data_path is not None else str(DEFAULT_DATA)
        return d
