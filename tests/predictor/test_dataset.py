"""The measured-plan dataset (workbench.predictor.dataset): frame, resume, cache path, config."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.predictor.helpers import SMALL, _frames_equal
from workbench import predictor as P
from workbench.predictor import PlanDataset, PlanDatasetConfig, build_plan_dataset, plan_id
from workbench.quant import quantizable_layers, quantize_model
from workbench.sensitivity import SensitivityResult
from workbench.tasks import Task


def test_dataset_frame_is_exact(task: Task, built: PlanDataset) -> None:
    names = quantizable_layers(task.model)
    df = built.frame
    assert len(df) == len(built.plans) == 36 and built.layer_names == names
    assert list(df.columns[:2]) == ["plan_id", "source"]
    assert [f"w:{n}" for n in names] + [f"a:{n}" for n in names] == list(df.columns[2 : 2 + 2 * len(names)])
    fp32 = task.evaluate(task.model, "val")
    assert built.info["fp32_accuracy"] == pytest.approx(fp32, abs=1e-12)
    np.testing.assert_allclose(df["acc_drop"], 100 * (fp32 - df["accuracy"]), atol=1e-9)
    assert (df["kl"] >= 0).all() and (df["logit_mse"] >= 0).all()
    assert df["acc_drop"].max() > 5  # some plans really hurt
    # one plan measured independently: accuracy from task.evaluate, size from QuantPlan.summary
    i = int(df["acc_drop"].idxmax())
    plan = built.plans[i]
    assert plan_id(plan) == df.loc[i, "plan_id"]
    assert df.loc[i, "accuracy"] == pytest.approx(
        task.evaluate(quantize_model(task.model, plan, task.calib_loader), "val")
    )
    summary = plan.summary(task.model, task.example_input())
    assert df.loc[i, "size_bytes"] == summary.size_bytes and df.loc[i, "bops"] == summary.bops
    assert df.loc[i, "avg_weight_bits"] == pytest.approx(summary.avg_weight_bits)
    w, a = built.bits()
    assert w.shape == (36, 4) and (a == 8).all()
    assert [plan[n].w_bits for n in names] == list(w[i])


def test_resume_after_interruption_measures_only_the_rest(
    task: Task, sens: SensitivityResult, built: PlanDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "resume.jsonl"
    real = P.measure_plan
    calls: list[str] = []

    def flaky(task_, plan, reference, *, costs):
        if len(calls) == 7:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(plan_id(plan))
        return real(task_, plan, reference, costs=costs)

    monkeypatch.setattr("workbench.predictor.dataset.measure_plan", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_plan_dataset(task, sens, SMALL, path=path, progress=False)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 7 and json.loads(lines[0])["type"] == "header"
    first = list(calls)

    calls.clear()
    monkeypatch.setattr(
        "workbench.predictor.dataset.measure_plan",
        lambda *a, **k: calls.append(plan_id(a[1])) or real(*a, **k),
    )
    resumed = build_plan_dataset(task, sens, SMALL, path=path, progress=False)
    assert len(calls) == 36 - 7 and not set(calls) & set(first)
    assert resumed.info["n_cached"] == 7 and resumed.info["n_measured"] == 29
    _frames_equal(resumed.frame, built.frame)

    # a line cut short by a crash is skipped, and nothing is measured again
    with path.open("a") as f:
        f.write('{"type": "plan", "plan_id": "trunc')
    calls.clear()
    again = build_plan_dataset(task, sens, SMALL, path=path, progress=False)
    assert calls == [] and again.info["n_cached"] == 36
    _frames_equal(again.frame, built.frame)
    loaded = PlanDataset.load(path)
    assert len(loaded) == 36 and set(loaded.frame["plan_id"]) == set(built.frame["plan_id"])

    # measurements of another model are never reused from an explicit path
    other = copy.deepcopy(task)
    with torch.no_grad():
        other.model.fc2.bias.add_(0.01)
    with pytest.raises(ValueError, match="another model, data or quantization code"):
        build_plan_dataset(other, sens, SMALL, path=path, progress=False)


def test_default_cache_path_key_and_tracking(
    task: Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench import tracking

    logged: dict[str, object] = {}

    class Recorder:
        def log_metrics(self, metrics, step=None):
            logged["metrics"] = metrics

        def log_dataframe(self, df, name):
            logged[name] = df

    @contextlib.contextmanager
    def fake_start_run(stage, **kwargs):
        logged["stage"] = stage
        yield Recorder()

    monkeypatch.setattr(tracking, "start_run", fake_start_run)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    cfg = PlanDatasetConfig(n_random=3, n_stratified=0)
    ds = build_plan_dataset(task, None, cfg, progress=False, track=True)
    assert logged["stage"] == "predictor_dataset" and logged["metrics"]["n_measured"] == 3
    assert len(logged["plan_dataset"]) == 3
    assert Path(ds.info["path"]).parent == tmp_path.resolve() / "data" / "predictor"
    assert ds.info["key"] == P.dataset_key(task, cfg) and ds.info["key"].startswith("digits_cnn-")
    assert P.dataset_key(task, PlanDatasetConfig(split="test")) != ds.info["key"]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="w_bits"):
        PlanDatasetConfig(w_bits=(7,))
    with pytest.raises(ValueError, match="granularity"):
        PlanDatasetConfig(granularity="per_group")
    with pytest.raises(ValueError, match="n_random"):
        PlanDatasetConfig(n_random=-1)
    with pytest.raises(ValueError, match="stratify_metric"):
        PlanDatasetConfig(stratify_metric="nope")
