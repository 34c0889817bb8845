"""The shared tracking set-up: PostgreSQL + an MLflow tracking server serving artifacts (workbench.servers), a real
workbench run logging to it over HTTP, the runs read back, also after ``python -m workbench tracking-server`` restarts
both on the same folders; and a tracking URI that does not answer fails fast with an error naming it."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from workbench import tracking
from workbench.cli import main
from workbench.servers import free_port, postgres_available, postgres_bin, start_postgres
from workbench.servers import start_tracking_server as start_server

ROOT = Path(__file__).resolve().parents[2]
PLAN = "uniform:w4a8:per_channel"


def _psql(port: int, sql: str) -> str:
    cmd = [postgres_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "mlflow", "-tAc",
           sql]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def _read_back(uri: str, run_id: str, dst: Path) -> tuple[dict[str, float], list[str], dict]:
    """Metrics, artifact paths under plans/ and the downloaded plan of ``run_id``, read through the server."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    paths = [f.path for f in client.list_artifacts(run_id, "plans")]
    dst.mkdir(parents=True, exist_ok=True)
    plan = json.loads(Path(client.download_artifacts(run_id, "plans/plan.json", str(dst))).read_text())
    return dict(run.data.metrics), paths, plan


@pytest.mark.slow
@pytest.mark.skipif(
    not postgres_available(),
    reason="PostgreSQL (initdb, pg_ctl, psql) is not installed; scripts/install-system-deps.sh installs it",
)
def test_a_workbench_run_logs_to_the_tracking_server_and_survives_a_restart(digits_cnn_task, monkeypatch):
    base = Path(tempfile.mkdtemp(prefix="wb-tracking-", dir="/tmp"))
    base.chmod(0o755)  # base/pg must be reachable by the postgres user when the tests run as root
    pg_dir, artifacts, out = base / "pg", base / "artifacts", base / "quantize.json"
    cli = None
    try:
        t0 = time.perf_counter()
        with start_postgres(pg_dir) as pg, start_server(
            backend_uri=pg.url, artifact_root=artifacts, work_dir=base
        ) as server:  # fmt: skip
            started = time.perf_counter() - t0
            assert server.url.startswith("http://127.0.0.1:") and pg.url.startswith("postgresql+psycopg2://")
            env = {**os.environ, "MLFLOW_TRACKING_URI": server.url, "WORKBENCH_TRACKING": "1"}
            cmd = [sys.executable, "-m", "workbench", "quantize", "--model", "digits_cnn", "--plan", PLAN,
                   "--json", str(out)]  # fmt: skip
            r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stderr[-3000:]
            result = json.loads(out.read_text())

            from mlflow import MlflowClient

            monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)  # artifact downloads resolve through it
            client = MlflowClient(tracking_uri=server.url)
            exp = client.get_experiment_by_name("workbench")
            assert exp.artifact_location.startswith("mlflow-artifacts:")  # served by the server, not a path
            runs = client.search_runs([exp.experiment_id])
            assert len(runs) == 1
            run = runs[0]
            run_id = run.info.run_id
            assert run.info.status == "FINISHED" and run.data.tags["workbench.stage"] == "quantize"
            assert run.data.params["plan"] == PLAN
            metrics, paths, plan = _read_back(server.url, run_id, base / "download1")
            assert metrics["accuracy"] == pytest.approx(result["accuracy"]) and 0.5 < metrics["accuracy"] <= 1
            assert metrics["size_bytes"] == result["size_bytes"]
            assert paths == ["plans/plan.json"] and plan == result["plan"]
            # the artifact lies under the server's artifact root (uploaded through the server)
            stored = list(artifacts.rglob("plan.json"))
            assert len(stored) == 1 and run_id in stored[0].parts
            # the run is a row of the PostgreSQL database
            assert _psql(pg.port, f"select status from runs where run_uuid = '{run_id}'") == "FINISHED"
            assert float(_psql(pg.port, f"select value from latest_metrics where run_uuid = '{run_id}' "
                                        "and key = 'accuracy'")) == pytest.approx(result["accuracy"])  # fmt: skip
        assert not server.running() and not (pg_dir / "data" / "postmaster.pid").exists()
        # restarted by the CLI on the same folders (new PostgreSQL port): the run, metrics and artifacts are kept
        port = free_port()
        cli = subprocess.Popen(
            [sys.executable, "-m", "workbench", "tracking-server", "--home", str(base), "--port", str(port)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in cli.stdout], daemon=True).start()
        printed, deadline = [], time.monotonic() + 180
        while not any(line.startswith("  export MLFLOW_TRACKING_URI=") for line in printed):
            assert cli.poll() is None and time.monotonic() < deadline, "".join(printed)
            with contextlib.suppress(queue.Empty):
                printed.append(lines.get(timeout=1))
        uri = f"http://127.0.0.1:{port}"
        assert f"  export MLFLOW_TRACKING_URI={uri}\n" in printed
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        metrics2, paths2, plan2 = _read_back(uri, run_id, base / "download2")
        assert metrics2 == metrics and paths2 == paths and plan2 == plan
        cli.send_signal(signal.SIGTERM)  # stops both servers cleanly
        assert cli.wait(timeout=120) == 0
        assert not (pg_dir / "data" / "postmaster.pid").exists()
        with pytest.raises(tracking.TrackingUnreachableError):
            tracking.check_reachable(uri, timeout=2)
        print(f"\nservers started in {started:.1f} s, whole test {time.perf_counter() - t0:.1f} s")
    finally:
        if cli is not None and cli.poll() is None:
            cli.send_signal(signal.SIGTERM)
            cli.wait(timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_an_unreachable_tracking_server_fails_fast_naming_the_uri(digits_cnn_task, monkeypatch, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("WORKBENCH_TRACKING", "1")
    t0 = time.perf_counter()
    with (
        pytest.raises(tracking.TrackingUnreachableError, match=f"tracking server {uri} .*not reachable"),
        tracking.start_run("quantize"),
    ):
        pytest.fail("the run must not start")
    assert time.perf_counter() - t0 < 10  # MLflow's own client would retry for minutes
    # the CLI reports it as one line, before quantizing
    t0 = time.perf_counter()
    assert main(["quantize", "--model", "digits_cnn", "--plan", PLAN]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable")
    assert "--no-track" in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 30
    # tracking off: the same command runs
    assert main(["quantize", "--model", "digits_cnn", "--plan", PLAN, "--no-track"]) == 0
