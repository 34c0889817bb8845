"""Starting runs (:func:`start_run`), the active run of library code (:func:`active_run`) and the runs of an
experiment as a table (:func:`runs_frame`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from workbench.tracking.convert import flatten_params
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
    adopt_run_id: str | None = None,
) -> Iterator[RunHandle]:
    """Start an MLflow run for ``stage`` (tag ``workbench.stage``) and yield its :class:`Run` handle.

    ``params`` (dict or dataclass, nested keys flattened) are logged at start. ``nested=True`` makes it a
    child of the active run; ``parent_run_id`` makes it a
    child of that run (also from another process, e.g. a search worker). With ``enabled=False`` or ``WORKBENCH_TRACKING=0`` a :class:`NullRun` is yielded.
    The run ends FINISHED, or FAILED if the block raises.

    ``adopt_run_id``: a run of this store to continue instead of starting one (e.g. the parent run of a search
    killed with SIGKILL and resumed, left RUNNING): it is reopened, its child runs still RUNNING are ended
    KILLED, params it lacks are logged and those it holds with another value are set as ``resumed.<name>`` tags
    (MLflow params cannot change). A run id this store lacks starts a new run.
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
    if adopt_run_id is not None and _adoptable(adopt_run_id, experiment_id, uri):
        with mlflow.start_run(run_id=adopt_run_id) as active:
            run = Run(run_id=active.info.run_id, experiment_id=experiment_id, uri=uri)
            _continue(run, params, all_tags)
            yield run
        return
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


def _adoptable(run_id: str, experiment_id: str, uri: str) -> bool:
    """Whether ``run_id`` is a run of this store's ``experiment_id`` (not deleted)."""
    from mlflow.exceptions import MlflowException

    try:
        info = _client(uri).get_run(run_id).info
    except MlflowException:
        return False
    return info.experiment_id == experiment_id and info.lifecycle_stage == "active"


def _continue(run: Run, params: Any, tags: Mapping[str, str]) -> None:
    """An adopted run: its children left RUNNING ended KILLED, the params it lacks logged, changed ones tagged."""
    client = run._c
    children = client.search_runs(
        [run.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.run_id}' and status = 'RUNNING'"
    )
    for child in children:
        client.set_terminated(child.info.run_id, status="KILLED")
    data = client.get_run(run.run_id).data
    flat = flatten_params(params) if params else {}
    new = {k: v for k, v in flat.items() if k not in data.params}
    if new:
        run.log_params(new)
    changed = {f"resumed.{k}": v for k, v in flat.items() if k in data.params and data.params[k] != v}
    resumes = int(data.tags.get("workbench.resumes", "0")) + 1
    run.set_tags({**tags, **changed, "workbench.resumes": resumes})


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
