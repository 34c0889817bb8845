"""evaluate_runtime(track=...) logs one MLflow run of stage "runtime" with the evaluation's tables and metrics."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from workbench.runtime import RuntimeConfig, evaluate_runtime


def test_evaluate_runtime_logs_its_run(digits_cnn_task, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from workbench import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("WORKBENCH_TRACKING", raising=False)
    kw = {
        "budgets": (0.6,),
        "policies": ("rule",),
        "shifts": ("clean",),
        "config": RuntimeConfig(probe_samples=32),
    }
    ev = evaluate_runtime(digits_cnn_task, **kw, track=None)
    runs = tracking.runs_frame(stage="runtime")
    assert len(runs) == 1 and runs["tags.mlflow.runName"].iloc[0] == "runtime-digits_cnn"
    run = MlflowClient(tracking.tracking_uri()).get_run(runs["run_id"].iloc[0])
    params = run.data.params
    assert (
        params["model"] == "digits_cnn" and params["budgets"] == "[0.6]" and params["policies"] == '["rule"]'
    )
    assert (
        params["probe_samples"] == "32"
        and params["split"] == "test"
        and params["w_bits"] == "[2, 3, 4, 6, 8]"
    )
    assert run.data.metrics == pytest.approx(ev.to_metrics())
    assert run.data.metrics["clean.rule.0.6.accuracy"] >= 0.9
    art = Path(unquote(urlparse(run.info.artifact_uri).path))
    assert sorted(p.name for p in (art / "tables").iterdir()) == [
        "ladder.csv", "probe_table.csv", "runtime_table.csv", "static_maps.csv",
    ]  # fmt: skip
    assert json.loads((art / "runtime_info.json").read_text())["ladder"] == ev.info["ladder"]
