"""``run_search``: one entry point for every strategy, on an Optuna study in durable storage.

Strategies: ``tpe`` and ``nsga2`` (Optuna samplers, multi-objective), ``rl`` (the LSTM controller as an Optuna
sampler), ``random``, and the baselines ``uniform``, ``greedy`` (seed-000 cost-benefit), ``ilp`` (HAWQ-V3),
``aimet`` (AIMET AMP's greedy Pareto curve) and ``control`` (the seed-000 control loop). Baselines produce plans
that are enqueued as trials, so every strategy is measured, stored and tracked the same way.

Accuracy comes from real measurements (``measured``), the accuracy predictor (``predicted``), or both
(``multifidelity``: the strategy runs on the predictor for ``screen_trials``, then the predicted front and the
best of the rest, ``budget`` plans, are measured). ``budget`` counts real evaluations (``measured``,
``multifidelity``) or trials (``predicted``). Measured evaluations are cached by plan in the study's database,
so identical plans are measured once across trials and workers.

Storage: ``sqlite:///mlruns/search.db`` by default (created before any worker starts), any SQLAlchemy URL
Optuna accepts (``postgresql://...`` for several machines), or ``":memory:"``. A study killed mid-run resumes with
``resume=True``: every completed trial is kept, trials left running are marked failed, and the search goes on
until the budget is met. Spawned workers die with the process that started them (so a killed search leaves none
writing to its study), a study is only resumed or joined by the task (model, data, metric, seed) that created it,
and two workers never measure past the budget together (a trial that would is pruned before it measures).
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from workbench.devices import model_device, on_device
from workbench.quant.spec import QuantPlan
from workbench.search.objectives import (
    ACCURACY_MODES,
    OBJECTIVES,
    CostModel,
    EvalCache,
    HypervolumeRef,
    PlanEvaluator,
    PredictedAccuracy,
    complexity,
    front_hypervolume,
    pareto_mask,
    similarity,
)
from workbench.search.space import SearchSpace, SpaceConfig

if TYPE_CHECKING:
    import torch

SAMPLER_STRATEGIES: tuple[str, ...] = ("tpe", "nsga2", "rl", "random")
BASELINE_STRATEGIES: tuple[str, ...] = ("uniform", "greedy", "ilp", "aimet", "control")
STRATEGIES: tuple[str, ...] = SAMPLER_STRATEGIES + BASELINE_STRATEGIES
WARM_STARTS: tuple[str, ...] = ("uniform", "greedy", "ilp", "aimet")
MEMORY = ":memory:"
CONFIG_ATTR = "workbench_config"
TASK_ATTR = "workbench_task"  # the task's name and evaluation fingerprint: resume / join must match it


class SearchError(ValueError):
    """A search that cannot run as asked; the message names the bad value and the valid choices."""


@dataclass(frozen=True)
class SearchConfig:
    """Knobs of :func:`run_search` (defaults work on digits).

    ``objectives``: from ``accuracy`` (maximised), ``size`` (whole-model bytes), ``weight_size`` (bytes of the
    Conv / Linear weights with their scales), ``bops``, ``latency`` (ms per sample: estimated on ``profile``, a
    hardware precision profile name or path, at ``latency_batch_size``; a BOPs proxy without a profile),
    ``energy`` (mJ per sample on ``profile``). Constraints:
    ``max_weight_fraction`` (weight bytes over FP32 weight bytes), ``max_size_bytes``, ``max_avg_weight_bits``
    (weight bits of the quantizable layers averaged with their element counts as weights, float layers at 32:
    :attr:`~workbench.quant.spec.PlanSummary.avg_weight_bits`), ``max_accuracy_drop`` (the metric loss in
    percentage points against FP32 on ``split``: accuracy drop for labelled accuracy); infeasible plans are
    reported to the sampler through Optuna's constraint support, and plans over a size budget (weight fraction,
    bytes or average bits) are not measured (they cost no evaluation).
    ``complexity_penalty`` / ``diversity_penalty``: reward shaping (seed 001) subtracted from the accuracy the
    sampler sees: weight x (distinct specs - 1) / layers, and weight x similarity to the closest earlier plan.
    ``final_split``: the front's plans are measured again on this split (None: skip).
    ``max_trials``: safety cap on trials (duplicates cost trials but no evaluation); default 20 x budget.
    ``warm_start``: a baseline (``uniform``, ``greedy``, ``ilp``, ``aimet``) whose first ``warm_start_plans``
    plans (spread along its curve, within the size constraint) are the first trials of a sampler strategy;
    they count against the budget like any other trial (with ``multifidelity`` they seed the screening).
    ``workers``: processes evaluating trials of the study at once (spawned on this machine; they share the study
    and its evaluation cache). ``worker_threads``: torch intra-op threads of each worker while it evaluates
    trials (the calling process too when it is the only worker, restored afterwards); None keeps torch's default,
    which in a spawned process is every core, so give ``workers`` x ``worker_threads`` <= cores to avoid
    oversubscription (``bench/parallel_bench.py`` uses 1).
    """

    strategy: str = "tpe"
    budget: int = 40
    accuracy: str = "measured"
    objectives: tuple[str, ...] = ("accuracy", "weight_size")
    split: str = "val"
    final_split: str | None = "test"
    seed: int = 0
    max_weight_fraction: float | None = None
    max_size_bytes: int | None = None
    max_avg_weight_bits: float | None = None
    max_accuracy_drop: float | None = None
    complexity_penalty: float = 0.0
    diversity_penalty: float = 0.0
    screen_trials: int = 300
    max_trials: int | None = None
    n_startup_trials: int = 10
    population_size: int = 16
    sensitivity_metric: str = "omega"
    ilp_cost: str = "weight_size"
    warm_start: str | None = None
    warm_start_plans: int = 4
    profile: str | None = None
    latency_batch_size: int | None = None
    hv_ref: HypervolumeRef = field(default_factory=HypervolumeRef)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    study_name: str | None = None
    storage: str | None = None
    resume: bool = False
    workers: int = 1
    worker_threads: int | None = None
    track: bool = True
    log_trials: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SearchError(f"unknown strategy {self.strategy!r}; choose one of {list(STRATEGIES)}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise SearchError(f"budget must be an int >= 1 (evaluations), got {self.budget!r}")
        if self.accuracy not in ACCURACY_MODES:
            raise SearchError(
                f"unknown accuracy mode {self.accuracy!r}; choose one of {list(ACCURACY_MODES)}"
            )
        objectives = tuple(self.objectives)
        bad = [o for o in objectives if o not in OBJECTIVES]
        if bad or not objectives or len(set(objectives)) != len(objectives):
            raise SearchError(
                f"objectives {list(objectives)} not valid; choose distinct names from {list(OBJECTIVES)}"
            )
        if "accuracy" not in objectives:
            raise SearchError(f"objectives {list(objectives)} must include 'accuracy'")
        # accuracy first: samplers (the RL reward) and fronts read it there
        objectives = ("accuracy", *(o for o in objectives if o != "accuracy"))
        object.__setattr__(self, "objectives", objectives)
        if self.max_weight_fraction is not None and not (0 < self.max_weight_fraction <= 1):
            raise SearchError(f"max_weight_fraction={self.max_weight_fraction!r} must lie in (0, 1]")
        if self.max_size_bytes is not None and self.max_size_bytes <= 0:
            raise SearchError(f"max_size_bytes={self.max_size_bytes!r} must be > 0")
        if self.max_avg_weight_bits is not None and (
            isinstance(self.max_avg_weight_bits, bool)
            or not isinstance(self.max_avg_weight_bits, (int, float))
            or not 1 <= self.max_avg_weight_bits <= 32
        ):
            raise SearchError(f"max_avg_weight_bits={self.max_avg_weight_bits!r} must be a number in [1, 32]")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise SearchError(f"max_accuracy_drop={self.max_accuracy_drop!r} must be >= 0 (pp)")
        for name in ("complexity_penalty", "diversity_penalty"):
            if getattr(self, name) < 0:
                raise SearchError(f"{name}={getattr(self, name)!r} must be >= 0")
        for name, low in (("workers", 1), ("n_startup_trials", 1), ("population_size", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SearchError(f"{name} must be an int >= {low}, got {value!r}")
        if self.worker_threads is not None and (
            isinstance(self.worker_threads, bool)
            or not isinstance(self.worker_threads, int)
            or self.worker_threads < 1
        ):
            raise SearchError(f"worker_threads must be None or an int >= 1, got {self.worker_threads!r}")
        if self.max_trials is not None and (
            isinstance(self.max_trials, bool)
            or not isinstance(self.max_trials, int)
            or self.max_trials < self.budget
        ):
            raise SearchError(
                f"max_trials={self.max_trials!r} must be an int >= budget ({self.budget}) or None"
            )
        if self.final_split not in (None, "calib", "val", "test", "train"):
            raise SearchError(f"final_split={self.final_split!r}; choose calib, val, test, train or None")
        if not (0 < self.hv_ref.size_fraction <= 1) or self.hv_ref.max_drop_pp <= 0:
            raise SearchError(
                f"hv_ref={self.hv_ref.to_dict()}: size_fraction must lie in (0, 1] and max_drop_pp be > 0"
            )
        if self.warm_start is not None:
            if self.warm_start not in WARM_STARTS:
                raise SearchError(
                    f"warm_start={self.warm_start!r}; choose one of {list(WARM_STARTS)} or None"
                )
            if self.strategy not in SAMPLER_STRATEGIES:
                raise SearchError(
                    f"warm_start seeds a sampler strategy ({list(SAMPLER_STRATEGIES)}), not {self.strategy!r}"
                )
            if not isinstance(self.warm_start_plans, int) or not 1 <= self.warm_start_plans <= self.budget:
                raise SearchError(
                    f"warm_start_plans={self.warm_start_plans!r} must be an int in [1, budget={self.budget}]"
                )
        if self.strategy in BASELINE_STRATEGIES and self.accuracy == "multifidelity":
            raise SearchError(
                f"strategy {self.strategy!r} already proposes a fixed list of plans; multifidelity screening "
                f"needs a sampler strategy ({list(SAMPLER_STRATEGIES)}). Use accuracy='measured' or 'predicted'"
            )
        if self.screen_trials < 1:
            raise SearchError(f"screen_trials must be >= 1, got {self.screen_trials!r}")
        if self.split not in ("calib", "val", "test", "train"):
            raise SearchError(f"split={self.split!r}; choose calib, val, test or train")
        if self.ilp_cost not in ("weight_size", "size", "bops", "latency", "energy"):
            raise SearchError(
                f"ilp_cost={self.ilp_cost!r}; choose weight_size, size, bops, latency or energy"
            )
        if self.profile is not None:
            from workbench.hardware.profile import ProfileError, load_profile

            try:
                load_profile(self.profile)
            except ProfileError as e:
                raise SearchError(f"profile={self.profile!r}: {e}") from None
        elif "energy" in self.objectives or self.ilp_cost == "energy":
            raise SearchError(
                "the 'energy' objective needs a hardware profile with energy figures (profile=...)"
            )
        if self.latency_batch_size is not None and (
            isinstance(self.latency_batch_size, bool)
            or not isinstance(self.latency_batch_size, int)
            or self.latency_batch_size < 1
        ):
            raise SearchError(
                f"latency_batch_size={self.latency_batch_size!r} must be None or an integer >= 1"
            )
        if self.workers > 1 and self.storage == MEMORY:
            raise SearchError(
                "workers > 1 need a shared storage (sqlite file or postgresql URL), not ':memory:'"
            )

    def trial_cap(self) -> int:
        return self.max_trials if self.max_trials is not None else max(20 * self.budget, 50)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["space"] = self.space.to_dict()
        d["hv_ref"] = self.hv_ref.to_dict()
        d["objectives"] = list(self.objectives)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        """Rebuild a config written by :meth:`to_dict` (the one stored with a study)."""
        from workbench.quant.spec import QuantSpec

        d = dict(d)
        sp = dict(d.pop("space", {}))
        for key in ("w_bits", "a_bits", "granularities", "methods", "sparsities", "structures", "rank_ratios",
                    "skip"):  # fmt: skip
            if key in sp:
                sp[key] = tuple(sp[key])
        if "base_spec" in sp:
            sp["base_spec"] = QuantSpec.from_dict(sp["base_spec"])
        hv = d.pop("hv_ref", None)
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "objectives" in kw:
            kw["objectives"] = tuple(kw["objectives"])
        return cls(space=SpaceConfig(**sp), hv_ref=HypervolumeRef(**hv) if hv else HypervolumeRef(), **kw)


# ============================================================================================ storage


def default_storage() -> str:
    from workbench.paths import mlruns_dir

    path = mlruns_dir() / "search.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _check_storage(url: str) -> None:
    if url == MEMORY:
        return
    if not isinstance(url, str) or "://" not in url:
        raise SearchError(
            f"storage {url!r} not understood; use 'sqlite:///path/search.db', 'postgresql://user@host:port/db' "
            "or ':memory:'"
        )
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "mysql"):
        raise SearchError(f"storage scheme {scheme!r} not supported; use sqlite, postgresql or mysql")


def open_storage(url: str, *, heartbeat: bool = False):
    """An Optuna storage for ``url`` (RDB with a heartbeat for multi-worker studies)."""
    import optuna

    if url == MEMORY:
        return optuna.storages.InMemoryStorage()
    _check_storage(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat:
        kwargs.update(heartbeat_interval=10, grace_period=60)
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as e:  # noqa: BLE001 - connection errors come in many types
        raise SearchError(f"cannot open storage {url!r}: {e}") from e


def study_names(storage_url: str) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage_url))]


# ============================================================================================ result


@dataclass
class SearchResult:
    """What a search found. ``trials``: one row per completed trial; ``front``: its non-dominated feasible
    measured plans (accuracy on ``split``, ``test_accuracy`` on ``final_split``)."""

    study_name: str
    storage: str
    config: SearchConfig
    trials: pd.DataFrame
    front: pd.DataFrame
    hypervolume: float
    real_evaluations: int
    final_evaluations: int
    fp32_accuracy: float
    fp32_final_accuracy: float | None
    fp32_weight_bytes: int
    fp32_size_bytes: int
    seconds: float
    run_id: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def plans(self) -> list[QuantPlan]:
        return [QuantPlan.from_dict(json.loads(p)) for p in self.front["plan"]]

    def best(
        self,
        *,
        max_weight_fraction: float | None = None,
        max_avg_weight_bits: float | None = None,
        column: str = "accuracy",
    ) -> pd.Series:
        """The front plan with the highest ``column`` within a weight-size fraction and an element-weighted
        average of weight bits."""
        df = self.front
        if max_weight_fraction is not None:
            df = df[df["weight_bytes"] <= max_weight_fraction * self.fp32_weight_bytes]
        if max_avg_weight_bits is not None:
            df = df[df["avg_weight_bits"] <= max_avg_weight_bits + 1e-9]
        if df.empty:
            raise ValueError(
                f"no front plan within max_weight_fraction={max_weight_fraction}, "
                f"max_avg_weight_bits={max_avg_weight_bits}"
            )
        return df.sort_values([column, "weight_bytes"], ascending=[False, True]).iloc[0]

    def to_dict(self) -> dict[str, Any]:
        front = []
        for _, r in self.front.iterrows():
            front.append(
                {
                    "accuracy": float(r["accuracy"]),
                    "test_accuracy": None if pd.isna(r.get("test_accuracy")) else float(r["test_accuracy"]),
                    "size_bytes": int(r["size_bytes"]),
                    "weight_bytes": int(r["weight_bytes"]),
                    "bops": int(r["bops"]),
                    "latency_ms": float(r["latency_ms"]),
                    "avg_weight_bits": float(r["avg_weight_bits"]),
                    "label": r["label"],
                    "trial": int(r["trial"]),
                    "plan": json.loads(r["plan"]),
                }
            )
        return {
            "study": self.study_name,
            "storage": self.storage,
            "strategy": self.config.strategy,
            "accuracy_mode": self.config.accuracy,
            "objectives": list(self.config.objectives),
            "split": self.config.split,
            "final_split": self.config.final_split,
            "fp32_accuracy": self.fp32_accuracy,
            "fp32_final_accuracy": self.fp32_final_accuracy,
            "fp32_weight_bytes": self.fp32_weight_bytes,
            "fp32_size_bytes": self.fp32_size_bytes,
            "front": front,
            "hypervolume": {
                "value": self.hypervolume,
                "reference": {
                    **self.config.hv_ref.to_dict(),
                    "accuracy": self.fp32_accuracy - self.config.hv_ref.max_drop_pp / 100,
                    "weight_bytes": self.config.hv_ref.size_fraction * self.fp32_weight_bytes,
                },
                "axes": ["accuracy (maximise)", "weight_bytes / fp32_weight_bytes (minimise)"],
            },
            "real_evaluations": self.real_evaluations,
            "final_evaluations": self.final_evaluations,
            "trials": len(self.trials),
            "seconds": self.seconds,
            "run_id": self.run_id,
            "info": self.info,
        }


# ============================================================================================ context


@dataclass
class SearchContext:
    """Everything a worker needs to evaluate trials of one study."""

    task: Any
    config: SearchConfig
    space: SearchSpace
    cost_model: CostModel
    evaluator: PlanEvaluator
    predicted: PredictedAccuracy | None
    fp32_weight_bytes: int
    history: list[np.ndarray] = field(default_factory=list)
    worker: int = 0

    def constraints(self, cost: Any, accuracy: float | None) -> list[float]:
        c = []
        cfg = self.config
        if cfg.max_weight_fraction is not None:
            c.append(cost.weight_bytes / self.fp32_weight_bytes - cfg.max_weight_fraction)
        if cfg.max_size_bytes is not None:
            c.append(float(cost.size_bytes - cfg.max_size_bytes))
        if cfg.max_avg_weight_bits is not None:
            c.append(float(cost.avg_weight_bits - cfg.max_avg_weight_bits))
        if cfg.max_accuracy_drop is not None:
            drop = math.inf if accuracy is None else 100.0 * (self.evaluator.fp32_accuracy - accuracy)
            c.append(drop - cfg.max_accuracy_drop)
        return c

    def choice_vector(self, params: dict[str, Any]) -> np.ndarray:
        return np.array(
            [str(params.get(SearchSpace.param_name(u, k))) for u, k, _ in self.space.knob_table()]
        )


def _make_sampler(strategy: str, ctx: SearchContext, *, seed: int, constraints: bool):
    import optuna

    del constraints  # samplers read the constraints each trial sets with trial.set_constraint (Optuna 5)
    cfg = ctx.config
    if strategy == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=max(1, min(cfg.n_startup_trials, cfg.budget // 3 or 1)),
            multivariate=True,
        )
    if strategy == "nsga2":
        return optuna.samplers.NSGAIISampler(
            population_size=max(4, min(cfg.population_size, cfg.budget)), seed=seed
        )
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "rl":
        from workbench.search.rl import RLControllerSampler, feature_map_stats

        x = ctx.task.example_input(min(64, _calib_size(ctx.task)))
        stats = feature_map_stats(ctx.task.model, x, list(ctx.space.layers))
        per_layer = stats.set_index("layer")
        unit_stats = np.stack(
            [
                per_layer.loc[list(u.layers), ["mean", "var", "entropy"]].to_numpy().mean(axis=0)
                for u in ctx.space.units
            ]
        )
        return RLControllerSampler(ctx.space, unit_stats, seed=seed)
    # baselines: the enqueued trials fix every parameter; anything else is random
    return optuna.samplers.RandomSampler(seed=seed)


def _calib_size(task: Any) -> int:
    try:
        return len(task.calib_loader.dataset)
    except (TypeError, AttributeError):  # an iterable without a sized dataset (e.g. a list of batches)
        return 64


# ============================================================================================ trial


def _evaluate_trial(
    ctx: SearchContext, trial: Any, *, parent_run_id: str | None, budget: int | None = None
) -> tuple[float, ...]:
    from workbench import tracking

    cfg = ctx.config
    plan = ctx.space.suggest(trial)
    params = dict(trial.params)
    cost = ctx.cost_model(plan)
    over_size = any(v > 0 for v in ctx.constraints(cost, None)[: _n_size(cfg)])
    source = cfg.accuracy if cfg.accuracy != "multifidelity" else "measured"
    key = SearchSpace.plan_key(plan)
    hit = False
    real = 0
    if over_size:
        accuracy = 0.0  # not measured: the plan breaks a size budget; the sampler sees it as infeasible
        source = "skipped_over_budget"
    elif source == "predicted":
        assert ctx.predicted is not None
        accuracy = ctx.predicted(plan)
    else:
        if not _measured_in_study(trial.study, key):
            _wait_for_twin(ctx, trial, key)
        if budget is not None and not _measured_in_study(trial.study, key):
            _reserve_evaluation(trial, budget)
        accuracy, hit = ctx.evaluator(plan)
        # the budget counts distinct plans measured by this study; a plan another study (or worker) already
        # measured is read from the shared cache (cache_hit) but still costs this study one evaluation
        real = 0 if _measured_in_study(trial.study, key) else 1
    vec = ctx.choice_vector(params)
    shaped = accuracy
    if cfg.complexity_penalty:
        shaped -= cfg.complexity_penalty * complexity(plan, ctx.space.layers)
    if cfg.diversity_penalty:
        shaped -= cfg.diversity_penalty * similarity(vec, ctx.history)
    ctx.history.append(vec)
    constraints = ctx.constraints(cost, None if over_size else accuracy)
    attrs = {
        "plan": plan.to_json(indent=None),
        "plan_key": key,
        "accuracy": accuracy,
        "shaped_accuracy": shaped,
        "accuracy_source": source,
        "cache_hit": hit,
        "real_eval": real,
        "constraints": constraints,
        "feasible": all(v <= 0 for v in constraints),
        "constraint_violation": float(sum(max(0.0, v) for v in constraints)),
        "worker": ctx.worker,
        **cost.to_dict(),
    }
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    for cname, value in zip(_constraint_names(cfg), constraints, strict=True):
        trial.set_constraint(cname, value if math.isfinite(value) else 1e9)
    values = []
    for name in cfg.objectives:
        if name == "accuracy":
            values.append(shaped)
        else:
            values.append(float({"size": cost.size_bytes, "weight_size": cost.weight_bytes, "bops": cost.bops,
                                 "latency": cost.latency_ms, "energy": cost.energy_mj}[name]))  # fmt: skip
    if cfg.track and cfg.log_trials:
        label = trial.user_attrs.get("label") or f"trial {trial.number}"
        with tracking.start_run(
            "search-trial", run_name=f"trial-{trial.number}", parent_run_id=parent_run_id
        ) as run:
            run.log_params({"trial": trial.number, "label": label, "strategy": cfg.strategy, **params})
            run.log_metrics(
                {
                    "accuracy": accuracy,
                    "shaped_accuracy": shaped,
                    "cache_hit": float(hit),
                    "real_eval": real,
                    "feasible": float(attrs["feasible"]),
                    **cost.to_dict(),
                }  # fmt: skip
            )
            run.log_plan(plan)
    return tuple(values)


def _wait_for_twin(ctx: SearchContext, trial: Any, key: str, *, poll_s: float = 0.2) -> None:
    """Claim the plan for this trial in the shared cache database; when an earlier trial of the study holds the
    claim and is still running (another worker measuring the very same plan), wait until it ends, so that this
    trial reads its measurement from the cache and costs no evaluation. A holder that is no longer running
    (finished, failed, or killed and marked failed on resume) is not waited for."""
    import optuna

    holder = ctx.evaluator.cache.claim(f"{trial.study.study_name}|{key}", str(trial.number))
    if holder == str(trial.number) or not holder.isdigit():
        return
    number = int(holder)
    running = (optuna.trial.TrialState.RUNNING,)
    while any(t.number == number for t in trial.study.get_trials(deepcopy=False, states=running)):
        time.sleep(poll_s)


def _reserve_evaluation(trial: Any, budget: int) -> None:
    """Before a trial measures a new plan: prune it when the study's measurements plus the trials that started
    earlier and are still running already fill ``budget``. Two workers that both saw one evaluation left would
    otherwise both measure; trial numbers order them, so exactly one goes ahead (a running trial may yet end
    without a measurement: its worker then starts another trial)."""
    import optuna

    running, complete = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE
    trials = trial.study.get_trials(deepcopy=False, states=(running, complete))  # one consistent snapshot
    have = sum(int(t.user_attrs.get("real_eval", 0)) for t in trials if t.state == complete)
    ahead = sum(1 for t in trials if t.state == running and t.number < trial.number)
    if have + ahead >= budget:
        raise optuna.TrialPruned(f"the budget of {budget} evaluations is taken by earlier trials")


def _measured_in_study(study: Any, key: str) -> bool:
    import optuna

    return any(
        t.user_attrs.get("plan_key") == key and t.user_attrs.get("accuracy_source") == "measured"
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    )


def _real_evaluations(study: Any) -> int:
    import optuna

    return sum(int(t.user_attrs.get("real_eval", 0)) for t in study.get_trials(deepcopy=False,
               states=(optuna.trial.TrialState.COMPLETE,)))  # fmt: skip


def _run_worker(ctx: SearchContext, study: Any, *, target: int, counts_real: bool, parent_run_id: str | None,
                progress: bool, max_trials: int) -> None:  # fmt: skip
    """Run trials on ``study`` until ``target`` (real evaluations, or trials) is reached across all workers."""
    import optuna

    def done() -> int:
        if counts_real:
            return _real_evaluations(study)
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=target, initial=min(done(), target), desc=f"search {ctx.config.strategy}", leave=False
        )
    trials_here = 0
    try:
        while True:
            have = done()
            if bar is not None:
                bar.n = min(have, target)
                bar.refresh()
            if have >= target:
                break
            # trials other workers are running reserve their share of the budget: no worker overshoots it
            # (if a running trial ends without a real evaluation, its worker goes on to fill the gap)
            running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
            if counts_real and running and have + running >= target:
                break
            n_all = len(study.get_trials(deepcopy=False))
            if n_all >= max_trials:
                warnings.warn(
                    f"search stopped at the trial cap {max_trials} with {have}/{target} evaluations "
                    "(the sampler kept proposing measured or over-budget plans)",
                    stacklevel=2,
                )
                break
            study.optimize(
                lambda t: _evaluate_trial(
                    ctx, t, parent_run_id=parent_run_id, budget=target if counts_real else None
                ),
                n_trials=1,
                catch=(),
                gc_after_trial=False,
                show_progress_bar=False,
            )
            trials_here += 1
    finally:
        if bar is not None:
            bar.close()


# ============================================================================================ setup


def _study_directions(objectives: Sequence[str]) -> list[str]:
    return [OBJECTIVES[o] for o in objectives]


def _prepare(
    task: Any,
    config: SearchConfig,
    predictor: Any,
    storage_url: str,
    *,
    space: SearchSpace | None = None,
    fp32_latency_ms: float | None = None,
) -> SearchContext:
    space = space if space is not None else SearchSpace(task.model, config.space)
    cost_model = CostModel(
        task.model,
        task.example_input(),
        fp32_latency_ms=fp32_latency_ms if config.profile is None else None,
        profile=config.profile,
        batch_size=config.latency_batch_size,
    )
    cache = EvalCache(None if storage_url == MEMORY else storage_url)
    evaluator = PlanEvaluator(task, split=config.split, cache=cache, seed=config.seed)
    evaluator.fp32_accuracy  # noqa: B018 - a bad split or loader fails here, before any study exists
    predicted = None
    if predictor is not None:
        predicted = PredictedAccuracy(predictor, evaluator.fp32_accuracy)
    ctx = SearchContext(
        task=task,
        config=config,
        space=space,
        cost_model=cost_model,
        evaluator=evaluator,
        predicted=predicted,
        fp32_weight_bytes=cost_model.fp32_cost.weight_bytes,
    )
    _check_feasible(ctx)
    return ctx


def _unit_specs(space: SearchSpace, unit: Any, *, all_a_bits: bool) -> list[Any]:
    """Every distinct spec a unit can take (built, hence validated)."""
    import itertools

    ch = unit.choices.knob_choices()
    knobs = [k for k in ch if all_a_bits or k != "a_bits"]
    specs = {}
    for combo in itertools.product(*(ch[k] for k in knobs)):
        values = dict(zip(knobs, combo, strict=True))
        if not all_a_bits:
            values["a_bits"] = min(ch["a_bits"])
        spec = space.unit_spec(unit, values)
        specs[json.dumps(spec.to_dict(), sort_keys=True)] = spec
    return list(specs.values())


def _check_feasible(ctx: SearchContext) -> None:
    """Build every spec of every unit (so a bad space fails before the study exists) and refuse size budgets
    that no plan of the space meets: costs add up over units, so the smallest plan takes each unit's
    smallest option."""
    from workbench.quant.spec import PlanError

    cfg = ctx.config
    space = ctx.space
    base = space.plan_from_params({})
    base_cost = ctx.cost_model(base)
    min_weight = base_cost.weight_bytes
    min_size = base_cost.size_bytes
    min_bits = base_cost.avg_weight_bits  # element-weighted: a unit's choice moves it additively
    for unit in space.units:
        try:
            specs = _unit_specs(space, unit, all_a_bits=cfg.max_size_bytes is not None)
        except PlanError as e:
            raise SearchError(f"unit {unit.name!r} of the search space cannot be built: {e}") from e
        costs = [ctx.cost_model(space.with_unit(base, unit.name, spec)) for spec in specs]
        min_weight += min(c.weight_bytes for c in costs) - base_cost.weight_bytes
        min_size += min(c.size_bytes for c in costs) - base_cost.size_bytes
        min_bits += min(c.avg_weight_bits for c in costs) - base_cost.avg_weight_bits
    if cfg.max_weight_fraction is not None:
        frac = min_weight / ctx.fp32_weight_bytes
        if frac > cfg.max_weight_fraction:
            raise SearchError(
                f"max_weight_fraction={cfg.max_weight_fraction} is below what any plan of this space reaches: "
                f"the smallest plan keeps {frac:.4f} of the FP32 weight bytes"
            )
    if cfg.max_size_bytes is not None and min_size > cfg.max_size_bytes:
        raise SearchError(
            f"max_size_bytes={cfg.max_size_bytes} is below what any plan of this space reaches: the smallest "
            f"plan takes {min_size} bytes"
        )
    if cfg.max_avg_weight_bits is not None and min_bits > cfg.max_avg_weight_bits + 1e-9:
        raise SearchError(
            f"max_avg_weight_bits={cfg.max_avg_weight_bits} is below what any plan of this space reaches: the "
            f"smallest plan averages {min_bits:.3f} weight bits (float layers count 32)"
        )


def default_predictor(task: Any, sensitivity: Any = None, *, n_plans: int = 300, seed: int = 0,
                      model: str = "gbt", progress: bool = False, w_bits: Sequence[int] = (2, 3, 4, 6, 8),
                      a_bits: Sequence[int] = (8,)) -> Any:  # fmt: skip
    """The accuracy predictor of :mod:`workbench.predictor` on ``task`` (plan dataset cached under data/), trained
    on plans drawing each layer's bits from ``w_bits`` / ``a_bits`` (``a_bits=(32,)``: weight-only plans, as a
    weight-only search space needs)."""
    from workbench.predictor import AccuracyPredictor, PlanDatasetConfig, PlanFeaturizer, build_plan_dataset
    from workbench.sensitivity import analyze_sensitivity

    sens = sensitivity if sensitivity is not None else analyze_sensitivity(task, track=False)
    n_random = n_plans // 2
    ds_config = PlanDatasetConfig(
        n_random=n_random,
        n_stratified=n_plans - n_random,
        seed=seed,
        w_bits=tuple(w_bits),
        a_bits=tuple(a_bits),
    )
    dataset = build_plan_dataset(task, sens, ds_config, track=False)
    featurizer = PlanFeaturizer.fit(task, sens, w_bits=tuple(w_bits), a_bits=tuple(a_bits))
    predictor = AccuracyPredictor.fit(dataset, featurizer, model=model, seed=seed)
    predictor.info["dataset_plans"] = len(dataset)
    return predictor


def _needs(config: SearchConfig) -> tuple[bool, bool]:
    """(needs a predictor, needs a sensitivity result)."""
    needs_pred = config.accuracy in ("predicted", "multifidelity") or config.strategy == "control"
    needs_sens = config.strategy in ("greedy", "ilp", "aimet") or config.warm_start in (
        "greedy",
        "ilp",
        "aimet",
    )
    return needs_pred, needs_sens


def _warm_candidates(ctx: SearchContext, sensitivity: Any) -> list[tuple[str, dict[str, Any]]]:
    """The warm-start plans of a sampler strategy: the baseline's curve, within the size constraint."""
    cfg = ctx.config
    if cfg.warm_start is None:
        return []
    cands = _baseline_candidates(ctx, sensitivity, strategy=cfg.warm_start, n=10 * cfg.warm_start_plans)
    fits = [
        c
        for c in cands
        if not any(v > 0 for v in ctx.constraints(ctx.cost_model(c.plan), None)[: _n_size(cfg)])
    ]
    from workbench.search.baselines import select_evenly

    chosen = select_evenly(fits, cfg.warm_start_plans)
    return [(f"warm start: {c.label}", ctx.space.params_from_plan(c.plan)) for c in chosen]


def _n_size(cfg: SearchConfig) -> int:
    """How many of :meth:`SearchContext.constraints` (the first ones) are size budgets."""
    budgets = (cfg.max_weight_fraction, cfg.max_size_bytes, cfg.max_avg_weight_bits)
    return sum(v is not None for v in budgets)


def _baseline_candidates(
    ctx: SearchContext, sensitivity: Any, *, strategy: str | None = None, n: int | None = None
) -> list[Any]:
    from workbench.search import baselines as bl

    cfg = ctx.config
    s = strategy or cfg.strategy
    n = n or cfg.budget
    if s == "uniform":
        cands = bl.uniform_candidates(ctx.space)
    elif s == "greedy":
        cands = bl.greedy_candidates(ctx.space, ctx.cost_model, sensitivity, cost=cfg.ilp_cost)
    elif s == "ilp":
        # budgets spread up to the size constraint (HAWQ-V3 solves one ILP per budget)
        top = (
            cfg.max_weight_fraction
            if cfg.max_weight_fraction is not None and cfg.ilp_cost == "weight_size"
            else 0.25
        )
        fracs = np.linspace(min(0.05, top), top, max(n, 2))
        cands = bl.ilp_candidates(
            ctx.space, ctx.cost_model, sensitivity, budgets=tuple(float(f) for f in fracs), cost=cfg.ilp_cost,
            metric=cfg.sensitivity_metric,
        )  # fmt: skip
    elif s == "aimet":
        cands = bl.aimet_candidates(ctx.space, ctx.cost_model, sensitivity)
    elif s == "control":
        assert ctx.predicted is not None
        fp32 = ctx.predicted.fp32_accuracy

        def predict(plans: list[QuantPlan]) -> np.ndarray:
            return 100.0 * (fp32 - ctx.predicted.batch(plans))

        cands = bl.control_loop_candidates(
            ctx.space, ctx.cost_model, predict, thresholds=tuple(np.round(np.geomspace(0.1, 5.0, 8), 3))
        )
    else:  # pragma: no cover - validated in SearchConfig
        raise SearchError(f"{s!r} is not a baseline strategy")
    return bl.select_evenly(cands, n)


def _screen(
    ctx: SearchContext, *, seed: int, warm: Sequence[tuple[str, dict[str, Any]]] = ()
) -> list[tuple[str, dict[str, Any]]]:
    """Multi-fidelity phase 1: the strategy on the predictor for ``screen_trials``; returns up to ``budget``
    parameter sets: the predicted front first, then the next non-dominated layers."""
    import optuna

    cfg = ctx.config
    assert ctx.predicted is not None
    strategy = cfg.strategy if cfg.strategy in SAMPLER_STRATEGIES else "nsga2"
    sampler = _make_sampler(strategy, ctx, seed=seed, constraints=False)
    study = optuna.create_study(directions=_study_directions(cfg.objectives), sampler=sampler)
    for label, params in warm:
        study.enqueue_trial(params, user_attrs={"label": label})
    rows: list[tuple[dict[str, Any], QuantPlan, list[float]]] = []

    def objective(trial: Any) -> tuple[float, ...]:
        plan = ctx.space.suggest(trial)
        cost = ctx.cost_model(plan)
        acc = ctx.predicted(plan)
        cons = ctx.constraints(cost, acc)
        for cname, value in zip(_constraint_names(cfg), cons, strict=True):
            trial.set_constraint(cname, value)
        vals = [acc if o == "accuracy" else float({"size": cost.size_bytes, "weight_size": cost.weight_bytes,
                "bops": cost.bops, "latency": cost.latency_ms, "energy": cost.energy_mj}[o])
                for o in cfg.objectives]  # fmt: skip
        if all(c <= 0 for c in cons):
            rows.append((dict(trial.params), plan, vals))
        return tuple(vals)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=cfg.screen_trials, show_progress_bar=False)
    seen: set[str] = set()
    unique = []
    for params, plan, vals in rows:
        key = SearchSpace.plan_key(plan)
        if key not in seen:
            seen.add(key)
            unique.append((params, vals))
    chosen: list[tuple[str, dict[str, Any]]] = []
    remaining = list(range(len(unique)))
    layer = 0
    while remaining and len(chosen) < cfg.budget:
        vals = np.array([unique[i][1] for i in remaining])
        mask = pareto_mask(vals, _study_directions(cfg.objectives))
        level = [remaining[i] for i in np.flatnonzero(mask)]
        if not level:
            level = remaining[:1]
        for i in level[: cfg.budget - len(chosen)]:
            chosen.append((f"screened front {layer}", unique[i][0]))
        remaining = [i for i in remaining if i not in set(level)]
        layer += 1
    return chosen


def _study_frame(study: Any) -> pd.DataFrame:
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        if "plan" not in a:
            continue
        rows.append(
            {
                "trial": t.number,
                "label": a.get("label") or f"trial {t.number}",
                "accuracy": a["accuracy"],
                "shaped_accuracy": a.get("shaped_accuracy", a["accuracy"]),
                "accuracy_source": a["accuracy_source"],
                "cache_hit": bool(a.get("cache_hit", False)),
                "real_eval": int(a.get("real_eval", 0)),
                "feasible": bool(a.get("feasible", True)),
                "size_bytes": a["size_bytes"],
                "weight_bytes": a["weight_bytes"],
                "bops": a["bops"],
                "latency_ms": a["latency_ms"],
                "energy_mj": math.nan if a.get("energy_mj") is None else float(a["energy_mj"]),
                "avg_weight_bits": a["avg_weight_bits"],
                "avg_act_bits": a["avg_act_bits"],
                "plan_key": a["plan_key"],
                "plan": a["plan"],
                "worker": a.get("worker", 0),
                "duration_s": t.duration.total_seconds() if t.duration else math.nan,
            }
        )
    return pd.DataFrame(rows)


def compute_front(trials: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """Non-dominated feasible trials whose accuracy was measured or predicted (never skipped ones), one row per
    distinct plan, sorted by weight bytes."""
    if trials.empty:
        return trials.copy()
    ok = trials[trials["feasible"] & (trials["accuracy_source"] != "skipped_over_budget")]
    ok = ok.drop_duplicates("plan_key")
    if ok.empty:
        return ok
    col = {"accuracy": "accuracy", "size": "size_bytes", "weight_size": "weight_bytes", "bops": "bops",
           "latency": "latency_ms", "energy": "energy_mj"}  # fmt: skip
    cols = [col[o] for o in objectives]
    if "weight_bytes" not in cols:
        cols.append("weight_bytes")  # the reported front is always (accuracy, weight bytes) plus objectives
    dirs = ["maximize" if c == "accuracy" else "minimize" for c in cols]
    mask = pareto_mask(ok[cols].to_numpy(dtype=np.float64), dirs)
    return ok[mask].sort_values(["weight_bytes", "accuracy"], ascending=[True, False]).reset_index(drop=True)


# ============================================================================================ entry point


def _read_payload(payload_path: str) -> dict[str, Any]:
    """The worker payload written by :func:`_run_parallel` (in this session), read onto the CPU with the task's
    model then moved to ``payload["device"]``, the parent's device (the file's own device tags are not trusted:
    a worker may see other devices than the parent that wrote it)."""
    import torch

    payload = torch.load(payload_path, weights_only=False, map_location="cpu")
    payload["task"] = on_device(payload["task"], payload.get("device"))
    return payload


def _die_with_parent(parent_pid: int | None) -> None:
    """A spawned worker must not outlive the search that started it: a parent killed with SIGKILL (or OOM)
    would otherwise leave its workers running trials on the study, racing a later ``resume=True``. On Linux
    the kernel kills the worker with its parent (``PR_SET_PDEATHSIG``); everywhere a watchdog thread ends the
    worker once the pipe to its parent closes."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc / prctl: the watchdog below still works
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    parent = mp.parent_process()
    if parent is not None:

        def watch() -> None:
            parent.join()  # returns when the parent's end of the pipe closes: it has exited
            os._exit(1)

        threading.Thread(target=watch, name="workbench-parent-watch", daemon=True).start()


def _spawn_worker(payload_path: str, worker: int, parent_pid: int | None = None) -> None:  # a spawned process
    import optuna
    import torch

    _die_with_parent(parent_pid)
    payload = _read_payload(payload_path)
    task = payload["task"]
    config: SearchConfig = payload["config"]
    if config.worker_threads is not None:  # a spawned process starts with every core
        torch.set_num_threads(config.worker_threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = _prepare(task, config, payload.get("predictor"), payload["storage"],
                   fp32_latency_ms=payload.get("fp32_latency_ms"))  # fmt: skip
    ctx.worker = worker
    storage = open_storage(payload["storage"], heartbeat=True)
    sampler = _make_sampler(config.strategy, ctx, seed=config.seed + 1000 * worker,
                            constraints=_has_constraints(config))  # fmt: skip
    study = optuna.load_study(study_name=payload["study"], storage=storage, sampler=sampler)
    _run_worker(ctx, study, target=payload["target"], counts_real=payload["counts_real"],
                parent_run_id=payload.get("parent_run_id"), progress=False, max_trials=config.trial_cap())  # fmt: skip


def _constraint_names(config: SearchConfig) -> list[str]:
    names = []
    if config.max_weight_fraction is not None:
        names.append("weight_fraction")
    if config.max_size_bytes is not None:
        names.append("size_bytes")
    if config.max_avg_weight_bits is not None:
        names.append("avg_weight_bits")
    if config.max_accuracy_drop is not None:
        names.append("accuracy_drop_pp")
    return names


def _has_constraints(config: SearchConfig) -> bool:
    return any(
        v is not None
        for v in (
            config.max_weight_fraction,
            config.max_size_bytes,
            config.max_avg_weight_bits,
            config.max_accuracy_drop,
        )
    )


def stored_config(storage: str, study_name: str) -> SearchConfig | None:
    """The configuration stored with an existing study (None when the study has none)."""
    import optuna

    st = open_storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=st)
    except KeyError as e:
        raise SearchError(f"study {study_name!r} does not exist in {storage}") from e
    text = study.user_attrs.get(CONFIG_ATTR)
    return SearchConfig.from_dict(json.loads(text)) if text else None


def _compress_methods(space: SearchSpace) -> set[str]:
    used = {m for u in space.units for m in u.choices.methods if m in ("prune", "lowrank")}
    return used | {s.method for s in space.fixed.values() if s.method in ("prune", "lowrank")}


def run_search(
    task: Any,
    config: SearchConfig | None = None,
    *,
    predictor: Any = None,
    sensitivity: Any = None,
    join: bool = False,
    figures: Callable[[SearchResult], Mapping[str, Any]] | None = None,
    device: str | torch.device | None = None,
) -> SearchResult:
    """Run (or resume, or join) a search on ``task`` and return its front.

    ``predictor``: an :class:`~workbench.predictor.AccuracyPredictor` (built with :func:`default_predictor`
    when a mode or strategy needs one and none is given). ``sensitivity``: a
    :class:`~workbench.sensitivity.SensitivityResult` for the greedy / ILP / AIMET baselines (computed when
    needed). ``join``: this process is one more worker of an existing study (on another machine, say).
    ``config.resume``: continue a study after a crash (no other worker may be running on it); trials left
    running are marked failed and the plans of unfinished baseline trials are queued again. Joining and
    resuming adopt the configuration stored with the study, except ``budget`` (resume: the new budget),
    ``workers``, ``worker_threads``, ``track``, ``log_trials`` and ``progress``. ``figures``: a function of the
    result returning named plotly figures to log with the study's MLflow run (e.g.
    :func:`workbench.ui.search.search_figures`).
    ``device``: where plans are quantized and evaluated (``cpu``, ``cuda``, ``cuda:N``, a ``torch.device``;
    None: where ``task.model`` is); the model is copied there, and spawned workers (``config.workers > 1``) move
    their copy to the same device. The evaluation cache is keyed without the device. A device this machine
    lacks raises :class:`workbench.devices.DeviceError` before any study or storage is touched.
    """
    import optuna

    config = config or SearchConfig()
    if not isinstance(config, SearchConfig):
        raise SearchError(f"config must be a SearchConfig, got {type(config).__name__}")
    task = on_device(task, device)
    storage_url = config.storage or default_storage()
    _check_storage(storage_url)
    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = config.study_name or f"{task.name}-{config.strategy}-{config.accuracy}-s{config.seed}"
    storage = open_storage(storage_url, heartbeat=config.workers > 1 or join)
    existing = (
        [] if storage_url == MEMORY else [s.study_name for s in optuna.get_all_study_summaries(storage)]
    )
    fp32_latency: float | None = None
    if join or config.resume:
        if name not in existing:
            raise SearchError(
                f"study {name!r} does not exist in {storage_url}; existing studies: {existing or 'none'}"
            )
        attrs = optuna.load_study(study_name=name, storage=storage).user_attrs
        if attrs.get(CONFIG_ATTR):
            stored = SearchConfig.from_dict(json.loads(attrs[CONFIG_ATTR]))
            config = replace(
                stored,
                budget=config.budget if config.resume else stored.budget,
                workers=config.workers,
                worker_threads=config.worker_threads,
                track=config.track,
                log_trials=config.log_trials,
                progress=config.progress,
                resume=config.resume,
                storage=storage_url,
                study_name=name,
            )
        fp32_latency = attrs.get("fp32_latency_ms")
    elif name in existing:
        raise SearchError(
            f"study {name!r} already exists in {storage_url}; pass resume=True (--resume) to continue it, "
            "join=True (--join) to add a worker, or choose another study name"
        )
    # validate everything before the study exists (and before costly sensitivity / predictor work)
    space = SearchSpace(task.model, config.space)
    compress = _compress_methods(space)
    if config.accuracy in ("predicted", "multifidelity") and compress:
        raise SearchError(
            f"accuracy={config.accuracy!r} uses the predictor, which only knows quantization; the space uses "
            f"methods {sorted(compress)}. Use accuracy='measured' with prune / lowrank"
        )
    ctx = _prepare(task, config, None, storage_url, space=space, fp32_latency_ms=fp32_latency)
    if join or config.resume:
        _check_same_task(attrs, ctx, name, storage_url)
    needs_pred, needs_sens = _needs(config)
    if needs_sens and sensitivity is None:
        from workbench.sensitivity import analyze_sensitivity

        sensitivity = analyze_sensitivity(task, track=False)
    if needs_pred and predictor is None:
        bits: dict[str, Any] = {}
        if tuple(config.space.a_bits) == (32,):  # a weight-only space: learn from weight-only plans
            bits = {"a_bits": (32,), "w_bits": tuple(b for b in config.space.w_bits if b <= 8) or (8,)}
        predictor = default_predictor(task, sensitivity, seed=0, **bits)
    if predictor is not None:
        ctx.predicted = PredictedAccuracy(predictor, ctx.evaluator.fp32_accuracy)
    candidates: list[tuple[str, dict[str, Any]]] = []
    if not (config.resume or join):
        if config.strategy in BASELINE_STRATEGIES:
            for c in _baseline_candidates(ctx, sensitivity):
                candidates.append((c.label, ctx.space.params_from_plan(c.plan)))
            if not candidates:
                raise SearchError(f"strategy {config.strategy!r} produced no plan for this space")
        warm = _warm_candidates(ctx, sensitivity)
        if config.accuracy == "multifidelity":
            candidates.extend(_screen(ctx, seed=config.seed, warm=warm))
        else:
            candidates.extend(warm)
    sampler = _make_sampler(config.strategy, ctx, seed=config.seed, constraints=_has_constraints(config))
    if config.resume or join:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        if config.resume:
            _fail_stale(study, storage)
            _requeue_unfinished(study)
    else:
        study = optuna.create_study(
            study_name=name, storage=storage, directions=_study_directions(config.objectives), sampler=sampler
        )
        study.set_user_attr(CONFIG_ATTR, json.dumps(config.to_dict(), default=str))
        study.set_user_attr("fp32_latency_ms", ctx.cost_model.fp32_latency_ms)
        study.set_user_attr(TASK_ATTR, {"task": task.name, "evaluation_prefix": ctx.evaluator._prefix})
        for label, params in candidates:
            study.enqueue_trial(params, user_attrs={"label": label}, skip_if_exists=False)
        study.set_user_attr("enqueued", len(candidates))
    counts_real = config.accuracy != "predicted"
    if config.strategy in BASELINE_STRATEGIES or config.accuracy == "multifidelity":
        target = int(study.user_attrs.get("enqueued", 0))  # fixed candidate lists: each one is a trial
        counts_real = False
    else:
        target = config.budget

    from workbench import tracking

    parent_id: str | None = None
    with tracking.start_run(
        "search",
        run_name=f"search-{name}",
        params={"study": name, "storage": storage_url.split("@")[-1], "model": task.name, **_flat(config)},
        enabled=config.track,
    ) as run:
        parent_id = getattr(run, "run_id", None)
        if config.workers > 1 and not join:
            _run_parallel(task, config, predictor, storage_url, name, target, counts_real, parent_id,
                          ctx.cost_model.fp32_latency_ms)  # fmt: skip
        else:
            with _torch_threads(config.worker_threads):
                _run_worker(ctx, study, target=target, counts_real=counts_real, parent_run_id=parent_id,
                            progress=config.progress, max_trials=config.trial_cap())  # fmt: skip
        result = _finish(ctx, study, name, storage_url, t0, run_id=parent_id)
        _track_result(run, result, figures)
    return result


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """torch intra-op threads set to ``n`` inside the block (None: unchanged), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _requeue_unfinished(study: Any) -> None:
    """Baseline / screened candidates whose trial failed or was killed: queue their plans again."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    settled = {
        t.user_attrs.get("label")
        for t in trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING)
        and "label" in t.user_attrs
    }
    again: set[str] = set()
    for t in trials:
        label = t.user_attrs.get("label")
        if t.state == optuna.trial.TrialState.FAIL and label and label not in settled and label not in again:
            study.enqueue_trial(t.params, user_attrs={"label": label}, skip_if_exists=False)
            again.add(label)


def _check_same_task(attrs: Mapping[str, Any], ctx: SearchContext, name: str, storage_url: str) -> None:
    """Refuse to resume or join a study with another model, data, metric or seed than the one that created it
    (its trials would silently mix with this task's on one front). Studies created before the check was
    recorded carry no fingerprint and are accepted."""
    stored = attrs.get(TASK_ATTR)
    if not isinstance(stored, dict) or "evaluation_prefix" not in stored:
        return
    if stored["evaluation_prefix"] != ctx.evaluator._prefix:
        raise SearchError(
            f"study {name!r} in {storage_url.split('@')[-1]} was created for task {stored.get('task')!r} with "
            f"another model, data, metric or seed (evaluation fingerprint {stored['evaluation_prefix']}, this "
            f"task {ctx.task.name!r} has {ctx.evaluator._prefix}); pass another study name or storage"
        )


def _flat(config: SearchConfig) -> dict[str, Any]:
    d = config.to_dict()
    d.pop("space")
    d["space.w_bits"] = list(config.space.w_bits)
    d["space.a_bits"] = list(config.space.a_bits)
    d["space.granularities"] = list(config.space.granularities)
    d["space.methods"] = list(config.space.methods)
    return d


def _fail_stale(study: Any, storage: Any) -> None:
    """Trials left RUNNING by a killed process: mark them FAIL so the study can go on."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        with contextlib.suppress(Exception):  # another worker may have finished it meanwhile
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


def _run_parallel(task: Any, config: SearchConfig, predictor: Any, storage_url: str, name: str, target: int,
                  counts_real: bool, parent_id: str | None, fp32_latency_ms: float) -> None:  # fmt: skip
    """``config.workers`` spawned processes work on the study until the target is met."""
    import tempfile

    import torch

    ctxm = mp.get_context("spawn")
    procs = []
    with tempfile.TemporaryDirectory(prefix="workbench-search-") as tmp:
        payload_path = str(Path(tmp) / "payload.pt")
        # the task's model travels in the file (on its device); each worker reads it onto the CPU and moves
        # it to ``device``, the parent's device, so a worker never depends on how the file stored it
        payload = {"task": task, "config": replace(config, progress=False), "predictor": predictor,
                   "storage": storage_url, "study": name, "target": target, "counts_real": counts_real,
                   "parent_run_id": parent_id, "fp32_latency_ms": fp32_latency_ms,
                   "device": str(model_device(task.model))}  # fmt: skip
        torch.save(payload, payload_path)  # a file, not shared memory: workers may sit on a small /dev/shm
        try:
            for w in range(config.workers):
                p = ctxm.Process(target=_spawn_worker, args=(payload_path, w, os.getpid()), daemon=False)
                p.start()
                procs.append(p)
            for p in procs:
                p.join()
        except BaseException:  # interrupted (Ctrl-C, an error): stop the workers, never leave them running
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join()
            raise
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(
            f"{len(bad)} search worker(s) failed (exit codes {bad}); the study keeps its trials"
        )


def _finish(ctx: SearchContext, study: Any, name: str, storage_url: str, t0: float, *, run_id: str | None
            ) -> SearchResult:  # fmt: skip
    cfg = ctx.config
    trials = _study_frame(study)
    front = compute_front(trials, cfg.objectives)
    if cfg.accuracy == "multifidelity" and not front.empty:
        front = front[front["accuracy_source"] == "measured"].reset_index(drop=True)
    final_evals = 0
    fp32_final = None
    if cfg.final_split and not front.empty:
        final = PlanEvaluator(ctx.task, split=cfg.final_split, cache=ctx.evaluator.cache, seed=cfg.seed)
        fp32_final = final.fp32_accuracy
        accs = []
        for p in front["plan"]:
            acc, _ = final(QuantPlan.from_json(p))
            accs.append(acc)
        final_evals = final.real_evaluations
        front = front.assign(test_accuracy=accs)
    hv = front_hypervolume(front, fp32_accuracy=ctx.evaluator.fp32_accuracy,
                           fp32_weight_bytes=ctx.fp32_weight_bytes, ref=cfg.hv_ref)  # fmt: skip
    real = int(trials["real_eval"].sum()) if not trials.empty else 0
    info = {
        "latency_source": ctx.cost_model.latency_source,
        "fp32_latency_ms": ctx.cost_model.fp32_latency_ms,
        "space_units": len(ctx.space.units),
        # what the "accuracy" columns hold: the task's metric (accuracy, cosine, an eval_fn's name, ...)
        "metric_name": str(getattr(ctx.task, "metric_name", "accuracy")),
        "space_log10_plans": round(math.log10(ctx.space.cardinality()), 3)
        if math.isfinite(ctx.space.cardinality())
        else None,
    }
    if ctx.predicted is not None:
        info["predictor"] = getattr(ctx.predicted.predictor, "model_name", None)
        info["predictor_dataset_plans"] = ctx.predicted.predictor.info.get("dataset_plans")
    return SearchResult(
        study_name=name,
        storage=storage_url,
        config=cfg,
        trials=trials,
        front=front,
        hypervolume=hv,
        real_evaluations=real,
        final_evaluations=final_evals,
        fp32_accuracy=ctx.evaluator.fp32_accuracy,
        fp32_final_accuracy=fp32_final,
        fp32_weight_bytes=ctx.fp32_weight_bytes,
        fp32_size_bytes=ctx.cost_model.fp32_cost.size_bytes,
        seconds=time.perf_counter() - t0,
        run_id=run_id,
        info=info,
    )


def _track_result(
    run: Any, result: SearchResult, figures: Callable[[SearchResult], Mapping[str, Any]] | None
) -> None:
    if not getattr(run, "enabled", False):
        return
    run.log_metrics({"hypervolume": result.hypervolume, "real_evaluations": result.real_evaluations,
                     "final_evaluations": result.final_evaluations, "trials": len(result.trials),
                     "front_size": len(result.front), "seconds": result.seconds})  # fmt: skip
    run.log_dataframe(result.trials.drop(columns=["plan"]), "trials")
    run.log_dataframe(result.front.drop(columns=["plan"]), "front")
    run.log_json(result.to_dict(), "search_result")
    for i, plan in enumerate(result.plans()[:10]):
        run.log_plan(plan, f"front_{i:02d}")
    for fig_name, fig in (figures(result) if figures is not None else {}).items():
        run.log_figure(fig, fig_name)


__all__ = [
    "BASELINE_STRATEGIES",
    "SAMPLER_STRATEGIES",
    "STRATEGIES",
    "SearchConfig",
    "SearchContext",
    "SearchError",
    "SearchResult",
    "compute_front",
    "default_predictor",
    "default_storage",
    "open_storage",
    "run_search",
    "stored_config",
    "study_names",
]
