"""``workbench deploy --engine onnx`` end to end on the digits CNN."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from workbench.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cli_deploy_engine_onnx_exports_runs_and_compares(tmp_path):
    out, onnx_file = tmp_path / "d.json", tmp_path / "cnn.onnx"
    argv = ["deploy", "--model", "digits_cnn", "--plan", "uniform:w8a8:per_channel;exclude=fc2", "--engine", "onnx",
            "--onnx-out", str(onnx_file), "--repeats", "1", "--warmup", "0", "--threads", "1", "--batch-size", "8",
            "--no-track", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    d = json.loads(out.read_text())
    assert d["engine"] == "onnx" and d["threads"] == 1 and d["batch_size"] == 8
    assert [r["variant"] for r in d["rows"]] == ["fp32", "torch_ao", "onnx_fp32", "onnx"]
    assert d["sim_vs_deployed_cosine"] >= 0.999 and d["deployed_latency_ms"] > 0
    assert [r["layer"] for r in d["layers"]] == ["conv1", "conv2", "fc1"]  # fc2 stays float, as planned
    assert [i.name for i in ort.InferenceSession(str(onnx_file)).get_inputs()] == ["input"]
