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

Parts of :mod:`workbench.search`: :mod:`~workbench.search.config` (:class:`SearchConfig`),
:mod:`~workbench.search.strategies` (the registry), :mod:`~workbench.search.storage`,
:mod:`~workbench.search.context`, :mod:`~workbench.search.trial`, :mod:`~workbench.search.workers`,
:mod:`~workbench.search.screening`, :mod:`~workbench.search.result` and :mod:`~workbench.search.report`; this
module composes them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from workbench._common.threads import torch_threads
from workbench.devices import on_device
from workbench.search.config import (
    BASELINE_STRATEGIES,
    CONFIG_ATTR,
    MEMORY,
    PARENT_RUN_ATTR,
    SAMPLER_STRATEGIES,
    STRATEGIES,
    TASK_ATTR,
    SearchConfig,
    SearchError,
)
from workbench.search.context import SearchContext, prepare, study_directions
from workbench.search.evaluator import SaturatedMetricWarning, warn_if_saturated
from workbench.search.inputs import auto_sensitivity, default_predictor
from workbench.search.report import finish, flat_params, track_result
from workbench.search.result import SearchResult, compute_front
from workbench.search.screening import screen
from workbench.search.space import SearchSpace
from workbench.search.storage import (
    check_storage,
    default_storage,
    fail_stale,
    open_storage,
    requeue_unfinished,
    stored_config,
    study_names,
)
from workbench.search.strategies import (
    STRATEGY_REGISTRY,
    baseline_candidates,
    make_sampler,
    needs,
    warm_candidates,
)
from workbench.search.workers import run_parallel, run_worker

if TYPE_CHECKING:
    import torch

    from workbench.tasks.task import TaskLike


def run_search(
    task: TaskLike,
    config: SearchConfig | None = None,
    *,
    predictor: Any = None,
    sensitivity: Any = None,
    join: bool = False,
    figures: Callable[[SearchResult], Mapping[str, Any]] | None = None,
    device: str | torch.device | None = None,
) -> SearchResult:
    """Run (or resume, or join) a search on ``task`` and return its front.

    ``predictor``: an :class:`~workbench.predictor.AccuracyPredictor` (for ``accuracy="predicted"`` /
    ``"multifidelity"``, the ``control`` baseline); ``sensitivity``: a sensitivity result of
    :mod:`workbench.sensitivity` (for the greedy / ILP / AIMET baselines, as strategy or warm start, of a new
    study). One needed but missing raises :class:`SearchError`: :func:`workbench.pipeline.prepare_search`
    builds them with the defaults. ``join``: this process is one more worker of an existing study (elsewhere).
    ``config.resume``: continue a study after a crash (no other worker may be running on it); trials left
    running are marked failed and the plans of unfinished baseline trials are queued again. Joining and
    resuming adopt the configuration stored with the study, except ``budget`` (resume: the new budget),
    ``workers``, ``worker_threads``, ``track``, ``log_trials`` and ``progress``. ``figures``: a function of the
    result returning named plotly figures to log with the study's MLflow run (e.g.
    :func:`workbench.ui.search.search_figures`).
    ``device``: where plans are quantized and evaluated (``cpu``, ``cuda``, ``cuda:N``, a ``torch.device``;
    None: where ``task.model`` is; spawned workers use it too; the evaluation cache is keyed without it); a
    device this machine lacks raises :class:`workbench.devices.DeviceError` before any storage is touched.
    """
    import optuna

    config = config or SearchConfig()
    if not isinstance(config, SearchConfig):
        raise SearchError(f"config must be a SearchConfig, got {type(config).__name__}")
    task = on_device(task, device)
    storage_url = config.storage or default_storage()
    check_storage(storage_url)
    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name(task, config)
    storage = open_storage(storage_url, heartbeat=config.workers > 1 or join)
    config, attrs = _existing_study(storage, storage_url, name, config, join=join)
    ctx, candidates = _context(task, config, attrs, predictor, sensitivity, storage_url, name, join=join)
    sampler = make_sampler(config.strategy, ctx, seed=config.seed)
    study = _open_study(ctx, storage, name, sampler, candidates, join=join)
    target, counts_real = _target(config, study)

    from workbench import tracking

    with tracking.start_run(
        "search",
        run_name=f"search-{name}",
        params={
            "study": name,
            "storage": storage_url.split("@")[-1],
            "model": task.name,
            **flat_params(config),
        },
        enabled=config.track,
        adopt_run_id=study.user_attrs.get(PARENT_RUN_ATTR) if config.resume else None,
    ) as run:
        parent_id: str | None = getattr(run, "run_id", None)
        if parent_id is not None and not join:  # a resume continues this run: one study, one parent run
            study.set_user_attr(PARENT_RUN_ATTR, parent_id)
        if config.workers > 1 and not join:
            run_parallel(task, config, predictor, storage_url, name, target, counts_real, parent_id,
                         ctx.cost_model.fp32_latency_ms)  # fmt: skip
        else:
            with torch_threads(config.worker_threads):
                run_worker(ctx, study, target=target, counts_real=counts_real, parent_run_id=parent_id,
                           progress=config.progress, max_trials=config.trial_cap())  # fmt: skip
        result = finish(ctx, study, name, storage_url, t0, run_id=parent_id)
        track_result(run, result, figures)
    return result


def _context(
    task: TaskLike, config: SearchConfig, attrs: Mapping[str, Any], predictor: Any, sensitivity: Any,
    storage_url: str, name: str, *, join: bool,
) -> tuple[SearchContext, list[tuple[str, dict[str, Any]]]]:  # fmt: skip
    """The worker context and the candidates a new study starts with, everything validated before the study
    exists (and before the FP32 accuracy is measured); the sensitivity pass and the allocation are timed."""
    space = SearchSpace(task.model, config.space)
    _check_predictor_space(config, space)
    t_sens = time.perf_counter()
    sensitivity = auto_sensitivity(task, config, sensitivity, join=join)
    t_sens = time.perf_counter() - t_sens
    _check_inputs(config, predictor, sensitivity, join=join)
    ctx = prepare(
        task, config, predictor, storage_url, space=space, fp32_latency_ms=attrs.get("fp32_latency_ms")
    )
    if join or config.resume:
        _check_same_task(attrs, ctx, name, storage_url)
    warn_if_saturated(ctx.evaluator, split=config.split)
    t_alloc = time.perf_counter()
    candidates = [] if config.resume or join else _initial_candidates(ctx, sensitivity)
    ctx.stage_seconds.update(sensitivity=t_sens, allocation=time.perf_counter() - t_alloc)
    return ctx, candidates


def _existing_study(
    storage: Any, storage_url: str, name: str, config: SearchConfig, *, join: bool
) -> tuple[SearchConfig, Mapping[str, Any]]:
    """(config, the study's user attributes) of the study to run. A study to resume or join must exist, and its
    stored configuration is adopted except ``budget`` (resume: the new one), the worker and output settings;
    a new study must not exist yet (its attributes are then empty)."""
    import optuna

    existing = (
        [] if storage_url == MEMORY else [s.study_name for s in optuna.get_all_study_summaries(storage)]
    )
    if not (join or config.resume):
        if name in existing:
            raise SearchError(
                f"study {name!r} already exists in {storage_url}; pass resume=True (--resume) to continue it, "
                "join=True (--join) to add a worker, or choose another study name"
            )
        return config, {}
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
    return config, attrs


def _check_predictor_space(config: SearchConfig, space: SearchSpace) -> None:
    """The predictor only knows quantization: refuse predicted accuracy on a space with prune / lowrank."""
    compress = _compress_methods(space)
    if config.accuracy in ("predicted", "multifidelity") and compress:
        raise SearchError(
            f"accuracy={config.accuracy!r} uses the predictor, which only knows quantization; the space uses "
            f"methods {sorted(compress)}. Use accuracy='measured' with prune / lowrank"
        )


def _compress_methods(space: SearchSpace) -> set[str]:
    used = {m for u in space.units for m in u.choices.methods if m in ("prune", "lowrank")}
    return used | {s.method for s in space.fixed.values() if s.method in ("prune", "lowrank")}


def study_name(task: TaskLike, config: SearchConfig) -> str:
    """The study a run of ``config`` on ``task`` works on: ``config.study_name``, else
    ``<task>-<strategy>-<accuracy>-s<seed>``, followed by each budget set (``-bits5``, ``-macbits4``, ``-wf0.2``,
    ``-size100000``, ``-drop1``) so that runs at different budgets never share a study."""
    if config.study_name:
        return config.study_name
    budgets = (("bits", config.max_avg_weight_bits), ("macbits", config.max_avg_mac_bits),
               ("wf", config.max_weight_fraction), ("size", config.max_size_bytes),
               ("drop", config.max_accuracy_drop))  # fmt: skip
    suffix = "".join(f"-{tag}{value:g}" for tag, value in budgets if value is not None)
    return f"{task.name}-{config.strategy}-{config.accuracy}-s{config.seed}{suffix}"


def resolved_config(
    task: TaskLike, config: SearchConfig | None = None, *, join: bool = False
) -> SearchConfig:
    """The configuration :func:`run_search` ``(task, config, join=join)`` runs with: ``config`` for a new study;
    when resuming or joining, the one stored with the study (with ``config``'s budget, worker and output
    settings), read from its storage. Raises :class:`SearchError` as :func:`run_search` would (no such study,
    a bad storage URL, a space the accuracy mode cannot score), before any sensitivity or predictor work."""
    config = config or SearchConfig()
    if not isinstance(config, SearchConfig):
        raise SearchError(f"config must be a SearchConfig, got {type(config).__name__}")
    if join or config.resume:
        storage_url = config.storage or default_storage()
        check_storage(storage_url)
        storage = open_storage(storage_url)
        config = _existing_study(storage, storage_url, study_name(task, config), config, join=join)[0]
    _check_predictor_space(config, SearchSpace(task.model, config.space))
    return config


def required_inputs(config: SearchConfig, *, join: bool = False) -> tuple[bool, bool]:
    """(needs a predictor, needs a sensitivity result) of a run with ``config`` (as :func:`resolved_config`
    returns it). A resumed or joined study enqueues no baseline plans: it needs no sensitivity result."""
    needs_pred, needs_sens = needs(config)
    return needs_pred, needs_sens and not (join or config.resume)


def _check_inputs(config: SearchConfig, predictor: Any, sensitivity: Any, *, join: bool) -> None:
    """Refuse a run missing the predictor or sensitivity result its strategy, warm start or accuracy mode
    needs, naming what needs it and how to get it."""
    needs_pred, needs_sens = required_inputs(config, join=join)
    how = "or let workbench.pipeline.prepare_search(task, config) build it with the defaults"
    if needs_pred and predictor is None:
        why = (
            f"strategy {config.strategy!r}"
            if config.accuracy == "measured"
            else f"accuracy={config.accuracy!r}"
        )
        raise SearchError(
            f"{why} needs an accuracy predictor and none was given: pass predictor= (e.g. "
            f"workbench.search.default_predictor(task, sensitivity)) {how}"
        )
    if needs_sens and sensitivity is None:
        strategy = STRATEGY_REGISTRY[config.strategy]
        why = (
            f"strategy {config.strategy!r}"
            if strategy.needs_sensitivity
            else f"warm_start={config.warm_start!r}"
        )
        raise SearchError(
            f"{why} needs a sensitivity result and none was given: pass sensitivity= (e.g. "
            f"workbench.sensitivity.analyze_sensitivity(task)) {how}"
        )


def _initial_candidates(ctx: SearchContext, sensitivity: Any) -> list[tuple[str, dict[str, Any]]]:
    """The labelled parameter sets a new study starts with: a baseline's plans, the warm start (screened on the
    predictor first with ``multifidelity``)."""
    config = ctx.config
    candidates: list[tuple[str, dict[str, Any]]] = []
    if STRATEGY_REGISTRY[config.strategy].candidates is not None:
        for c in baseline_candidates(ctx, sensitivity):
            candidates.append((c.label, ctx.space.params_from_plan(c.plan)))
        if not candidates:
            raise SearchError(f"strategy {config.strategy!r} produced no plan for this space")
    warm = warm_candidates(ctx, sensitivity)
    if config.accuracy == "multifidelity":
        candidates.extend(screen(ctx, seed=config.seed, warm=warm))
    else:
        candidates.extend(warm)
    return candidates


def _open_study(
    ctx: SearchContext,
    storage: Any,
    name: str,
    sampler: Any,
    candidates: Sequence[tuple[str, dict[str, Any]]],
    *,
    join: bool,
) -> Any:
    """The Optuna study: loaded to resume (stale trials failed, unfinished candidates queued again) or join, or
    created with the config, the FP32 latency, the task's fingerprint and the candidates enqueued."""
    import optuna

    config = ctx.config
    if config.resume or join:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        if config.resume:
            fail_stale(study, storage)
            requeue_unfinished(study)
        return study
    study = optuna.create_study(
        study_name=name, storage=storage, directions=study_directions(config.objectives), sampler=sampler
    )
    study.set_user_attr(CONFIG_ATTR, json.dumps(config.to_dict(), default=str))
    study.set_user_attr("fp32_latency_ms", ctx.cost_model.fp32_latency_ms)
    for key, value in ctx.study_attrs.items():
        study.set_user_attr(key, value)
    study.set_user_attr(TASK_ATTR, {"task": ctx.task.name, "evaluation_prefix": ctx.evaluator._prefix})
    for label, params in candidates:
        study.enqueue_trial(params, user_attrs={"label": label}, skip_if_exists=False)
    study.set_user_attr("enqueued", len(candidates))
    return study


def _target(config: SearchConfig, study: Any) -> tuple[int, bool]:
    """(target, whether it counts real evaluations rather than trials)."""
    if config.strategy in BASELINE_STRATEGIES or config.accuracy == "multifidelity":
        return int(study.user_attrs.get("enqueued", 0)), False  # fixed candidate lists: each one is a trial
    return config.budget, config.accuracy != "predicted"


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


__all__ = [
    "BASELINE_STRATEGIES",
    "SAMPLER_STRATEGIES",
    "STRATEGIES",
    "SearchConfig",
    "SearchContext",
    "SearchError",
    "SaturatedMetricWarning",
    "SearchResult",
    "compute_front",
    "default_predictor",
    "default_storage",
    "open_storage",
    "required_inputs",
    "resolved_config",
    "run_search",
    "stored_config",
    "study_name",
    "study_names",
]
