"""Bring your own model: examples/byom_task.py (the README's task file) through every CLI stage.

The example loads the trained DigitsBert (token-id inputs, attention masks, output objects, a fidelity metric);
its cached weights are copied into a temporary WORKBENCH_HOME so that every cache and store of these runs is
temporary (the first run on a machine without the cache trains it once under data/models).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.hardware.deploy import DeployInputError, choose_kernels, static_input_problem
from workbench.tasks import load_task_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "byom_task.py"
TASK = f"{EXAMPLE}:make_task"
WEIGHT_ONLY = "uniform:w4:per_channel;include=*;exclude=pooler*"  # embedding tables included (asked)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    from workbench.tasks.digits_bert import get_digits_bert

    _, info = get_digits_bert()  # the project's cache (trained once if absent)
    root = tmp_path_factory.mktemp("byom_home")
    (root / "data" / "models").mkdir(parents=True)
    shutil.copy(info["path"], root / "data" / "models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_HOME", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        yield root


def _run(home: Path, name: str, *argv: str, track: bool = False) -> dict:
    out = home / f"{name}.json"
    args = [argv[0], "--task", TASK, *argv[1:], "--json", str(out), "--overwrite"]
    assert main(args if track else [*args, "--no-track"]) == 0, args
    return json.loads(out.read_text())


def test_profile_and_sensitivity(home):
    p = _run(home, "profile", "profile", "--batches", "1", "--repeats", "1")
    layers = [r["layer"] for r in p["layers"]]
    assert p["model"] == "digits_bert" and len(layers) == 16
    assert {"embeddings.word_embeddings", "encoder.layer.1.intermediate.dense", "pooler.dense"} <= set(layers)

    s = _run(home, "sens", "sensitivity", "--metrics", "output_mse", "--w-bits", "4", "8", "--a-bits")
    assert s["layers"] == layers and s["metrics"] == ["output_mse"] and len(s["ranking"]) == 16


def test_predictor_on_weight_only_plans(home):
    argv = ["predictor", "--plans", "20", "--models", "ridge", "--folds", "2", "--w-bits", "3,4,5,6,8",
            "--a-bits", "32", "--sens-metrics", "output_mse", "--sens-w-bits", "4", "8", "--sens-a-bits"]  # fmt: skip
    r = _run(home, "predictor", *argv)
    assert r["n_plans"] == 20 and r["n_train"] + r["n_test"] == 20 and r["best_model"] == "ridge"
    assert -1.0 <= r["spearman"] <= 1.0


def test_search_weight_only_with_patterns_and_bits_budget(home):
    best = home / "best.json"
    argv = ["search", "--w-bits", "3,4,5,6,8", "--a-bits", "32", "--budget", "6", "--max-avg-weight-bits", "5",
            "--include", "encoder.*,embeddings.*,pooler.*", "--exclude", "classifier", "--storage", ":memory:",
            "--final-split", "none", "--quiet", "--save-best", str(best)]  # fmt: skip
    r = _run(home, "search", *argv)
    assert r["real_evaluations"] == 6 and r["front"]
    # the budget averages over the searched layers (the float classifier does not count)
    assert all(f["space_avg_bits"] <= 5.0 + 1e-9 for f in r["front"])
    plan = r["best"]["plan"]
    assert r["best"]["space_avg_bits"] <= 5.0 + 1e-9 and json.loads(best.read_text()) == plan
    assert "classifier" not in plan and "pooler.dense" in plan  # --exclude wins; --include picked the rest
    assert {s["a_bits"] for s in plan.values()} == {32}  # weight-only: activations left float
    assert {s["w_bits"] for s in plan.values()} <= {3, 4, 5, 6, 8}
    assert 0.9 < r["best"]["accuracy"] <= 1.0  # cosine to the FP32 logits


def test_quantize_and_qat_weight_only_pattern_plan(home):
    packed = home / "model.wbq"
    q = _run(home, "quantize", "quantize", "--plan", WEIGHT_ONLY, "--out", str(packed))
    assert q["avg_act_bits"] == 32.0 and 4.0 < q["avg_weight_bits"] < 6.0  # the float pooler counts 32
    assert 0.9 < q["covered_fraction"] < 1.0 and "pooler.dense" not in q["plan"]
    assert q["coverage"] == (  # in words, naming what stays float and why
        "covers 15 of 16 weight layers, 96.2 % of weight parameters; float: pooler.dense (3.8 %, not in plan)"
    )
    assert q["weight_layers"] == 16 and q["weight_covered_fraction"] == pytest.approx(0.962, abs=5e-4)
    assert packed.stat().st_size == q["packed_bytes"] < q["fp32_size_bytes"] / 4
    assert q["fp32_accuracy"] == pytest.approx(1.0) and 0.95 < q["accuracy"] < 1.0

    t = _run(home, "qat", "qat", "--plan", WEIGHT_ONLY, "--epochs", "1", "--max-steps", "3", "--quiet")
    assert t["steps"] == 3 and t["avg_act_bits"] == 32.0 and t["metric_name"] == "cosine"
    assert 0.95 < t["accuracy_after"] <= 1.0


def test_deploy_token_model_runs_dynamic_int8_and_bf16(home, capsys):
    argv = ["deploy", "--plan", "uniform:w8:per_channel", "--repeats", "2", "--warmup", "1", "--threads", "1",
            "--batch-size", "16", "--split", "val"]  # fmt: skip
    d = _run(home, "deploy", *argv, track=True)  # MLflow logs the per-variant metrics and table
    assert d["kernels"] == "dynamic" and "'input_ids' (int64)" in d["kernels_reason"]
    rows = {r["variant"]: r for r in d["rows"]}
    assert list(rows) == ["fp32", "dynamic_int8", "bf16"]
    assert all(r["cosine_to_fp32"] > 0.99 and r["top1_agreement"] > 0.95 for r in rows.values())
    assert d["threads"] == 1 and d["repeats"] == 2 and d["batch_size"] == 16 and d["split"] == "val"
    assert d["speedup"] == pytest.approx(rows["dynamic_int8"]["speedup_vs_fp32"])
    from workbench import tracking

    assert len(tracking.runs_frame(stage="deploy")) == 1

    b = _run(home, "deploy_bf16", *argv, "--kernels", "bf16")
    assert [r["variant"] for r in b["rows"]] == ["fp32", "bf16"] and b["cosine_to_fp32"] > 0.99

    capsys.readouterr()
    assert (
        main(["deploy", "--task", TASK, "--plan", "uniform:w8a8", "--kernels", "static", "--no-track"]) == 2
    )
    assert "input 'input_ids' is int64" in capsys.readouterr().err


def test_deploy_token_model_on_the_kernel_menu(home):
    argv = ["deploy", "--plan", WEIGHT_ONLY, "--kernels", "menu", "--repeats", "2", "--warmup", "1",
            "--threads", "1", "--batch-size", "8", "--split", "val"]  # fmt: skip
    d = _run(home, "deploy_menu", *argv)
    assert d["kernels"] == "menu"
    assert any("linear kernel int4_weight_only" in n for n in d["notes"])
    assert any("embedding kernel packed_lookup" in n for n in d["notes"])
    assert d["sim_vs_deployed_cosine"] >= 0.9999 and d["cosine_to_fp32"] > 0.99


def test_kernel_choice_and_static_refusal():
    ids = {
        "input_ids": torch.zeros(2, 5, dtype=torch.long),
        "attention_mask": torch.ones(2, 5, dtype=torch.long),
    }
    assert choose_kernels(torch.randn(2, 3))[0] == "static"
    assert (
        choose_kernels(ids)[0] == "dynamic"
        and choose_kernels((torch.randn(2), torch.randn(2)))[0] == "dynamic"
    )
    assert static_input_problem(torch.randn(2, 3)) is None
    msg = static_input_problem(ids)
    assert msg.startswith("input 'input_ids' is int64 (also 'attention_mask': int64): static int8")
    assert issubclass(DeployInputError, ValueError)


def test_eval_fn_variant_and_subprocess_smoke(home, tmp_path):
    task = load_task_file(f"{EXAMPLE}:make_task_eval_fn")
    assert task.name == "digits_bert_accuracy" and task.evaluate(split="val") > 0.85
    out = tmp_path / "q.json"
    cmd = [sys.executable, "-m", "workbench", "quantize", "--task", TASK, "--plan", "uniform:w8:per_channel",
           "--no-track", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    q = json.loads(out.read_text())
    assert q["model"] == "digits_bert" and q["accuracy"] > 0.99 and q["avg_act_bits"] == 32.0
