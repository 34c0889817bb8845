"""``workbench ui`` / ``make ui``: the MLflow UI opens the store the workbench writes to (``MLFLOW_TRACKING_URI``,
else ``$WORKBENCH_HOME/mlruns/mlflow.db``); before, ``make ui`` hard-coded the checkout's ``mlruns/`` and showed an
empty store (creating a database outside the home) whenever either was set."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from workbench.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def execs(monkeypatch) -> list[list[str]]:
    """The commands ``os.execvpe`` is asked to run (recorded, not run)."""
    calls: list[list[str]] = []
    monkeypatch.setattr(os, "execvpe", lambda file, args, env: calls.append(list(args)))
    return calls


def _flag(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_ui_opens_the_store_under_workbench_home(tmp_path, monkeypatch, execs) -> None:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["ui", "--port", "5123"]) == 0
    (cmd,) = execs
    assert cmd[1:4] == ["-m", "mlflow", "ui"]
    assert _flag(cmd, "--backend-store-uri") == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert _flag(cmd, "--default-artifact-root") == str(tmp_path.resolve() / "mlruns")
    assert _flag(cmd, "--port") == "5123" and _flag(cmd, "--host") == "127.0.0.1"
    assert (tmp_path / "mlruns").is_dir()


def test_ui_opens_the_store_mlflow_tracking_uri_names(tmp_path, monkeypatch, execs) -> None:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/team/runs.db")
    assert main(["ui"]) == 0
    (cmd,) = execs
    assert _flag(cmd, "--backend-store-uri") == f"sqlite:///{tmp_path}/team/runs.db"
    assert _flag(cmd, "--default-artifact-root") == str((tmp_path / "team").resolve())
    assert not (tmp_path / "home").exists()  # nothing created outside the store named


def test_ui_on_a_tracking_server_uri_points_at_it_without_credentials(monkeypatch, execs, capsys) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:secret@tracking.example:5001")
    assert main(["ui"]) == 2
    err = capsys.readouterr().err
    assert "http://tracking.example:5001" in err and "secret" not in err and not execs


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_ui_and_tracking_server_refuse_a_bad_port_at_once(port, execs, capsys) -> None:
    for command in ("ui", "tracking-server"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--port", port])
        assert exit_.value.code == 2
        assert f"{port!r} is not a TCP port; give an integer in 1-65535" in capsys.readouterr().err
    assert not execs


def test_make_ui_runs_the_workbench_ui_command() -> None:
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^ui:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe is not None
    assert "-m workbench ui" in recipe.group(1) and "mlruns" not in recipe.group(1)
