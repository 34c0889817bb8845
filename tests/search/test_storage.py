"""Durable studies: a search killed with SIGKILL resumes with every completed trial kept; two worker processes
share a study through a real PostgreSQL server without losing or duplicating trials or measurements."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from workbench.cli import main
from workbench.search.storage import open_storage
from workbench.servers import postgres_available, start_postgres

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _complete(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        s = optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        return []
    return s.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


SEARCH = ["search", "--model", "digits_cnn", "--strategy", "random", "--w-bits", "2,3,4,6,8", "--quiet"]


@pytest.mark.slow
def test_sigkill_then_resume_keeps_completed_trials(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    url = f"sqlite:///{tmp_path}/search.db"
    args = [*SEARCH, "--budget", "16", "--storage", url, "--study", "k"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", *args], cwd=ROOT, env=_env(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        while len(_complete(url, "k")) < 4:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the search never completed 4 trials"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {t.number: t.params for t in _complete(url, "k")}
    assert 4 <= len(before) < 16
    out = tmp_path / "resumed.json"
    assert main([*args, "--resume", "--no-track", "--json", str(out)]) == 0
    study = optuna.load_study(study_name="k", storage=url)
    after = {t.number: t.params for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    assert all(after[n] == p for n, p in before.items())  # every completed trial kept as it was
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    result = json.loads(out.read_text())
    assert result["real_evaluations"] == 16


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster on a free loopback port (workbench.servers.start_postgres), stopped and
    removed afterwards."""
    if not postgres_available():
        pytest.fail("PostgreSQL is not installed; `make test` installs it (scripts/install-system-deps.sh)")
    base = Path(tempfile.mkdtemp(prefix="wb-pg-", dir="/tmp"))  # reachable by the postgres user when root
    try:
        with start_postgres(base, database="optuna") as pg:
            yield pg.url
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(postgres, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    out = tmp_path / "pg.json"
    args = [*SEARCH, "--strategy", "tpe", "--budget", "6", "--storage", postgres, "--study", "pg", "--workers",
            "2", "--no-track", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    study = optuna.load_study(study_name="pg", storage=postgres)
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # none lost, none duplicated
    done, pruned = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
    # a trial that would measure past the budget while earlier trials still run is pruned before it measures
    assert all(t.state in (done, pruned) for t in trials), [t.state for t in trials]
    trials = [t for t in trials if t.state == done]
    # both workers ran against the shared study; which of them measured is a race (a worker that starts a few
    # seconds late on a loaded machine may find the budget spent), so only the set of workers is checked
    assert {t.user_attrs["worker"] for t in trials} <= {0, 1} and trials
    measured = [t.user_attrs["plan_key"] for t in trials if t.user_attrs["real_eval"]]
    assert len(measured) == len(set(measured))  # no plan measured twice, across workers
    assert 6 <= len(measured) <= 7  # the budget; a second worker may finish one trial in flight
    result = json.loads(out.read_text())
    assert result["real_evaluations"] == len(measured)
    # a worker pointed at a missing study is refused
    assert main([*SEARCH, "--storage", postgres, "--study", "nope", "--join", "--no-track"]) == 2


# --------------------------------------------------------------------------------------------- unit: storage parts


def _memory_study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=optuna.storages.InMemoryStorage())


def _completed(study: optuna.Study, **attrs: object) -> None:
    trial = study.ask({"x": optuna.distributions.CategoricalDistribution([0, 1])})
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    study.tell(trial, 0.0)


def test_storage_urls_are_checked_by_scheme():
    from workbench.search.config import SearchError
    from workbench.search.storage import check_storage

    check_storage(":memory:")
    check_storage("sqlite:///x.db")
    check_storage("postgresql+psycopg2://u@h/db")
    with pytest.raises(SearchError, match="not understood"):
        check_storage("search.db")
    with pytest.raises(SearchError, match="scheme 'redis' not supported"):
        check_storage("redis://localhost/0")


def test_reserve_evaluation_prunes_past_the_budget_counting_earlier_running_trials():
    from workbench.search.storage import measured_in_study, real_evaluations, reserve_evaluation

    study = _memory_study()
    _completed(study, real_eval=1, plan_key="a", accuracy_source="measured")
    _completed(study, real_eval=1, plan_key="b", accuracy_source="predicted")
    _completed(study, real_eval=0, plan_key="a", accuracy_source="measured")
    assert real_evaluations(study) == 2
    assert measured_in_study(study, "a") and not measured_in_study(study, "b")
    running = study.ask()  # an earlier trial still measuring
    later = study.ask()
    reserve_evaluation(later, 4)  # 2 measured + 1 running ahead < 4
    with pytest.raises(optuna.TrialPruned, match="budget of 3"):
        reserve_evaluation(later, 3)
    reserve_evaluation(running, 3)  # nothing runs ahead of the earlier trial


def test_stale_trials_fail_and_unfinished_candidates_are_queued_again():
    from workbench.search.storage import fail_stale, requeue_unfinished

    study = _memory_study()
    dist = {"x": optuna.distributions.CategoricalDistribution([0, 1])}
    for label, x, state in (("a", 0, "fail"), ("b", 1, "fail"), ("b", 1, "done"), ("c", 0, "run")):
        study.enqueue_trial({"x": x}, user_attrs={"label": label})
        trial = study.ask(dist)
        if state == "fail":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif state == "done":
            study.tell(trial, 0.0)
    fail_stale(study, study._storage)
    states = [t.state for t in study.get_trials()]
    assert optuna.trial.TrialState.RUNNING not in states and states.count(optuna.trial.TrialState.FAIL) == 3
    requeue_unfinished(study)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    queued = sorted((t.user_attrs["label"], t.system_attrs["fixed_params"]["x"]) for t in waiting)
    assert queued == [("a", 0), ("c", 0)]


def test_wait_for_twin_returns_unless_a_running_trial_holds_the_plan():
    from workbench.search.storage import wait_for_twin

    class Cache:
        def __init__(self, holder: str) -> None:
            self.holder, self.keys = holder, []

        def claim(self, key: str, owner: str) -> str:
            self.keys.append(key)
            return self.holder

    study = _memory_study()
    _completed(study)  # trial 0, finished
    trial = study.ask()  # trial 1
    for holder in ("1", "0", "sqlite-less"):  # itself, a finished trial, not a trial number
        cache = Cache(holder)
        wait_for_twin(cache, trial, "k", poll_s=0.01)
        assert cache.keys == [f"{study.study_name}|k"]


@pytest.fixture
def tokyo_time(monkeypatch):
    """Local time 9 h east of UTC (stored times must be UTC whatever the machine's zone)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_taking_an_enqueued_trial_is_a_compare_and_set(tmp_path, tokyo_time):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 1.0})
    (waiting,) = study.get_trials(deepcopy=False)
    running = optuna.trial.TrialState.RUNNING
    assert storage.set_trial_state_values(waiting._trial_id, running) is True
    assert storage.set_trial_state_values(waiting._trial_id, running) is False  # already taken
    plain = (
        study.ask()
    )  # a trial Optuna starts itself: the taken one's start time is stored the same way (UTC)
    started = [t.datetime_start for t in study.get_trials(deepcopy=False)]
    assert abs((started[1] - started[0]).total_seconds()) < 60
    study.tell(plain, 0.0)
    assert pickle.loads(pickle.dumps(storage)).get_trial(waiting._trial_id).state == running
    storage.set_trial_state_values(waiting._trial_id, optuna.trial.TrialState.COMPLETE, [1.0])
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(waiting._trial_id, running)


def _take_enqueued(url: str, n: int, out: list) -> None:  # a spawned process: ask / tell n trials
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    taken = []
    for _ in range(n):
        t = study.ask()
        taken.append(t.number)
        study.tell(t, 1.0)  # raises "Cannot tell a COMPLETE trial" where another worker took it too
    out.extend(taken)


def test_two_processes_never_take_the_same_enqueued_trial(tmp_path):
    import multiprocessing as mp

    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    for k in range(40):
        study.enqueue_trial({"x": float(k)}, skip_if_exists=False)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.list()
        procs = [ctx.Process(target=_take_enqueued, args=(url, 20, out)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0, 0]
        taken = sorted(out)
    assert taken == list(range(40))  # every enqueued trial taken exactly once
