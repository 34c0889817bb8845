"""HAWQ-V3's integer linear program on its own published inputs: replicate the ResNet18 / ResNet50 bit
allocations, verify them independently, and compare a multi-objective search's front with the exact one.

Inputs (``data/hawq_v3_ilp_inputs.json``, the arrays of the public notebook ``ILP.ipynb`` of Zhen-Dong/HAWQ,
HAWQ-V3, Yao, Dong et al., ICML 2021): per layer the Hessian trace (per parameter), ``||W - Q(W)||^2`` at 4 and
8 bits, parameter and BOP counts, and T4 latencies at INT4 / INT8; plus the layer pairs that must share a bit
width (a residual block's first conv and its downsample conv read the same input). The first and last layers of
the networks are not in the program (the notebook says the paper adds them back by hand).

The notebook's program, per model, constraint (``size``, ``bops``, ``latency``) and budget fraction ``alpha``:

* one bit width per layer in {4, 8}; tied layers get the same one;
* per-layer cost at ``b`` bits: size ``params * b / 8`` MB with ``params`` in the notebook's millions
  (ResNet18 counts / 2**20, ResNet50 as published, i.e. / 1e6), BOPs ``bops / 64`` at 4 bits and ``bops / 16`` at
  8 bits in millions (weights and activations at ``b`` bits), latency ``latency_int{b}`` in ms;
* ``limit = cost(all 4) + alpha * (cost(all 8) - cost(all 4))``;
* minimise ``sum trace * ||dW||^2`` at the chosen bits (the notebook minimises this sum minus the constant
  all-4-bit sum: same minimiser).

Here every program is solved with the exact :func:`~workbench.search.baselines.ilp_solve` (HiGHS, zero gap) on
tie-merged rows (tied layers summed into one row, expanded back afterwards), then checked by up to three
independent exact methods: brute force (few merged rows), a depth-first branch and bound on the equivalent 0/1
knapsack, and a dynamic program over integer costs (when the costs lie on a small integer grid). The published
allocations (:data:`PUBLISHED_ALLOCATIONS`) are compared bit by bit and evaluated under the same cost model.

Fronts: the ILP swept over many budgets gives exact points of the (objective, cost) Pareto front; brute force or
the integer DP gives the complete exact front where feasible; a seeded NSGA-II study (Optuna, lookup-table
evaluation) gives a search front. The ILP is exact for each budget, so under this cost model no search can beat
it at the same budget: a search can at most match it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.search.baselines import ilp_solve
from workbench.search.objectives import hypervolume_2d

MODELS: tuple[str, ...] = ("ResNet18", "ResNet50")
CONSTRAINTS: tuple[str, ...] = ("size", "bops", "latency")
BITS: tuple[int, int] = (4, 8)
PAPER_ALPHAS: tuple[float, ...] = (0.25, 0.5, 0.75)
DEFAULT_DATA = Path(__file__).with_name("data") / "hawq_v3_ilp_inputs.json"
_ARRAY_KEYS: tuple[str, ...] = (
    "Hutchinson_trace",
    "delta_weights_4bit_square",
    "delta_weights_8bit_square",
    "parameters",
    "bops",
    "latency_int4",
    "latency_int8",
)

REFERENCE_SOURCE = (
    "Zhen-Dong/HAWQ bit_config.py (commit 1616df69fdd99f100a8d8a6e78742e0a89292634; file last changed "
    "2020-12-14), entries bit_config_{resnet18,resnet50}_{modelsize,bops,latency}_{0.25,0.5,0.75}: weight bits "
    "of quant_convbn1/2(/3) and quant_identity_convbn per unit in stage order (activation bits equal them). "
    "ILP.ipynb itself has no stored outputs (none of its code cells was executed), so it shows no allocation."
)
PUBLISHED_ALLOCATIONS: dict[tuple[str, str, float], str] = {
    ("ResNet18", "size", 0.25): "8888888888888844444",
    ("ResNet18", "size", 0.5): "8888888888888884844",
    ("ResNet18", "size", 0.75): "8888888888888488884",
    ("ResNet18", "bops", 0.25): "8884848444444444444",
    ("ResNet18", "bops", 0.5): "8884888848884444444",
    ("ResNet18", "bops", 0.75): "8888888848888484884",
    ("ResNet18", "latency", 0.25): "8884848444444444444",
    ("ResNet18", "latency", 0.5): "8888848848884484844",
    ("ResNet18", "latency", 0.75): "8888888848888484884",
    ("ResNet50", "size", 0.25): "8888888888888888888888884888448448448444444484444844",
    ("ResNet50", "size", 0.5): "8888888888888888888888884888888448888488488488844844",
    ("ResNet50", "size", 0.75): "8888888888888888888888888888888888888888888488848848",
    ("ResNet50", "bops", 0.25): "8488448844848844444484484884444444444444448488844844",
    ("ResNet50", "bops", 0.5): "8888888848848884884484884888448448448448488488848848",
    ("ResNet50", "bops", 0.75): "8888888848888888888884884888888448488488488488888888",
    ("ResNet50", "latency", 0.25): "8888848844848844444484444844444444444448448488844844",
    ("ResNet50", "latency", 0.5): "8888888844848888884884884884448448448448448488848848",
    ("ResNet50", "latency", 0.75): "8888888848848888888884884888888488888488488488888888",
}
"""Bit allocations published with HAWQ-V3 (see :data:`REFERENCE_SOURCE`), one character per ILP layer."""


# ============================================================================================ inputs


@dataclass(frozen=True, eq=False)
class HawqModel:
    """One model's ILP inputs in the notebook's units. Arrays ``[n]`` or ``[n, 2]`` (columns: 4, 8 bits)."""

    name: str
    trace: np.ndarray
    delta_sq: np.ndarray
    params_m: np.ndarray
    bops_m: np.ndarray
    latency_ms: np.ndarray
    ties: tuple[tuple[int, int], ...]

    @property
    def n_layers(self) -> int:
        return int(self.trace.shape[0])

    def sensitivity(self) -> np.ndarray:
        """``trace * ||dW||^2`` per layer and bit width, ``[n, 2]``."""
        return self.trace[:, None] * self.delta_sq

    def cost(self, constraint: str) -> np.ndarray:
        """Per-layer cost ``[n, 2]`` of ``constraint`` at 4 and 8 bits, in the notebook's units."""
        _check_choice(constraint, CONSTRAINTS, "constraint")
        if constraint == "size":
            return self.params_m[:, None] * np.array(BITS, dtype=np.float64)[None, :] / 8.0
        if constraint == "bops":
            return self.bops_m[:, None] / np.array([64.0, 16.0])[None, :]
        return self.latency_ms.copy()

    def groups(self) -> np.ndarray:
        """Merged-row index per layer: tied layers share a row; rows ordered by their first layer."""
        parent = list(range(self.n_layers))

        def root(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i

        for a, b in self.ties:
            ra, rb = root(a), root(b)
            parent[max(ra, rb)] = min(ra, rb)
        roots = [root(i) for i in range(self.n_layers)]
        order = {r: k for k, r in enumerate(sorted(set(roots)))}
        return np.array([order[r] for r in roots], dtype=np.int64)


def _check_choice(value: Any, valid: Sequence[Any], name: str) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {list(valid)}, got {value!r}")


def _unit_divisor(units: Mapping[str, str], key: str, model: str) -> float:
    """Divisor that takes the JSON's ``key`` values to the notebook's millions (``parameters`` / 2**20 as in
    the ResNet18 cell, ``bops`` / 1e6)."""
    text = str(units.get(key, ""))
    if text.startswith("count"):
        return float(2**20) if key == "parameters" else 1e6
    if text.startswith("millions"):
        return 1.0
    raise ValueError(f"{model}: units[{key!r}] must start with one of ['count', 'millions'], got {text!r}")


def load_raw(path: str | Path | None = None) -> dict[str, Any]:
    """The data file as parsed JSON (default: the copy shipped with the package)."""
    import json

    p = Path(path) if path is not None else DEFAULT_DATA
    if not p.is_file():
        raise FileNotFoundError(f"HAWQ-V3 ILP data file not found: {p}")
    return json.loads(p.read_text())


def _model_from_raw(name: str, raw: Mapping[str, Any]) -> HawqModel:
    missing = [k for k in (*_ARRAY_KEYS, "ties", "units") if k not in raw]
    if missing:
        raise ValueError(f"{name}: missing key(s) {missing}; expected {[*_ARRAY_KEYS, 'ties', 'units']}")
    arrays = {k: np.asarray(raw[k], dtype=np.float64) for k in _ARRAY_KEYS}
    n = arrays["Hutchinson_trace"].shape[0]
    for k, a in arrays.items():
        if a.shape != (n,):
            raise ValueError(f"{name}: {k} must be a list of {n} numbers, got shape {a.shape}")
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"{name}: {k} must hold finite numbers >= 0")
    ties = tuple((int(a), int(b)) for a, b in raw["ties"])
    bad = [t for t in ties if not (0 <= t[0] < n and 0 <= t[1] < n) or t[0] == t[1]]
    if bad:
        raise ValueError(f"{name}: ties must be pairs of distinct layer indices in [0, {n}), bad: {bad}")
    return HawqModel(
        name=name,
        trace=arrays["Hutchinson_trace"],
        delta_sq=np.stack([arrays["delta_weights_4bit_square"], arrays["delta_weights_8bit_square"]], axis=1),
        params_m=arrays["parameters"] / _unit_divisor(raw["units"], "parameters", name),
        bops_m=arrays["bops"] / _unit_divisor(raw["units"], "bops", name),
        latency_ms=np.stack([arrays["latency_int4"], arrays["latency_int8"]], axis=1),
        ties=ties,
    )


def load_hawq_inputs(path: str | Path | None = None) -> dict[str, HawqModel]:
    """Every model of the data file, validated, in the notebook's units."""
    raw = load_raw(path)
    models = raw.get("models")
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"the data file must hold a non-empty 'models' mapping, got {type(models).__name__}")
    return {name: _model_from_raw(name, m) for name, m in models.items()}


# ============================================================================================ solving


def merge_rows(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Sum the rows of ``values`` ``[n, k]`` that share a group: ``[n_groups, k]``."""
    out = np.zeros((int(groups.max()) + 1, values.shape[1]), dtype=np.float64)
    np.add.at(out, groups, values)
    return out


def budget_limit(cost: np.ndarray, alpha: float) -> float:
    """The notebook's limit: ``cost(all 4) + alpha * (cost(all 8) - cost(all 4))``."""
    low, high = float(cost[:, 0].sum()), float(cost[:, 1].sum())
    return low + alpha * (high - low)


def _with_tolerance(limit: float, rtol: float) -> float:
    return limit + rtol * abs(limit)


def bits_string(bits: Sequence[int]) -> str:
    """Compact form of a per-layer allocation: one character per layer (``'8848...'``)."""
    return "".join(str(int(b))[0] for b in bits)


def parse_bits(text: str) -> list[int]:
    """Inverse of :func:`bits_string` for 4 / 8-bit allocations."""
    bad = sorted(set(text) - {"4", "8"})
    if bad:
        raise ValueError(f"bit string characters must be one of ['4', '8'], got {bad} in {text!r}")
    return [int(c) for c in text]


def evaluate_bits(model: HawqModel, bits: Sequence[int]) -> dict[str, float]:
    """Objective, size (MB), BOPs (millions) and latency (ms) of a per-layer allocation, as the notebook prints
    them (its first and last layers excluded)."""
    b = np.asarray(bits)
    if b.shape != (model.n_layers,) or not np.all(np.isin(b, BITS)):
        raise ValueError(f"{model.name}: bits must be {model.n_layers} values in {list(BITS)}, got {list(b)}")
    col = (b == 8).astype(np.int64)
    rows = np.arange(model.n_layers)
    return {
        "objective": float(model.sensitivity()[rows, col].sum()),
        "size": float(model.cost("size")[rows, col].sum()),
        "bops": float(model.cost("bops")[rows, col].sum()),
        "latency_ms": float(model.cost("latency")[rows, col].sum()),
    }


def solve_allocation(
    model: HawqModel, constraint: str, alpha: float, *, budget_rtol: float = 1e-9
) -> tuple[list[int] | None, float, str]:
    """(bits per layer or None, limit, status) of the notebook's program for one model, constraint and alpha,
    solved exactly with :func:`ilp_solve` on tie-merged rows. ``budget_rtol`` widens the limit by that relative
    amount so that a plan costing exactly the limit is not lost to float summation order (alpha = 1)."""
    _check_alpha(alpha)
    groups = model.groups()
    cost = model.cost(constraint)
    limit = budget_limit(cost, alpha)
    choice = ilp_solve(
        merge_rows(model.sensitivity(), groups), merge_rows(cost, groups), _with_tolerance(limit, budget_rtol)
    )
    if choice is None:
        return None, limit, "infeasible"
    return [BITS[int(choice[g])] for g in groups], limit, "optimal"


def _check_alpha(alpha: Any) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")


# ============================================================================================ exact checks


def bruteforce(sens: np.ndarray, cost: np.ndarray, *, max_rows: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(objective, cost) of every one of the ``2**n`` choices of ``[n, 2]`` rows (row ``i`` of the choice index
    picks column ``(index >> i) & 1``). ``n`` must not exceed ``max_rows``."""
    n = sens.shape[0]
    if n > max_rows:
        raise ValueError(f"brute force needs at most max_rows={max_rows} rows, got {n}")
    objective = np.empty(2**n)
    total = np.empty(2**n)
    chunk = 1 << 16
    shifts = np.arange(n)
    for start in range(0, 2**n, chunk):
        idx = np.arange(start, min(start + chunk, 2**n))
        x = ((idx[:, None] >> shifts[None, :]) & 1).astype(np.float64)
        objective[idx] = sens[:, 0].sum() + x @ (sens[:, 1] - sens[:, 0])
        total[idx] = cost[:, 0].sum() + x @ (cost[:, 1] - cost[:, 0])
    return objective, total


def _knapsack_items(
    sens: np.ndarray, cost: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two-choice rows as a 0/1 knapsack: (base column, gain, weight, forced) per row. The base is the cheaper
    column (the lower-sensitivity one on a cost tie); gain = sensitivity saved and weight = cost added by the
    other column; ``forced``: +1 take it for free (no cost, positive gain), -1 never take it (no gain)."""
    base = np.where(cost[:, 0] < cost[:, 1], 0, np.where(cost[:, 0] > cost[:, 1], 1, np.argmin(sens, axis=1)))
    rows = np.arange(sens.shape[0])
    gain = sens[rows, base] - sens[rows, 1 - base]
    weight = cost[rows, 1 - base] - cost[rows, base]
    forced = np.where(gain <= 0, -1, np.where(weight <= 0, 1, 0))
    return base, gain, weight, forced


def knapsack_bnb(sens: np.ndarray, cost: np.ndarray, budget: float) -> tuple[np.ndarray, float] | None:
    """Exact minimum of ``sum sens[i, x_i]`` with ``sum cost[i, x_i] <= budget`` over two-choice rows, by a
    depth-first branch and bound on the equivalent 0/1 knapsack (items by gain / weight, fractional bound).
    Independent of the ILP solver. Returns (chosen column per row, objective) or None when infeasible."""
    if sens.ndim != 2 or sens.shape[1] != 2 or cost.shape != sens.shape:
        raise ValueError(f"sens and cost must both be [n, 2], got {sens.shape} and {cost.shape}")
    base, gain, weight, forced = _knapsack_items(sens, cost)
    rows = np.arange(sens.shape[0])
    cap = budget - float(cost[rows, base].sum()) - float(weight[forced == 1].sum())
    if cap < 0:
        return None
    free = np.flatnonzero(forced == 0)
    order = free[np.argsort(-gain[free] / weight[free], kind="stable")]
    g = [float(gain[i]) for i in order]
    w = [float(weight[i]) for i in order]
    m = len(order)
    best_gain, best_set = 0.0, []
    taken: list[int] = []

    def bound(i: int, room: float) -> float:
        total = 0.0
        for j in range(i, m):
            if w[j] <= room:
                room -= w[j]
                total += g[j]
            else:
                return total + g[j] * room / w[j]
        return total

    def dfs(i: int, room: float, acc: float) -> None:
        nonlocal best_gain, best_set
        if acc > best_gain:
            best_gain, best_set = acc, list(taken)
        if i == m or acc + bound(i, room) <= best_gain:
            return
        if w[i] <= room:
            taken.append(i)
            dfs(i + 1, room - w[i], acc + g[i])
            taken.pop()
        dfs(i + 1, room, acc)

    dfs(0, cap, 0.0)
    choice = base.copy()
    alt = np.zeros(sens.shape[0], dtype=bool)
    alt[forced == 1] = True
    alt[order[best_set]] = True
    choice[alt] = 1 - base[alt]
    return choice, float(sens[rows, choice].sum())


def _integer_grid(weights: np.ndarray, *, max_cells: int) -> tuple[np.ndarray, float] | None:
    """(integer weights, unit) with ``weights == ints * unit`` to 1e-12 relative, when the weights lie on a grid
    of at most ``max_cells`` cells in total; None otherwise."""
    fracs = [Fraction(float(x)).limit_denominator(10**9) for x in weights]
    if any(abs(float(f) - float(x)) > 1e-12 * abs(float(x)) for f, x in zip(fracs, weights)):
        return None
    den = reduce(math.lcm, (f.denominator for f in fracs), 1)
    ints = [f.numerator * (den // f.denominator) for f in fracs]
    step = reduce(math.gcd, ints, 0)
    if step == 0 or sum(ints) // step > max_cells:
        return None
    return np.array([i // step for i in ints], dtype=np.int64), step / den


def integer_dp(
    sens: np.ndarray, cost: np.ndarray, *, max_cells: int = 2_000_000
) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact (objective, cost) of the best choice at every reachable total cost, by a knapsack dynamic program
    over integer costs: available when the knapsack weights lie on an integer grid of at most ``max_cells``
    cells (size and BOPs here; not the measured latencies). None otherwise."""
    base, gain, weight, forced = _knapsack_items(sens, cost)
    rows = np.arange(sens.shape[0])
    free = np.flatnonzero(forced == 0)
    grid = _integer_grid(weight[free], max_cells=max_cells) if free.size else (np.zeros(0, np.int64), 1.0)
    if grid is None:
        return None
    ints, unit = grid
    best = np.full(int(ints.sum()) + 1, -np.inf)
    best[0] = 0.0
    for wi, gi in zip(ints, gain[free]):
        best[wi:] = np.maximum(best[wi:], best[:-wi] + gi)
    reach = np.flatnonzero(np.isfinite(best))
    base_obj = float(sens[rows, base].sum()) - float(gain[forced == 1].sum())
    base_cost = float(cost[rows, base].sum()) + float(weight[forced == 1].sum())
    return base_obj - best[reach], base_cost + reach * unit


def pareto_front_2d(objective: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points of (objective, cost), both minimised, ordered by cost (duplicates
    kept once)."""
    o, c = np.asarray(objective, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    if o.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((o, c))
    so = o[order]
    prev_min = np.concatenate([[np.inf], np.minimum.accumulate(so)[:-1]])
    return order[so < prev_min]


def normalised_hypervolume(
    objective: np.ndarray,
    cost: np.ndarray,
    *,
    objective_range: tuple[float, float],
    cost_range: tuple[float, float],
) -> float:
    """Area dominated by (objective, cost) points, both minimised and scaled to [0, 1] by ``objective_range``
    (all-8-bit, all-4-bit objective) and ``cost_range`` (all-4-bit, all-8-bit cost), up to the reference point
    (1, 1): the two uniform plans add nothing; 1 would be a free, lossless plan."""
    o = (np.asarray(objective, dtype=np.float64) - objective_range[0]) / (
        objective_range[1] - objective_range[0]
    )
    c = (np.asarray(cost, dtype=np.float64) - cost_range[0]) / (cost_range[1] - cost_range[0])
    return hypervolume_2d(
        1.0 - np.clip(o, 0.0, 1.0), np.clip(c, 0.0, 1.0), ref_accuracy=0.0, ref_size_fraction=1.0
    )


# ============================================================================================ search


def search_front(
    sens: np.ndarray, cost: np.ndarray, *, trials: int, seed: int, population: int = 50
) -> pd.DataFrame:
    """A seeded multi-objective Optuna study (NSGA-II) over two-choice rows, evaluated from the lookup tables:
    minimise (objective, cost). The two uniform plans are enqueued first. Returns every trial: objective, cost,
    choice (column per row), on_front."""
    import optuna

    n = sens.shape[0]
    names = [f"g{i}" for i in range(n)]
    dist = {k: optuna.distributions.CategoricalDistribution([0, 1]) for k in names}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            directions=["minimize", "minimize"],
            sampler=optuna.samplers.NSGAIISampler(seed=seed, population_size=population),
        )
        for col in (0, 1):
            study.enqueue_trial(dict.fromkeys(names, col))
        rows = np.arange(n)
        records = []
        for _ in range(trials):
            trial = study.ask(dist)
            choice = np.array([trial.params[k] for k in names], dtype=np.int64)
            obj, tot = float(sens[rows, choice].sum()), float(cost[rows, choice].sum())
            study.tell(trial, [obj, tot])
            records.append({"objective": obj, "cost": tot, "choice": choice.tolist()})
    finally:
        optuna.logging.set_verbosity(verbosity)
    df = pd.DataFrame(records, columns=["objective", "cost", "choice"])
    df["on_front"] = False
    if len(df):
        df.loc[df.index[pareto_front_2d(df["objective"].to_numpy(), df["cost"].to_numpy())], "on_front"] = (
            True
        )
    return df


# ============================================================================================ replication


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


@dataclass
class HawqReplication:
    """Result of :func:`run_replication`.

    ``rows``: one per (model, constraint, alpha): limit, bits (list per layer), bits_str, n_4bit, objective,
    size (MB), bops (millions), latency_ms, cost (in the constraint's units), status, and the published
    allocation's reference_bits, matches_reference, differing_layers, reference_objective, reference_cost,
    reference_feasible, reference_on_front (whether no plan is at most as costly and strictly better).
    ``verification``: per row the ILP objective and each independent exact method's optimum.
    ``fronts``: per (model, constraint) the front sizes and normalised hypervolumes (exact front, ILP sweep,
    search). ``search_vs_ilp``: per row the search's best objective within the limit. ``points``: the fronts'
    points per model and constraint. ``notes``: plain-language findings."""

    config: ReplicationConfig
    rows: pd.DataFrame
    verification: pd.DataFrame
    fronts: pd.DataFrame
    search_vs_ilp: pd.DataFrame
    points: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = field(repr=False)
    notes: list[str]
    seconds: float

    def table(self) -> pd.DataFrame:
        """Short readable table of the allocations."""
        cols = ["model", "constraint", "alpha", "limit", "bits_str", "n_4bit", "matches_reference", "objective",
                "size", "bops", "latency_ms"]  # fmt: skip
        return self.rows[cols]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": "HAWQ-V3 (Yao, Dong et al., ICML 2021), Zhen-Dong/HAWQ ILP.ipynb inputs",
            "reference_source": REFERENCE_SOURCE,
            "config": self.config.to_dict(),
            "rows": _records(self.rows),
            "verification": _records(self.verification),
            "fronts": _records(self.fronts),
            "search_vs_ilp": _records(self.search_vs_ilp),
            "points": self.points,
            "notes": list(self.notes),
            "seconds": self.seconds,
        }


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for rec in df.to_dict(orient="records"):
        out.append({k: _plain(v) for k, v in rec.items()})
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def _allocation_row(model: HawqModel, constraint: str, alpha: float, rtol: float) -> dict[str, Any]:
    bits, limit, status = solve_allocation(model, constraint, alpha, budget_rtol=rtol)
    row: dict[str, Any] = {
        "model": model.name,
        "constraint": constraint,
        "alpha": float(alpha),
        "limit": limit,
    }
    if bits is None:
        return {**row, "bits": None, "bits_str": None, "n_4bit": None, "objective": math.nan, "size": math.nan,
                "bops": math.nan, "latency_ms": math.nan, "cost": math.nan, "status": status}  # fmt: skip
    metrics = evaluate_bits(model, bits)
    cost = metrics["latency_ms" if constraint == "latency" else constraint]
    row.update(
        bits=bits, bits_str=bits_string(bits), n_4bit=bits.count(4), **metrics, cost=cost, status=status
    )
    return row


def _reference_columns(model: HawqModel, row: dict[str, Any], rtol: float) -> dict[str, Any]:
    ref = PUBLISHED_ALLOCATIONS.get((model.name, row["constraint"], row["alpha"]))
    empty = {"reference_bits": None, "matches_reference": None, "differing_layers": None,
             "reference_objective": math.nan, "reference_cost": math.nan, "reference_feasible": None,
             "reference_on_front": None, "best_objective_at_reference_cost": math.nan}  # fmt: skip
    if ref is None or len(ref) != model.n_layers:
        return empty
    ref_bits = parse_bits(ref)
    m = evaluate_bits(model, ref_bits)
    ref_cost = m["latency_ms" if row["constraint"] == "latency" else row["constraint"]]
    # is some plan at most as costly as the reference and strictly better? (the ILP at the reference's cost)
    at_cost, _, _ = solve_allocation_at(model, row["constraint"], ref_cost, budget_rtol=rtol)
    best_at_cost = evaluate_bits(model, at_cost)["objective"] if at_cost is not None else math.nan
    better = best_at_cost < m["objective"] * (1 - 1e-9)
    ours = row["bits"] or []
    return {
        "reference_bits": ref,
        "matches_reference": ref == row["bits_str"],
        "differing_layers": [i for i, (a, b) in enumerate(zip(ours, ref_bits)) if a != b],
        "reference_objective": m["objective"],
        "reference_cost": ref_cost,
        "reference_feasible": bool(ref_cost <= _with_tolerance(row["limit"], rtol)),
        "reference_on_front": not better,
        "best_objective_at_reference_cost": best_at_cost,
    }


def solve_allocation_at(
    model: HawqModel, constraint: str, budget: float, *, budget_rtol: float = 1e-9
) -> tuple[list[int] | None, float, str]:
    """Like :func:`solve_allocation` with an absolute budget (in the constraint's units) instead of alpha."""
    groups = model.groups()
    choice = ilp_solve(
        merge_rows(model.sensitivity(), groups),
        merge_rows(model.cost(constraint), groups),
        _with_tolerance(float(budget), budget_rtol),
    )
    if choice is None:
        return None, float(budget), "infeasible"
    return [BITS[int(choice[g])] for g in groups], float(budget), "optimal"


def _verify_row(
    row: dict[str, Any],
    sens: np.ndarray,
    cost: np.ndarray,
    brute: tuple | None,
    dp: tuple | None,
    rtol: float,
) -> dict[str, Any]:
    budget = _with_tolerance(row["limit"], rtol)
    out: dict[str, Any] = {k: row[k] for k in ("model", "constraint", "alpha", "limit")}
    out["ilp_objective"] = row["objective"]
    checks: dict[str, float] = {}
    if brute is not None:
        ok = brute[1] <= budget
        checks["bruteforce"] = float(brute[0][ok].min()) if ok.any() else math.nan
    bnb = knapsack_bnb(sens, cost, budget)
    checks["branch_and_bound"] = bnb[1] if bnb is not None else math.nan
    if dp is not None:
        ok = dp[1] <= budget
        checks["integer_dp"] = float(dp[0][ok].min()) if ok.any() else math.nan
    for name in ("bruteforce", "branch_and_bound", "integer_dp"):
        out[f"{name}_objective"] = checks.get(name, math.nan)
    scale = max(abs(row["objective"]), 1e-12) if math.isfinite(row["objective"]) else 1.0
    out["methods"] = sorted(checks)
    out["max_abs_diff"] = max(
        (abs(v - row["objective"]) for v in checks.values() if math.isfinite(v)), default=math.nan
    )
    out["optimal_verified"] = all(
        math.isfinite(v) and abs(v - row["objective"]) <= 1e-9 * scale for v in checks.values()
    )
    return out


def _dominates(
    obj: np.ndarray, cost: np.ndarray, ref_obj: float, ref_cost: float, rtol: float = 1e-9
) -> np.ndarray:
    """Which (obj, cost) points dominate (ref_obj, ref_cost), both minimised, beyond float noise (``rtol``)."""
    o_tol, c_tol = rtol * abs(ref_obj), rtol * abs(ref_cost)
    no_worse = (obj <= ref_obj + o_tol) & (cost <= ref_cost + c_tol)
    return no_worse & ((obj < ref_obj - o_tol) | (cost < ref_cost - c_tol))


def _points(obj: np.ndarray, cost: np.ndarray, idx: np.ndarray) -> list[dict[str, float]]:
    return [{"objective": float(obj[i]), "cost": float(cost[i])} for i in idx]


def _front_for(
    model: HawqModel, constraint: str, config: ReplicationConfig, rows: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """(front summary, verification rows, front points, search-vs-ILP rows) of one model and constraint."""
    t0 = time.perf_counter()
    groups = model.groups()
    sens, cost = merge_rows(model.sensitivity(), groups), merge_rows(model.cost(constraint), groups)
    n = sens.shape[0]
    brute = (
        bruteforce(sens, cost, max_rows=config.max_bruteforce_rows)
        if n <= config.max_bruteforce_rows
        else None
    )
    dp = integer_dp(sens, cost, max_cells=config.max_dp_cells)
    verification = [_verify_row(r, sens, cost, brute, dp, config.budget_rtol) for r in rows]
    obj_range = (float(sens[:, 1].sum()), float(sens[:, 0].sum()))
    cost_range = (float(cost[:, 0].sum()), float(cost[:, 1].sum()))

    def hv(o: np.ndarray, c: np.ndarray) -> float:
        return normalised_hypervolume(o, c, objective_range=obj_range, cost_range=cost_range)

    # ILP sweep
    sweep = []
    for a in np.linspace(0.0, 1.0, config.front_alphas):
        bits, limit, _ = solve_allocation(model, constraint, float(a), budget_rtol=config.budget_rtol)
        if bits is not None:
            m = evaluate_bits(model, bits)
            sweep.append({"alpha": float(a), "limit": limit, "objective": m["objective"],
                          "cost": m["latency_ms" if constraint == "latency" else constraint],
                          "bits_str": bits_string(bits)})  # fmt: skip
    s_obj = np.array([p["objective"] for p in sweep])
    s_cost = np.array([p["cost"] for p in sweep])
    s_idx = pareto_front_2d(s_obj, s_cost)
    points: dict[str, list[dict[str, Any]]] = {"ilp_sweep": [sweep[i] for i in s_idx]}
    # exact front
    exact = brute if brute is not None else dp
    method = "bruteforce" if brute is not None else ("integer_dp" if dp is not None else None)
    e_obj = e_cost = None
    if exact is not None:
        e_idx = pareto_front_2d(exact[0], exact[1])
        e_obj, e_cost = exact[0][e_idx], exact[1][e_idx]
        points["exact"] = _points(e_obj, e_cost, np.arange(len(e_idx)))
    summary: dict[str, Any] = {
        "model": model.name,
        "constraint": constraint,
        "merged_rows": n,
        "exact_method": method,
        "exact_points": None if e_obj is None else len(e_obj),
        "hv_exact": math.nan if e_obj is None else hv(e_obj, e_cost),
        "ilp_sweep_points": len(s_idx),
        "hv_ilp_sweep": hv(s_obj[s_idx], s_cost[s_idx]),
    }
    # search
    search_rows: list[dict[str, Any]] = []
    if config.search_trials:
        trials = search_front(sens, cost, trials=config.search_trials, seed=config.seed,
                              population=config.search_population)  # fmt: skip
        front = trials[trials["on_front"]]
        f_obj, f_cost = front["objective"].to_numpy(), front["cost"].to_numpy()
        points["search"] = _points(f_obj, f_cost, np.arange(len(front)))
        on_exact = math.nan
        if e_obj is not None and len(front):
            hit = [bool(np.any(np.isclose(e_obj, o, rtol=1e-12, atol=0) & np.isclose(e_cost, c, rtol=1e-12, atol=0)))
                   for o, c in zip(f_obj, f_cost)]  # fmt: skip
            on_exact = float(np.mean(hit))
        summary.update(
            search_trials=len(trials),
            search_front_points=len(front),
            hv_search=hv(f_obj, f_cost),
            search_front_share_exact=on_exact,
        )
        all_obj, all_cost = trials["objective"].to_numpy(), trials["cost"].to_numpy()
        for r in rows:
            ok = all_cost <= _with_tolerance(r["limit"], config.budget_rtol)
            best = float(all_obj[ok].min()) if ok.any() else math.nan
            dominating = int(_dominates(all_obj, all_cost, r["objective"], r["cost"]).sum())
            gap = best - r["objective"]
            search_rows.append({
                "model": model.name, "constraint": constraint, "alpha": r["alpha"], "limit": r["limit"],
                "ilp_objective": r["objective"], "search_objective": best, "gap": gap,
                "gap_pct": 100.0 * gap / r["objective"] if r["objective"] else math.nan,
                "search_matches_ilp": bool(math.isfinite(gap) and abs(gap) <= 1e-9 * max(r["objective"], 1e-12)),
                "search_points_dominating_ilp": dominating,
            })  # fmt: skip
    else:
        summary.update(
            search_trials=0, search_front_points=0, hv_search=math.nan, search_front_share_exact=math.nan
        )
    summary["seconds"] = time.perf_counter() - t0
    return summary, verification, points, search_rows


def _notes(rows: pd.DataFrame, verification: pd.DataFrame, search: pd.DataFrame) -> list[str]:
    notes = [
        "The ILP is solved exactly for each budget (HiGHS, zero gap) and every allocation was re-checked by "
        "independent exact methods (verification table), so no search can beat it at the same budget under this "
        "cost model: a search can at most match it.",
    ]
    with_ref = rows[rows["matches_reference"].notna()]
    if len(with_ref):
        same = int(with_ref["matches_reference"].astype(bool).sum())
        notes.append(
            f"Published allocations (bit_config.py): {same} of {len(with_ref)} reproduced bit for bit."
        )
        for _, r in with_ref[~with_ref["matches_reference"].astype(bool)].iterrows():
            better = r["objective"] < r["reference_objective"]
            notes.append(
                f"{r['model']} {r['constraint']} alpha={r['alpha']:g}: layers {r['differing_layers']} differ; "
                f"ours objective {r['objective']:.6g} at cost {r['cost']:.6g}, published {r['reference_objective']:.6g} "
                f"at cost {r['reference_cost']:.6g} (limit {r['limit']:.6g}; published "
                f"{'feasible' if r['reference_feasible'] else 'over the limit'}, "
                f"{'on' if r['reference_on_front'] else 'not on'} the exact front: the best plan at most as costly "
                f"as it scores {r['best_objective_at_reference_cost']:.6g}). "
                + ("Ours is strictly better under the notebook's own inputs and cost model."
                   if better and r["reference_feasible"] else "")
            )  # fmt: skip
    if len(verification):
        ok = int(verification["optimal_verified"].sum())
        notes.append(f"Optimality verified independently for {ok} of {len(verification)} allocations.")
    if len(search):
        matched = int(search["search_matches_ilp"].sum())
        notes.append(
            f"NSGA-II (lookup-table evaluation) matched the exact ILP optimum at {matched} of {len(search)} budgets; "
            f"search points dominating an ILP point: {int(search['search_points_dominating_ilp'].sum())}."
        )
    return notes


def run_replication(config: ReplicationConfig | None = None) -> HawqReplication:
    """Solve, verify and compare every (model, constraint, alpha) of ``config`` on the HAWQ-V3 inputs."""
    config = config or ReplicationConfig()
    t0 = time.perf_counter()
    models = load_hawq_inputs(config.data_path)
    absent = [m for m in config.models if m not in models]
    if absent:
        raise ValueError(f"model(s) {absent} not in the data file; available: {sorted(models)}")
    rows, verification, fronts, search = [], [], [], []
    points: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    for name in config.models:
        model = models[name]
        for constraint in config.constraints:
            block = []
            for alpha in config.alphas:
                row = _allocation_row(model, constraint, float(alpha), config.budget_rtol)
                row.update(_reference_columns(model, row, config.budget_rtol))
                block.append(row)
            summary, ver, pts, srch = _front_for(model, constraint, config, block)
            rows += block
            verification += ver
            fronts.append(summary)
            search += srch
            points.setdefault(name, {})[constraint] = pts
    rows_df = pd.DataFrame(rows)
    ver_df = pd.DataFrame(verification)
    search_df = pd.DataFrame(search)
    return HawqReplication(
        config=config,
        rows=rows_df,
        verification=ver_df,
        fronts=pd.DataFrame(fronts),
        search_vs_ilp=search_df,
        points=points,
        notes=_notes(rows_df, ver_df, search_df),
        seconds=time.perf_counter() - t0,
    )
