"""Measuring this CPU's profile, and the hardware / deploy CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workbench.cli import main
from workbench.hardware.measure import MeasureConfig, fit_cost_line, measure_profile
from workbench.hardware.profile import PrecisionProfile, load_profile


@pytest.fixture(autouse=True)
def _tmp_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


def test_fit_cost_line_recovers_rate_and_overhead():
    work = np.array([1e6, 4e6, 1.6e7, 6.4e7, 2.56e8])
    seconds = 50e-6 + work / 2e10
    rate, overhead, r2 = fit_cost_line(work, seconds)
    assert rate == pytest.approx(2e10, rel=1e-6) and overhead == pytest.approx(50e-6, rel=1e-6)
    assert r2 == pytest.approx(1.0)
    # a negative intercept is refitted through the origin (overheads are never negative)
    rate, overhead, _ = fit_cost_line(work, np.maximum(work / 1e10 - 1e-5, 1e-6))
    assert overhead == 0.0 and rate > 0


def test_quick_measurement_gives_a_valid_profile_of_real_kernels():
    prof = measure_profile(
        MeasureConfig(name="t", quick=True, repeats=2, warmup=1, bandwidth_mb=16, threads=1)
    )
    again = PrecisionProfile.from_dict(json.loads(prof.to_json()))
    assert again.to_dict() == prof.to_dict()
    assert set(prof.ops) == {"conv", "depthwise_conv", "linear", "elementwise"}
    for table in prof.ops.values():
        assert set(table) == {"fp32", "bf16", "int8"}
        assert all(c.macs_per_s > 0 and c.overhead_us >= 0 for c in table.values())
    assert prof.meta["threads"] == 1 and prof.conversion is not None and prof.memory.bandwidth_gbps > 0
    assert len(prof.meta["fits"]["conv.int8"]["points"]) == 6


def test_measure_config_validation():
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        MeasureConfig(repeats=0)
    with pytest.raises(ValueError, match="name='a b'"):
        MeasureConfig(name="a b")


def test_cli_hardware_measure_list_show_estimate(tmp_path, capsys):
    out = tmp_path / "mine.json"
    args = [
        "hardware",
        "--measure",
        "--quick",
        "--repeats",
        "2",
        "--name",
        "mine",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main([*args, "--json", str(tmp_path / "m.json")]) == 0
    assert load_profile(out).name == "mine" and load_profile(out).kind == "measured"
    assert main(args) == 2  # never overwrites a saved profile silently
    assert "exists" in capsys.readouterr().err
    assert main(["hardware", "--json", str(tmp_path / "l.json")]) == 0
    listed = {p["name"] for p in json.loads((tmp_path / "l.json").read_text())["profiles"]}
    assert {"cpu_measured", "nvidia_t4", "nvidia_a100_sxm", "bitfusion", "edge_tpu_int8"} <= listed
    assert main(["hardware", "--show", str(out)]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "kind": "reference", "device": "x", "sources": {}}))
    assert main(["hardware", "--show", str(bad)]) == 2
    assert "missing the required field 'memory'" in capsys.readouterr().err
    est = tmp_path / "e.json"
    argv = ["hardware", "--estimate", "--model", "digits_cnn", "--plan", "uniform:w8a8", "--profile", "nvidia_t4",
            "bitfusion", "--json", str(est)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(est.read_text())["estimates"]
    assert [r["profile"] for r in rows] == ["nvidia_t4", "bitfusion"] and rows[0]["speedup"] > 1
    # Bit Fusion has no float kernels: its "FP32" baseline falls back to 8-bit bricks, the same cost as w8a8
    assert rows[1]["speedup"] == pytest.approx(1.0)


def test_cli_deploy_writes_the_acceptance_fields(tmp_path):
    path = tmp_path / "d.json"
    argv = ["deploy", "--model", "digits_cnn", "--plan", "uniform:w8a8:per_channel", "--repeats", "3",
            "--threads", "1", "--json", str(path)]  # fmt: skip
    assert main(argv) == 0
    d = json.loads(path.read_text())
    for key in (
        "fp32_latency_ms",
        "deployed_latency_ms",
        "speedup",
        "fp32_accuracy",
        "accuracy",
        "batch_size",
        "threads",
    ):
        assert d[key] is not None, key
    assert d["batch_size"] == 32 and d["threads"] == 1 and d["accuracy"] >= d["fp32_accuracy"] - 0.01
    assert d["precision_counts"] == {"int8": 4}
    # fidelity of the simulation and of the deployment side by side, on every input of the test split
    assert d["fidelity_samples"] > d["batch_size"] and d["sim_vs_deployed_cosine"] >= 0.999
    assert d["sim_cosine_to_fp32"] >= 0.99 and d["cosine_to_fp32"] >= 0.99 and d["top1_agreement"] >= 0.95
    bad = ["deploy", "--model", "digits_cnn", "--plan", "uniform:w4a4", "--strict", "--repeats", "1"]
    assert main(bad) == 2
