"""Where studies live and how workers share them: Optuna storages (``sqlite:///...`` by default, PostgreSQL or
MySQL URLs for several machines, ``":memory:"``), the configuration stored with a study, recovery of trials a
killed process left behind, and the plan claims that keep two workers from measuring the same plan or running
past the budget together."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from workbench.search.config import CONFIG_ATTR, MEMORY, SearchConfig, SearchError


def default_storage() -> str:
    from workbench.paths import mlruns_dir

    path = mlruns_dir() / "search.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def check_storage(url: str) -> None:
    """Refuse a storage URL that is neither ``":memory:"`` nor an SQLAlchemy URL of a supported database."""
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
    check_storage(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat:
        kwargs.update(heartbeat_interval=10, grace_period=60)
    try:
        from workbench.search.rdb import AtomicPopRDBStorage

        return AtomicPopRDBStorage(url, **kwargs)
    except Exception as e:  # noqa: BLE001 - connection errors come in many types
        raise SearchError(f"cannot open storage {url!r}: {e}") from e


def study_names(storage_url: str) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage_url))]


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


# ============================================================================================ recovery


def fail_stale(study: Any, storage: Any) -> None:
    """Trials left RUNNING by a killed process: mark them FAIL so the study can go on."""
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        with contextlib.suppress(Exception):  # another worker may have finished it meanwhile
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


def requeue_unfinished(study: Any) -> None:
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


# ============================================================================================ plan claims


def wait_for_twin(cache: Any, trial: Any, key: str, *, poll_s: float = 0.2) -> None:
    """Claim the plan for this trial in the shared cache database (``cache``, the evaluator's
    :class:`~workbench.search.objectives.EvalCache`); when an earlier trial of the study holds the claim and is
    still running (another worker measuring the very same plan), wait until it ends, so that this trial reads its
    measurement from the cache and costs no evaluation. A holder that is no longer running (finished, failed, or
    killed and marked failed on resume) is not waited for."""
    import optuna

    holder = cache.claim(f"{trial.study.study_name}|{key}", str(trial.number))
    if holder == str(trial.number) or not holder.isdigit():
        return
    number = int(holder)
    running = (optuna.trial.TrialState.RUNNING,)
    while any(t.number == number for t in trial.study.get_trials(deepcopy=False, states=running)):
        time.sleep(poll_s)


def reserve_evaluation(trial: Any, budget: int) -> None:
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


def measured_in_study(study: Any, key: str) -> bool:
    """Whether a completed trial of ``study`` measured the plan with key ``key``."""
    import optuna

    return any(
        t.user_attrs.get("plan_key") == key and t.user_attrs.get("accuracy_source") == "measured"
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    )


def real_evaluations(study: Any) -> int:
    """Real evaluations the completed trials of ``study`` cost."""
    import optuna

    return sum(int(t.user_attrs.get("real_eval", 0)) for t in study.get_trials(deepcopy=False,
               states=(optuna.trial.TrialState.COMPLETE,)))  # fmt: skip
