"""Durable studies: a search killed with SIGKILL resumes with every completed trial kept; two worker processes
share a study through a real PostgreSQL server without losing or duplicating trials or measurements."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from workbench.cli import main

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"PostgreSQL's {name} is not installed; `make test` installs it (scripts/install-system-deps.sh)"
        )
    return path


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster on a free loopback port, stopped and removed afterwards."""
    root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="wb-pg-", dir="/tmp"))
    data, sock = base / "data", base / "sock"
    data.mkdir()
    sock.mkdir()
    prefix: list[str] = []
    if root:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*prefix, _pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"
    subprocess.run([*prefix, _pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w",
                    "-t", "60", "start"], check=True, capture_output=True, timeout=90)  # fmt: skip
    try:
        subprocess.run(
            [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "create database optuna"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*prefix, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
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
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}  # both workers did work
    measured = [t.user_attrs["plan_key"] for t in trials if t.user_attrs["real_eval"]]
    assert len(measured) == len(set(measured))  # no plan measured twice, across workers
    assert 6 <= len(measured) <= 7  # the budget; a second worker may finish one trial in flight
    result = json.loads(out.read_text())
    assert result["real_evaluations"] == len(measured)
    # a worker pointed at a missing study is refused
    assert main([*SEARCH, "--storage", postgres, "--study", "nope", "--join", "--no-track"]) == 2
