"""Pure logic of bench/peers_bench.py (peer bits -> our plan, dominance against our fronts) on a hand-written peers
JSON; needs neither the peers venv nor a trained model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from workbench.models import build_model
from workbench.quant.spec import PlanError

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


pb = _load("peers_bench", ROOT / "bench" / "peers_bench.py")
LAYERS = ["conv1", "conv2", "fc1", "fc2"]  # digits_cnn

PEERS = {
    "models": {"digits_cnn": {"layers": LAYERS, "fp32_val": 0.98, "fp32_test": 0.98}},
    "points": [
        {
            "peer": "AIMET",
            "model": "digits_cnn",
            "method": "AMP A8 x W{8,4,2}",
            "granularity": "per_channel",
            "weight_bits": {"conv1": 2, "conv2": 2, "fc1": 8, "fc2": 8},
            "act_bits": dict.fromkeys(LAYERS, 8),
        },
        {
            "peer": "NNCF",
            "model": "digits_cnn",
            "method": "HAWQ",
            "granularity": "per_tensor",
            "weight_bits": {"conv1": 8, "conv2": 4, "fc1": 4, "fc2": 8},
            "act_bits": {"conv1": 8, "conv2": 4, "fc1": 4, "fc2": 8},
        },
        {"peer": "NNCF", "model": "digits_cnn", "error": "AttributeError: boom"},
    ],
}


def test_peer_bits_become_our_plan(tmp_path):
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(PEERS))
    peers = pb.load_peers(path)
    aimet, nncf = peers["points"][:2]
    plan = pb.plan_from_bits(
        LAYERS, aimet["weight_bits"], aimet["act_bits"], granularity=aimet["granularity"]
    )
    plan.validate(build_model("digits_cnn"))
    assert [plan[n].w_bits for n in LAYERS] == [2, 2, 8, 8]
    assert {plan[n].a_bits for n in LAYERS} == {8}
    assert {plan[n].granularity for n in LAYERS} == {"per_channel"}
    plan = pb.plan_from_bits(LAYERS, nncf["weight_bits"], nncf["act_bits"], granularity="per_tensor")
    assert [plan[n].a_bits for n in LAYERS] == [8, 4, 4, 8]
    assert {plan[n].granularity for n in LAYERS} == {"per_tensor"}
    assert plan["conv2"].w_symmetric  # both peers quantize weights symmetrically; so do our defaults
    # activations default to 8 bits when the peer gives none
    assert {s.a_bits for s in pb.plan_from_bits(LAYERS, nncf["weight_bits"]).layers.values()} == {8}
    assert pb.bits_string(LAYERS, nncf["weight_bits"]) == "8/4/4/8"
    assert pb.bits_string(LAYERS, {"conv1": 4}) == "4/-/-/-"


def test_peer_bits_that_do_not_fit_are_refused():
    with pytest.raises(PlanError, match="miss layers"):
        pb.plan_from_bits(LAYERS, {"conv1": 8})
    with pytest.raises(PlanError, match="does not have"):
        pb.plan_from_bits(LAYERS, {**dict.fromkeys(LAYERS, 8), "layer9": 4})
    with pytest.raises(PlanError, match="w_bits=7"):
        pb.plan_from_bits(LAYERS, {**dict.fromkeys(LAYERS, 8), "fc1": 7})


FRONT = [
    {"label": "a", "accuracy": 0.97, "test_accuracy": 0.98, "weight_bytes": 100, "bops": 50},
    {"label": "b", "accuracy": 0.95, "test_accuracy": 0.96, "weight_bytes": 60, "bops": 40},
]


@pytest.mark.parametrize(
    ("point", "verdict", "by"),
    [
        ({"test_accuracy": 0.97, "weight_bytes": 120, "bops": 10}, "dominated", "a"),  # worse in both
        ({"test_accuracy": 0.98, "weight_bytes": 120, "bops": 10}, "dominated", "a"),  # equal acc, larger
        ({"test_accuracy": 0.96, "weight_bytes": 60, "bops": 10}, "matched", "b"),  # same point
        ({"test_accuracy": 0.99, "weight_bytes": 120, "bops": 10}, "not dominated", None),  # more accurate
        ({"test_accuracy": 0.90, "weight_bytes": 50, "bops": 10}, "not dominated", None),  # smaller
        ({"test_accuracy": 0.97, "weight_bytes": 80, "bops": 10}, "not dominated", None),  # between a and b
    ],
)
def test_dominance(point, verdict, by):
    v, q = pb.dominance(point, FRONT)
    assert v == verdict
    assert (q or {}).get("label") == by


def test_dominance_options_and_gap():
    point = {"accuracy": 0.96, "test_accuracy": 0.97, "weight_bytes": 120, "bops": 10}
    assert pb.dominance(point, FRONT, acc="accuracy")[0] == "dominated"
    assert pb.dominance(point, FRONT, extra=("bops",))[0] == "not dominated"  # the peer point has fewer BOPs
    assert pb.dominance(point, [])[0] == "not dominated"
    gap = pb.front_gap({"test_accuracy": 0.97, "weight_bytes": 80}, FRONT)
    assert gap == {"best_acc_at_size": 0.96, "min_weight_bytes_at_acc": 100}
    assert pb.front_gap({"test_accuracy": 0.999, "weight_bytes": 10}, FRONT) == {
        "best_acc_at_size": None,
        "min_weight_bytes_at_acc": None,
    }
    assert pb._seed_verdict(["dominated", "matched", "dominated"]) == "yes (3/3 seeds)"
    assert pb._seed_verdict(["dominated", "not dominated", "not dominated"]) == "partly (1/3 seeds)"
    assert pb._seed_verdict(["not dominated"] * 3) == "**NO** (0/3 seeds)"


def test_splice_replaces_only_its_section(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text("# Benchmarks\n\n## A\n\na\n\n## Peers: X\n\nold\n\n## C\n\nc\n")
    pb.splice(doc, "## Peers: X", ["## Peers: X", "", "new", ""])
    assert doc.read_text() == "# Benchmarks\n\n## A\n\na\n\n## Peers: X\n\nnew\n\n## C\n\nc\n"
    pb.splice(doc, "## D", ["## D", "", "d"])
    assert doc.read_text().endswith("## C\n\nc\n\n## D\n\nd\n")


def test_missing_peers_json_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="run_peers.py"):
        pb.load_peers(tmp_path / "nope.json")
