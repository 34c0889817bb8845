"""tracking.log_stage against a throwaway sqlite store: params, metrics, tables, plans, JSON and figures of one
run, read back from the store."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest

from workbench import tracking


@dataclass(frozen=True)
class _Config:
    batch_size: int = 32
    engine: str = "x86"


class _Plan:
    def to_dict(self) -> dict:
        return {"conv1": {"w_bits": 4, "a_bits": 8}}


class _WithMetrics:
    """A result that names its metrics and tables."""

    def to_metrics(self) -> dict:
        return {"speedup": 2.5, "accuracy": 0.9}

    def to_dict(self) -> dict:
        return {"speedup": 2.5, "ignored": 7.0}

    def tables(self) -> dict:
        return {"layers": pd.DataFrame({"layer": ["conv1", "fc"], "bits": [4, 8]})}


class _WithDict:
    """A result with only ``to_dict``: its numeric items become metrics."""

    def to_dict(self) -> dict:
        return {"accuracy": 0.75, "bops": 1200, "name": "w4", "ok": True, "missing": None, "nan": math.nan}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("stages")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'db' / 'mlflow.db'}")
        mp.setenv("WORKBENCH_HOME", str(root / "home"))
        mp.delenv("WORKBENCH_TRACKING", raising=False)
        tracking.ensure_store()
        yield root


def _client():
    from mlflow import MlflowClient

    return MlflowClient(tracking.tracking_uri())


def _artifacts(run_id: str) -> Path:
    return Path(unquote(urlparse(_client().get_run(run_id).info.artifact_uri).path))


def test_stage_metrics_and_tables_read_the_result() -> None:
    assert tracking.stage_metrics(_WithMetrics()) == {"speedup": 2.5, "accuracy": 0.9}
    metrics = tracking.stage_metrics(_WithDict())
    assert set(metrics) == {"accuracy", "bops", "nan"} and metrics["bops"] == 1200  # no str, bool or None
    assert tracking.stage_metrics({"a": 1, "b": "x", "c": 2.5}) == {"a": 1, "c": 2.5}
    assert tracking.stage_metrics(None) == {} and tracking.stage_tables(None) == {}
    assert list(tracking.stage_tables(_WithMetrics())) == ["layers"] and tracking.stage_tables({"a": 1}) == {}
    with pytest.raises(TypeError, match="to_metrics"):
        tracking.stage_metrics(3.0)


def test_log_stage_logs_params_metrics_and_artifacts(store: Path) -> None:
    import plotly.graph_objects as go

    extra = pd.DataFrame({"variant": ["fp32", "bf16"], "median_ms": [2.0, 1.0]})
    run_id = tracking.log_stage(
        "deploy",
        _WithMetrics(),
        params={"model": "digits_cnn", **_Config().__dict__},
        plan=_Plan(),
        plans={"int4": _Plan()},
        metrics={"accuracy": 0.95, "skip": None},
        tables={"variants": extra, "absent": None},
        figures={"curve": go.Figure(go.Scatter(y=[1, 2])), "absent": None},
        json={"info": {"ladder": ["a:2", "a:8"]}},
        run_name="deploy-digits_cnn",
        tags={"k": "v"},
    )
    run = _client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "deploy-digits_cnn"
    assert run.data.tags["workbench.stage"] == "deploy" and run.data.tags["k"] == "v"
    assert run.data.params == {"model": "digits_cnn", "batch_size": "32", "engine": "x86"}
    assert run.data.metrics == {"speedup": 2.5, "accuracy": 0.95}  # metrics= overrides the result's
    art = _artifacts(run_id)
    assert art.is_relative_to(store)
    assert json.loads((art / "plans" / "plan.json").read_text()) == _Plan().to_dict()
    assert json.loads((art / "plans" / "int4.json").read_text()) == _Plan().to_dict()
    assert (art / "tables" / "layers.csv").read_text().splitlines() == ["layer,bits", "conv1,4", "fc,8"]
    assert (art / "tables" / "variants.csv").read_text().splitlines()[1] == "fp32,2.0"
    assert json.loads((art / "info.json").read_text()) == {"ladder": ["a:2", "a:8"]}
    assert (art / "figures" / "curve.html").stat().st_size > 1_000_000
    assert not (art / "tables" / "absent.csv").exists() and not (art / "figures" / "absent.html").exists()
    assert run_id in set(tracking.runs_frame(stage="deploy")["run_id"])


def test_log_stage_from_a_dict_result_and_nested_in_an_active_run(store: Path) -> None:
    with tracking.start_run("notebook", experiment="nest") as parent:
        child = tracking.log_stage("quantize", _WithDict(), experiment="nest")
    run = _client().get_run(child)
    assert run.info.run_name == "quantize"  # the stage names the run by default
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.metrics["accuracy"] == 0.75 and run.data.metrics["bops"] == 1200
    assert math.isnan(run.data.metrics["nan"]) and "ok" not in run.data.metrics


def test_log_stage_is_off_without_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "off" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("WORKBENCH_TRACKING", "0")
    assert tracking.log_stage("profile", _WithMetrics(), params={"a": 1}) is None
    monkeypatch.setenv("WORKBENCH_TRACKING", "1")
    assert tracking.log_stage("profile", _WithMetrics(), enabled=False) is None
    assert not db.parent.exists()
