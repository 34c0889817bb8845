"""Tests for workbench.tracking against a throwaway sqlite store under tmp_path."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest
import torch
from torch import nn

from workbench import profiling, tracking


@dataclass(frozen=True)
class _Inner:
    bits: int = 4
    mode: str = "sym"


@dataclass(frozen=True)
class _Config:
    lr: float = 0.01
    inner: _Inner = field(default_factory=_Inner)
    layers: tuple[str, ...] = ("conv1", "fc")


class _Plan:
    def to_dict(self) -> dict:
        return {"conv1": {"w_bits": 4, "a_bits": 8}, "fc": {"w_bits": 8, "a_bits": 8}}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """One sqlite store for the module (creating the schema costs seconds)."""
    root = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'db' / 'mlflow.db'}")
        mp.setenv("WORKBENCH_HOME", str(root / "home"))
        mp.delenv("WORKBENCH_TRACKING", raising=False)
        tracking.ensure_store()
        yield root


def _artifact_dir(run: tracking.Run) -> Path:
    return Path(unquote(urlparse(run.artifact_uri).path))


def test_uri_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert tracking.artifact_root() == tmp_path.resolve() / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////x/y/z.db")
    assert tracking.tracking_uri() == "sqlite:////x/y/z.db"
    assert tracking.artifact_root() == Path("/x/y")


def test_flatten_params() -> None:
    flat = tracking.flatten_params({"cfg": _Config(), "seed": 3, "none": None})
    assert flat == {
        "cfg.lr": "0.01",
        "cfg.inner.bits": "4",
        "cfg.inner.mode": "sym",
        "cfg.layers": '["conv1", "fc"]',
        "seed": "3",
        "none": "null",
    }
    assert len(tracking.flatten_params({"long": "x" * 10_000})["long"]) == 6000


def test_run_logs_params_metrics_and_artifacts(store: Path) -> None:
    df = pd.DataFrame({"macs": [2304, 2560], "bits": [4, 8]}, index=pd.Index(["conv1", "fc"], name="layer"))
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(y=[3, 1, 2]))
    with tracking.start_run(
        "profile", run_name="unit", params={"task": {"name": "digits"}}, tags={"k": "v"}
    ) as run:
        assert isinstance(run, tracking.Run)
        run.log_config(_Config())
        for step in range(3):
            run.log_metrics({"loss": 1.0 / (step + 1), "skip": None}, step=step)
        run.log_metrics({"acc": torch.tensor(0.75)})
        run.log_dataframe(df, "profile")
        run.log_dataframe(pd.DataFrame({"layer": ["a", "b"], "x": [1, 2]}, index=["a", "b"]), "by_layer")
        run.log_plan(_Plan())
        run.log_figure(fig, "curve")
        run.log_json({"a": [1, 2]}, "extra/info")
        assert tracking.active_run().run_id == run.run_id

    frame = tracking.runs_frame(stage="profile")
    row = frame.set_index("run_id").loc[run.run_id]
    assert row["status"] == "FINISHED"
    assert row["tags.workbench.stage"] == "profile"
    assert row["tags.mlflow.runName"] == "unit"
    assert row["tags.k"] == "v"
    assert row["params.task.name"] == "digits"
    assert row["params.inner.bits"] == "4"
    assert row["params.layers"] == '["conv1", "fc"]'
    assert row["metrics.loss"] == pytest.approx(1.0 / 3)
    assert row["metrics.acc"] == pytest.approx(0.75)
    assert "metrics.skip" not in frame.columns
    assert run.run_id in set(tracking.runs_frame()["run_id"])
    assert tracking.runs_frame(stage="no-such-stage").empty
    assert tracking.runs_frame("no-such-experiment").empty

    from mlflow import MlflowClient

    history = MlflowClient(tracking.tracking_uri()).get_metric_history(run.run_id, "loss")
    assert [(m.step, round(m.value, 6)) for m in history] == [(0, 1.0), (1, 0.5), (2, round(1 / 3, 6))]

    art = _artifact_dir(run)
    assert art.is_relative_to(store)  # artifacts follow the tmp store, not the repo's mlruns/
    back = pd.read_csv(art / "tables" / "profile.csv", index_col="layer")
    pd.testing.assert_frame_equal(back, df)
    assert (art / "tables" / "by_layer.csv").read_text().splitlines() == ["layer,x", "a,1", "b,2"]
    assert json.loads((art / "plans" / "plan.json").read_text()) == _Plan().to_dict()
    assert json.loads((art / "config" / "config.json").read_text())["inner"] == {"bits": 4, "mode": "sym"}
    assert json.loads((art / "extra" / "info.json").read_text()) == {"a": [1, 2]}
    html = (art / "figures" / "curve.html").read_text()
    assert len(html) > 1_000_000 and "plotly.js v" in html  # plotly.js inline: renders offline
    assert '<script src="https://cdn.plot.ly' not in html


def test_failed_and_nested_runs(store: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        tracking.start_run("search", experiment="other") as failed,
    ):
        raise RuntimeError("boom")
    with tracking.start_run("search", experiment="other") as parent:
        with tracking.start_run("trial", experiment="other", nested=True) as child:
            child.log_metrics({"score": 2.0})
        assert tracking.active_run().run_id == parent.run_id
    frame = tracking.runs_frame("other").set_index("run_id")
    assert frame.loc[failed.run_id, "status"] == "FAILED"
    assert frame.loc[child.run_id, "tags.mlflow.parentRunId"] == parent.run_id
    assert isinstance(tracking.active_run(), tracking.NullRun)


def test_model_roundtrip(store: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)).eval()
    x = torch.randn(5, 1, 8, 8)
    with tracking.start_run("train") as run:
        uri = run.log_model(model, example_input=x[:2])
    loaded = tracking.load_model(uri)
    assert isinstance(loaded, nn.Sequential)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_figure_format_errors(store: Path) -> None:
    import plotly.graph_objects as go

    with tracking.start_run("ui") as run:
        with pytest.raises(ValueError, match="html"):
            run.log_figure(go.Figure(), "f", fmt="gif")
        with pytest.raises(TypeError, match="plotly"):
            run.log_figure(object(), "f")
        with pytest.raises(TypeError, match="to_dict"):
            run.log_plan([1, 2])
        if importlib.util.find_spec("kaleido") is None:
            with pytest.raises(RuntimeError, match="kaleido"):
                run.log_figure(go.Figure(), "f", fmt="png")


def test_disabled_mode_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "off" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("WORKBENCH_TRACKING", "0")
    assert not tracking.tracking_enabled()
    with tracking.start_run("profile", params={"a": 1}) as run:
        assert isinstance(run, tracking.NullRun) and run.run_id is None
        run.log_config(_Config())
        run.log_metrics({"x": 1.0}, step=1)
        run.log_dataframe(pd.DataFrame({"a": [1]}), "t")
        run.log_plan(_Plan())
        run.log_figure(object(), "f")
        run.log_json({}, "j")
        assert run.log_model(nn.Linear(2, 2)) is None
        run.log_artifact(tmp_path / "missing.txt")
    assert tracking.runs_frame().empty
    assert isinstance(tracking.active_run(), tracking.NullRun)
    assert not db.parent.exists()
    monkeypatch.setenv("WORKBENCH_TRACKING", "1")
    with tracking.start_run("profile", enabled=False) as run:
        assert isinstance(run, tracking.NullRun)
    assert not db.parent.exists()


def test_import_is_light() -> None:
    """tracking imports mlflow lazily; profiling never imports mlflow or plotly (checked statically: it needs torch)."""
    code = "import sys, workbench.tracking; bad = [m for m in ('mlflow', 'plotly', 'torch') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    tree = ast.parse(Path(profiling.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"mlflow", "plotly"}


# ------------------------------------------------------------------------- untrusted model artifacts


class _TinyNet(nn.Module):
    """A model class of its own (importable): loads only when the caller trusts it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class _Marker:
    """Unpickling this runs ``touch <path>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch '{self.path}'",))


def _stored_model_file(uri: str) -> Path:
    """The model.pth that the store keeps for ``uri`` (what another user of a shared store could replace)."""
    import mlflow

    model_id = uri.rsplit("/", 1)[-1]
    location = Path(unquote(urlparse(mlflow.get_logged_model(model_id).artifact_location).path))
    path = location / "data" / "model.pth"
    assert path.is_file(), path
    return path


def test_load_model_never_runs_code_from_the_store(store: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with tracking.start_run("train") as run:
        uri = run.log_model(nn.Sequential(nn.Linear(4, 2)))
    stored = _stored_model_file(uri)
    torch.save({"model": _Marker(marker)}, stored)  # the artifact replaced by a malicious pickle
    with pytest.raises(ValueError, match="refused") as err:
        tracking.load_model(uri)
    assert uri in str(err.value) and "posix.system" in str(err.value)
    assert not marker.exists(), "load_model ran code from the model file"


def test_load_model_needs_own_classes_to_be_trusted(store: Path) -> None:
    torch.manual_seed(0)
    model = _TinyNet().eval()
    with tracking.start_run("train") as run:
        uri = run.log_model(model)
    with pytest.raises(ValueError, match="allowed_classes") as err:
        tracking.load_model(uri)
    assert "_TinyNet" in str(err.value)
    loaded = tracking.load_model(uri, allowed_classes=[_TinyNet])
    x = torch.randn(3, 4)
    assert isinstance(loaded, _TinyNet) and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="torch.nn.Module subclasses"):
        tracking.load_model(uri, allowed_classes=[dict])


# ------------------------------------------------------------------------- unreachable tracking server


def _closed_port() -> int:
    from workbench.servers import free_port

    return free_port()  # free a moment ago: nothing listens there


def test_check_reachable_fails_fast_naming_the_uri() -> None:
    import time

    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.perf_counter()
    with pytest.raises(tracking.TrackingUnreachableError) as err:
        tracking.check_reachable(uri)
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable" in msg
    assert "--no-track" in msg and f"{tracking.DISABLE_ENV}=0" in msg
    assert isinstance(err.value, ValueError)  # the CLI reports it as one line
    # credentials in the URI are not repeated in the message
    with pytest.raises(tracking.TrackingUnreachableError) as err:
        tracking.check_reachable(uri.replace("http://", "http://alice:s3cret@"))
    assert "s3cret" not in str(err.value) and uri in str(err.value)
    tracking.check_reachable("sqlite:////nonexistent/dir/mlflow.db")  # local stores are not probed


def test_check_reachable_gives_up_on_a_server_that_never_answers() -> None:
    """A port that accepts connections but never answers (a hung server, a black-holing proxy)."""
    import socket
    import time

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        t0 = time.perf_counter()
        with pytest.raises(tracking.TrackingUnreachableError, match=r"no answer within 1 s"):
            tracking.check_reachable(uri, timeout=1)
        assert time.perf_counter() - t0 < 5


def test_check_reachable_refuses_a_server_that_is_not_mlflow() -> None:
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{httpd.server_address[1]}"
        with pytest.raises(tracking.TrackingUnreachableError, match="HTTP 404") as err:
            tracking.check_reachable(uri)
        assert uri in str(err.value)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_offline_mode_ignores_an_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv(tracking.DISABLE_ENV, "0")
    with tracking.start_run("sensitivity", params={"a": 1}) as run:
        assert isinstance(run, tracking.NullRun)
        run.log_metrics({"x": 1.0})
    monkeypatch.setenv(tracking.DISABLE_ENV, "1")
    with pytest.raises(tracking.TrackingUnreachableError), tracking.start_run("sensitivity"):
        pytest.fail("the run must not start")
    with tracking.start_run("sensitivity", enabled=False) as run:
        assert isinstance(run, tracking.NullRun)


def test_cli_stage_fails_before_any_work_when_the_server_is_down(tmp_path: Path) -> None:
    """``python -m workbench sensitivity`` with a dead MLFLOW_TRACKING_URI: one line naming the URI, exit 2, in
    seconds, and nothing built (a fresh WORKBENCH_HOME stays empty: no data set, no training, no analysis)."""
    import os
    import time

    uri = f"http://127.0.0.1:{_closed_port()}"
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "WORKBENCH_HOME": str(home), "WORKBENCH_TRACKING": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "sensitivity", "--model", "digits_cnn"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(
        f"error: the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not reachable"
    )
    assert "--no-track" in proc.stderr and "Traceback" not in proc.stderr
    assert list(home.iterdir()) == [], "work started before the tracking server was checked"
    assert elapsed < 60, elapsed  # the interpreter and imports; MLflow's own retries would take minutes


def test_cli_stage_runs_offline_with_no_track(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from workbench.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv(tracking.DISABLE_ENV, "1")
    args = ["sensitivity", "--model", "digits_cnn", "--w-bits", "4", "--a-bits", "--metrics", "output_mse"]
    assert main([*args, "--no-cache"]) == 2  # tracking on: refused up front
    assert "not reachable" in capsys.readouterr().err
    assert main([*args, "--no-cache", "--no-track"]) == 0
