"""One call that records a stage as an MLflow run: :func:`log_stage`, used alike by the stages' ``track=``
keyword, the CLI commands, the pipeline and the notebooks, so that a stage logs the same run wherever it is
called from.

A stage result tells what it logs through two optional methods: ``to_metrics()`` (a flat ``{name: number}``)
and ``tables()`` (``{name: DataFrame}``). Results without ``to_metrics()`` give the numeric items of their
``to_dict()`` (or of the Mapping they are).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from workbench.tracking.handles import Run
from workbench.tracking.runs import active_run, start_run

if TYPE_CHECKING:
    import pandas as pd


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def stage_metrics(result: Any) -> dict[str, Any]:
    """The metrics of a stage result: ``result.to_metrics()`` when it has one, else the numeric (int / float,
    not bool) items of ``result.to_dict()`` or of the Mapping ``result`` is; ``{}`` for None."""
    if result is None:
        return {}
    to_metrics = getattr(result, "to_metrics", None)
    if callable(to_metrics) and not isinstance(result, type):
        return dict(to_metrics())
    if isinstance(result, Mapping):
        items = result
    elif callable(getattr(result, "to_dict", None)) and not isinstance(result, type):
        items = result.to_dict()
    else:
        raise TypeError(
            f"result must be None, a Mapping or have .to_metrics() / .to_dict(), got {type(result).__name__}"
        )
    return {str(k): v for k, v in items.items() if _is_number(v)}


def stage_tables(result: Any) -> dict[str, pd.DataFrame]:
    """The tables of a stage result: ``result.tables()`` (name -> DataFrame) when it has one, else ``{}``."""
    tables = getattr(result, "tables", None)
    if result is None or isinstance(result, type) or not callable(tables):
        return {}
    return dict(tables())


def log_stage(
    stage: str,
    result: Any = None,
    *,
    params: Any = None,
    plan: Any = None,
    plans: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    tables: Mapping[str, pd.DataFrame | None] | None = None,
    figures: Mapping[str, Any] | None = None,
    json: Mapping[str, Any] | None = None,
    run_name: str | None = None,
    experiment: str = "workbench",
    enabled: bool | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str | None:
    """Log ``stage`` as one MLflow run (:func:`start_run`, tag ``workbench.stage``) and return its run id, or
    None when tracking is off (``enabled=False``, or ``enabled=None`` and ``WORKBENCH_TRACKING=0``).

    What the run holds: ``params`` (dict or dataclass, nested keys flattened); ``plan`` as ``plans/plan.json``
    and each of ``plans`` as ``plans/<name>.json``; the metrics of ``result`` (:func:`stage_metrics`) updated by
    ``metrics`` (None values skipped), at step 0; the tables of ``result`` (:func:`stage_tables`) and
    ``tables`` as ``tables/<name>.csv``; ``json`` objects as ``<name>.json``; ``figures`` (plotly) as
    ``figures/<name>.html``. None tables and figures are skipped. The run is a child of the active run when
    there is one (a stage called inside another stage's or the caller's run).
    """
    nested = isinstance(active_run(), Run)
    with start_run(
        stage,
        experiment=experiment,
        run_name=run_name,
        params=params,
        tags=tags,
        nested=nested,
        enabled=enabled,
    ) as run:
        if not isinstance(run, Run):
            return None
        _log_contents(run, result, plan, plans, metrics, tables, figures, json)
        return run.run_id


def _log_contents(
    run: Run,
    result: Any,
    plan: Any,
    plans: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None,
    tables: Mapping[str, pd.DataFrame | None] | None,
    figures: Mapping[str, Any] | None,
    json: Mapping[str, Any] | None,
) -> None:
    """Everything :func:`log_stage` logs after the params, in a fixed order."""
    if plan is not None:
        run.log_plan(plan)
    for name, each in (plans or {}).items():
        run.log_plan(each, name=name)
    values = {**stage_metrics(result), **(metrics or {})}
    if values:
        run.log_metrics(values)
    for name, df in {**stage_tables(result), **(tables or {})}.items():
        if df is not None:
            run.log_dataframe(df, name)
    for name, obj in (json or {}).items():
        run.log_json(obj, name)
    for name, fig in (figures or {}).items():
        if fig is not None:
            run.log_figure(fig, name)
