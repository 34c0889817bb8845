"""The CLI end to end on the digits task (models cached under data/)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from workbench.cli import main
from workbench.quant import QuantPlan, QuantSpec


@pytest.fixture(autouse=True)
def _tmp_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


def _json(path):
    return json.loads(path.read_text())


def test_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "--help"], capture_output=True, text=True, check=True
    )
    for cmd in ("train", "profile", "quantize", "pipeline"):
        assert cmd in out.stdout


def test_train_and_profile(tmp_path):
    assert main(["train", "--model", "digits_cnn", "--json", str(tmp_path / "t.json")]) == 0
    t = _json(tmp_path / "t.json")
    assert t["test_accuracy"] >= 0.97
    assert (
        main(["train", "--model", "digits_cnn", "--json", str(tmp_path / "t.json")]) == 2
    )  # no silent overwrite
    assert main(["train", "--model", "digits_cnn", "--overwrite", "--json", str(tmp_path / "t.json")]) == 0
    assert (
        main(
            [
                "profile",
                "--model",
                "digits_cnn",
                "--batches",
                "1",
                "--repeats",
                "2",
                "--json",
                str(tmp_path / "p.json"),
            ]
        )
        == 0
    )
    p = _json(tmp_path / "p.json")
    assert [r["layer"] for r in p["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert p["summary"]["params"] == sum(r["params"] for r in p["layers"])
    from workbench import tracking

    assert len(tracking.runs_frame(stage="train")) == 2 and len(tracking.runs_frame(stage="profile")) == 1


def test_quantize_shorthand_and_plan_file(tmp_path):
    out = tmp_path / "q.json"
    assert (
        main(["quantize", "--model", "digits_cnn", "--plan", "uniform:w8a8:per_channel", "--json", str(out)])
        == 0
    )
    q = _json(out)
    for key in ("fp32_accuracy", "accuracy", "fp32_size_bytes", "size_bytes", "avg_weight_bits"):
        assert key in q
    assert q["avg_weight_bits"] == 8.0
    assert q["fp32_accuracy"] - q["accuracy"] <= 0.01
    assert q["fp32_size_bytes"] / q["size_bytes"] > 3.5

    plan = QuantPlan(
        {
            "conv1": QuantSpec(w_bits=8),
            "conv2": QuantSpec(w_bits=4),
            "fc1": QuantSpec(w_bits=2),
            "fc2": QuantSpec(w_bits=8),
        }
    )
    plan.save(tmp_path / "plan.json")
    packed = tmp_path / "model.wbq"
    args = ["quantize", "--model", "digits_cnn", "--plan", str(tmp_path / "plan.json"), "--out", str(packed)]
    assert main([*args, "--overwrite", "--json", str(out)]) == 0
    q = _json(out)
    assert packed.stat().st_size == q["packed_bytes"]
    assert 2.0 < q["avg_weight_bits"] < 4.0  # fc1 dominates the parameters
    assert main(args) == 2  # refuses to overwrite the packed file
    assert main([*args, "--overwrite"]) == 0


def test_bad_plan_is_reported(tmp_path, capsys):
    assert main(["quantize", "--model", "digits_cnn", "--plan", "uniform:w7a8"]) == 2
    assert "valid bits" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"nope": {"w_bits": 4}}))
    assert main(["quantize", "--model", "digits_cnn", "--plan", str(tmp_path / "bad.json")]) == 2
    assert "valid layers" in capsys.readouterr().err


def test_pipeline_json(tmp_path):
    assert main(["pipeline", "--model", "digits_cnn", "--json", str(tmp_path / "pipe.json")]) == 0
    rows = {r["name"]: r for r in _json(tmp_path / "pipe.json")["table"]}
    assert set(rows) == {"FP32", "INT8 per-channel", "INT4 per-channel", "INT3 per-channel",
                         "mixed <= 4 bits (search)", "mixed <= 3 bits (search)"}  # fmt: skip
    for bits in (3, 4):  # the default search's plan within the budget, beside uniform at the same bits
        assert rows[f"mixed <= {bits} bits (search)"]["avg_weight_bits"] <= bits + 1e-9
    assert (
        rows["FP32"]["size_bytes"]
        > rows["INT8 per-channel"]["size_bytes"]
        > rows["INT4 per-channel"]["size_bytes"]
    )
    assert rows["INT8 per-channel"]["accuracy_drop_pp"] <= 1.0


def test_example_plan_in_configs(tmp_path):
    from pathlib import Path

    plan_path = Path(__file__).resolve().parents[2] / "configs" / "plans" / "digits_resnet_mixed.json"
    out = tmp_path / "q.json"
    assert main(["quantize", "--model", "digits_resnet", "--plan", str(plan_path), "--json", str(out)]) == 0
    q = _json(out)
    assert 4.0 < q["avg_weight_bits"] < 5.0
    assert q["fp32_accuracy"] - q["accuracy"] <= 0.02
    assert q["plan"]["fc"]["channel_bits"] == [8, 8, 4, 4, 4, 4, 4, 4, 6, 6]


@pytest.mark.slow
def test_sensitivity_and_predictor_commands(tmp_path):
    out = tmp_path / "s.json"
    args = ["sensitivity", "--model", "digits_cnn", "--w-bits", "2", "4", "8", "--a-bits", "8"]
    assert main([*args, "--no-cache", "--json", str(out)]) == 0
    s = _json(out)
    assert s["layers"] == ["conv1", "conv2", "fc1", "fc2"]
    assert {"output_mse", "omega", "acc_drop", "fisher"} <= set(s["metrics"])
    assert [r["layer"] for r in s["ranking"]][0] in s["layers"] and len(s["ranking"]) == 4
    assert all(-1 <= r["spearman"] <= 1 for r in s["rank_agreement"])
    assert main(["sensitivity", "--model", "digits_cnn", "--metrics", "nope"]) == 2

    out = tmp_path / "p.json"
    save = tmp_path / "pred.joblib"
    args = ["predictor", "--model", "digits_cnn", "--plans", "40", "--models", "ridge", "gbt", "--folds", "3"]
    assert main([*args, "--save", str(save), "--json", str(out)]) == 0
    p = _json(out)
    for key in ("spearman", "kendall", "mae", "n_train", "n_test", "plans_per_second"):
        assert key in p
    assert p["n_plans"] == 40 and p["n_train"] + p["n_test"] == 40
    assert p["spearman"] > 0.5 and p["plans_per_second"] > 1000
    assert save.is_file()
    assert (
        main(["predictor", "--model", "digits_cnn", "--plans", "4", "--json", str(tmp_path / "x.json")]) == 2
    )


def test_sensitivity_layer_filters_and_per_channel_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    out = tmp_path / "s.json"
    args = ["sensitivity", "--model", "digits_cnn", "--w-bits", "4", "--a-bits", "--metrics", "output_mse",
            "--no-cache", "--no-track", "--include", "conv*", "fc2", "--exclude", "conv1"]  # fmt: skip
    assert main([*args, "--json", str(out)]) == 0
    s = _json(out)
    assert s["layers"] == ["conv2", "fc2"] and s["rows"] == 2  # one probe per layer: per_channel only
    assert main([*args[:-2], "--exclude", "nope*"]) == 2  # a pattern matching no layer is refused
