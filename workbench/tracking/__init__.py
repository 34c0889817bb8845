"""MLflow helpers: the one part of the package that imports mlflow (lazily, so ``import workbench`` stays fast).

Every stage records itself through one call, :func:`log_stage`, whether the CLI, the pipeline, a notebook or the
stage's own ``track=`` keyword makes it: a run with the params, the plan, the result's metrics and tables::

    tracking.log_stage("profile", summary, params=config, tables={"profile": df}, run_name="profile-digits_cnn")

Underneath, :func:`start_run` yields a small handle with ``log_*`` methods (for runs that log as they go, such
as a search's trials)::

    with tracking.start_run("profile", params={"task": "digits"}) as run:
        run.log_dataframe(df, "profile")
        run.log_figure(fig, "latency")

The store is a sqlite database, ``sqlite:///<mlruns>/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` says otherwise;
artifacts go next to the database (``<mlruns>/<experiment>/<run_id>/artifacts``). With an ``http(s)://`` URI (a
shared tracking server, ``python -m workbench tracking-server``) the server decides where artifacts go and runs
fail fast with :class:`TrackingUnreachableError` when it does not answer. Set ``WORKBENCH_TRACKING=0``
(or pass ``enabled=False``) and :func:`start_run` yields a :class:`NullRun` whose methods do nothing, so library
code can always log without a store.

Artifact layout inside a run: ``config/<name>.json``, ``tables/<name>.csv``, ``plans/<name>.json``,
``figures/<name>.html|png|svg``, ``<name>.json`` for :meth:`Run.log_json`, and the model under its own name.

Parts: :mod:`.store` (URI, store, experiments, reachability), :mod:`.convert` (JSON values, flattened params),
:mod:`.handles` (:class:`Run`, :class:`NullRun`), :mod:`.runs` (:func:`start_run`, :func:`active_run`,
:func:`runs_frame`), :mod:`.stages` (:func:`log_stage`) and :mod:`.models` (:func:`load_model`).
"""

from __future__ import annotations

from workbench.tracking.convert import flatten_params, to_jsonable
from workbench.tracking.handles import NullRun, Run, RunHandle
from workbench.tracking.models import load_model
from workbench.tracking.runs import active_run, runs_frame, start_run
from workbench.tracking.stages import log_stage, stage_metrics, stage_tables
from workbench.tracking.store import (
    DISABLE_ENV,
    REACH_TIMEOUT,
    STAGE_TAG,
    TrackingUnreachableError,
    artifact_root,
    check_reachable,
    ensure_store,
    get_experiment,
    tracking_enabled,
    tracking_uri,
)

__all__ = [
    "DISABLE_ENV",
    "REACH_TIMEOUT",
    "STAGE_TAG",
    "NullRun",
    "Run",
    "RunHandle",
    "TrackingUnreachableError",
    "active_run",
    "artifact_root",
    "check_reachable",
    "ensure_store",
    "flatten_params",
    "get_experiment",
    "load_model",
    "log_stage",
    "runs_frame",
    "stage_metrics",
    "stage_tables",
    "start_run",
    "to_jsonable",
    "tracking_enabled",
    "tracking_uri",
]
