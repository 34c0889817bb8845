"""Starting runs (:func:`start_run`), the active run of library code (:func:`active_run`) and the runs of an
experiment as a table (:func:`runs_frame`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from workbench.tracking.handles import NullRun, Run, RunHandle
from workbench.tracking.store import STAGE_TAG, _client, ensure_store, get_experiment, tracking_enabled

if TYPE_CHECKING:
    import pandas as pd


@contextlib.contextmanager
def start_run(
    stage: str,
    *,
    experiment: str = "workbench",
    run_name: str | None = None,
    params: Any = None,
    tags: Mapping[str, Any] | None = None,
    nested: bool = False,
    parent_run_id: str | None = None,
    enabled: bool | None = None,
) -> Iterator[RunHandle]:
    """Start an MLflow run for ``stage`` (tag ``workbench.stage``) and yield its :class:`Run` handle.

    ``params`` (dict or dataclass, nested keys flattened) are logged at start. ``nested=True`` makes it a
    child of the active run; ``parent_run_id`` makes it a
    child of that run (also from another process, e.g. a search worker). With ``enabled=False`` or ``WORKBENCH_TRACKING=0`` a :class:`NullRun` is yielded.
    The run ends FINISHED, or FAILED if the block raises.
    """
    if not stage or not isinstance(stage, str):
        raise ValueError(f"stage must be a non-empty string, got {stage!r}")
    if enabled is None:
        enabled = tracking_enabled()
    if not enabled:
        yield NullRun()
        return
    import mlflow

    uri = ensure_store()
    experiment_id = get_experiment(experiment, uri=uri)
    mlflow.set_tracking_uri(uri)
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    all_tags[STAGE_TAG] = stage
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name or stage,
        nested=nested or parent_run_id is not None,
        parent_run_id=parent_run_id,
        tags=all_tags,
    ) as active:
        run = Run(run_id=active.info.run_id, experiment_id=experiment_id, uri=uri)
        if params:
            run.log_params(params)
        yield run


def active_run() -> RunHandle:
    """Handle on the innermost active MLflow run of this thread, or a :class:`NullRun` when there is none.

    Lets library code log into whatever run its caller started, without passing handles around.
    """
    if not tracking_enabled():
        return NullRun()
    import sys

    if "mlflow" not in sys.modules:  # no run can be active if mlflow was never imported
        return NullRun()
    import mlflow

    active = mlflow.active_run()
    if active is None:
        return NullRun()
    return Run(
        run_id=active.info.run_id, experiment_id=active.info.experiment_id, uri=mlflow.get_tracking_uri()
    )


def runs_frame(
    experiment: str = "workbench",
    *,
    stage: str | None = None,
    filter_string: str = "",
    max_results: int = 1000,
) -> pd.DataFrame:
    """Runs of ``experiment`` as a DataFrame (newest first): ``run_id``, ``status``, ``params.*``, ``metrics.*``,
    ``tags.*`` columns as :func:`mlflow.search_runs` gives them. Empty if the experiment is missing or tracking is
    disabled. ``stage`` filters on the ``workbench.stage`` tag.
    """
    import pandas as pd

    if not tracking_enabled():
        return pd.DataFrame()
    import mlflow

    uri = ensure_store()
    exp = _client(uri).get_experiment_by_name(experiment)
    if exp is None:
        return pd.DataFrame()
    clauses = [filter_string] if filter_string else []
    if stage is not None:
        clauses.append(f"tags.`{STAGE_TAG}` = '{stage}'")
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string=" and ".join(clauses),
        max_results=max_results,
        order_by=["attributes.start_time DESC"],
        output_format="pandas",
    )
