"""The cache (hits, keys, the model untouched), saving and loading results, and MLflow tracking."""

from __future__ import annotations

import copy
from dataclasses import replace

import pandas as pd
import pytest
import torch

from tests.sensitivity.helpers import _cheap
from workbench.sensitivity import SensitivityResult, analyze_sensitivity


def test_cache_hit_identical_and_model_untouched(cnn_task, tmp_path):
    model = cnn_task.model
    before = copy.deepcopy(model.state_dict())
    model.train()  # the training flag must come back as it was
    try:
        threads = torch.get_num_threads()
        cfg = _cheap(metrics=("output_mse", "hessian", "fisher"), a_bits=())
        first = analyze_sensitivity(cnn_task, cfg, cache_dir=tmp_path)
        assert torch.get_num_threads() == threads
        # speed knobs are not part of the key
        second = analyze_sensitivity(
            cnn_task, replace(cfg, num_threads=None, progress=True), cache_dir=tmp_path
        )
        assert model.training
    finally:
        model.eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert first.info["source"] == "computed" and second.info["source"] == "cache"
    assert second.info["cache_path"] == first.info["cache_path"] and len(list(tmp_path.glob("*.json"))) == 1
    for attr in ("table", "layers", "channels", "cost_benefit"):
        pd.testing.assert_frame_equal(getattr(first, attr), getattr(second, attr))
    # another config (seed) is another key; the same config without the cache recomputes identically (seeded)
    other = analyze_sensitivity(
        cnn_task, _cheap(metrics=("output_mse",), a_bits=(), seed=1), cache_dir=tmp_path
    )
    assert other.info["source"] == "computed" and len(list(tmp_path.glob("*.json"))) == 2
    again = analyze_sensitivity(cnn_task, cfg, cache=False)
    pd.testing.assert_frame_equal(first.table, again.table)


def test_save_load_roundtrip(cnn_result, tmp_path):
    path = cnn_result.save(tmp_path / "sens.pkl")
    back = SensitivityResult.load(path)
    for attr in ("table", "layers", "channels", "cost_benefit"):
        pd.testing.assert_frame_equal(getattr(cnn_result, attr), getattr(back, attr))
    assert back.info["timings_s"] == cnn_result.info["timings_s"]
    with pytest.raises(FileExistsError):
        cnn_result.save(path)
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04K\x01.")  # a pickled int
    with pytest.raises(ValueError, match="not a sensitivity result"):
        SensitivityResult.load(tmp_path / "junk.pkl")


@pytest.mark.slow  # creating an MLflow store costs seconds
def test_track_logs_tables(cnn_task, tmp_path, monkeypatch):
    from workbench import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("WORKBENCH_TRACKING", raising=False)
    r = analyze_sensitivity(cnn_task, _cheap(metrics=("output_mse",), a_bits=()), cache=False, track=True)
    runs = tracking.runs_frame(stage="sensitivity")
    assert r.info["mlflow_run_id"] in set(runs["run_id"])
    art = tmp_path / "workbench"
    assert any(p.name == "sensitivity.csv" for p in art.rglob("*.csv"))
    assert any(p.name == "cost_benefit.csv" for p in art.rglob("*.csv"))
