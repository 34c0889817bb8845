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
    assert pb.dominance(point, FRONT, costs=("bops",))[0] == "not dominated"  # the peer point has fewer BOPs
    assert pb.dominance(point, FRONT, costs=("weight_bytes", "bops"))[0] == "not dominated"
    assert pb.dominance({**point, "bops": 55}, FRONT, costs=("bops",)) == ("dominated", FRONT[0])
    assert pb.dominance(point, [])[0] == "not dominated"
    with pytest.raises(ValueError, match="costs"):
        pb.dominance(point, FRONT, costs=())
    gap = pb.front_gap({"test_accuracy": 0.97, "weight_bytes": 80}, FRONT)
    assert gap == {"best_acc_at_cost": 0.96, "min_cost_at_acc": 100}
    assert pb.front_gap({"test_accuracy": 0.97, "bops": 45}, FRONT, cost="bops") == {
        "best_acc_at_cost": 0.96,
        "min_cost_at_acc": 50,
    }
    assert pb.front_gap({"test_accuracy": 0.999, "weight_bytes": 10}, FRONT) == {
        "best_acc_at_cost": None,
        "min_cost_at_acc": None,
    }


def test_verdicts_in_both_objective_pairs_and_their_counts():
    # more accurate than nothing at its size, but b has fewer BOPs at higher accuracy
    v = pb.verdicts({"test_accuracy": 0.95, "weight_bytes": 50, "bops": 45}, FRONT)
    assert v["bytes"]["verdict"] == "not dominated" and v["bytes"]["by"] is None
    assert v["bytes"]["gap"] == {"best_acc_at_cost": None, "min_cost_at_acc": 60}
    assert (v["bops"]["verdict"], v["bops"]["by"]) == ("dominated", "b")
    rows = [
        {"test": v},
        {"test": pb.verdicts({"test_accuracy": 0.96, "weight_bytes": 60, "bops": 40}, FRONT)},  # b itself
        {"error": "boom"},  # no verdicts: not counted
    ]
    c = pb.count(rows)
    assert c["bytes"] == {"n": 2, "dominated": 0, "matched": 1, "not dominated": 1}
    assert c["bops"] == {"n": 2, "dominated": 1, "matched": 1, "not dominated": 0}
    assert pb.report.share(c["bops"]) == "2/2 (100 %)"
    assert pb.report.share(c["bops"], strict=True) == "1/2 (50 %)"
    assert pb.report.share(c["bytes"]) == "1/2 (50 %)"


class _StubMeasurer:
    """Accuracy falls with the bits removed; weight bytes = sum of weight bits x 10; BOPs = sum w x a bits."""

    class _Split:
        fp32_accuracy = 0.98

    test = _Split()

    def __call__(self, plan):
        w = sum(s.w_bits for s in plan.layers.values())
        a = sum(s.w_bits * s.a_bits for s in plan.layers.values())
        tensor = sum(s.granularity == "per_tensor" for s in plan.layers.values())
        acc = 0.98 - 0.01 * (32 - w) - 0.001 * tensor
        return {"accuracy": acc, "test_accuracy": acc, "weight_bytes": 10 * w - tensor, "bops": a,
                "weight_fraction": w / 128}  # fmt: skip


def test_evaluate_points_measures_each_variant_against_the_pooled_front():
    ours = {
        "front": [  # seed 0: an 8/8/8/8 plan; seed 1: a 4/4/4/4 one (both A8 per-channel)
            {
                "label": "w8",
                "seed": 0,
                "accuracy": 0.98,
                "test_accuracy": 0.98,
                "weight_bytes": 320,
                "bops": 256,
            },
            {
                "label": "w4",
                "seed": 1,
                "accuracy": 0.9,
                "test_accuracy": 0.9,
                "weight_bytes": 160,
                "bops": 128,
            },
        ]
    }
    rows = pb.evaluate_points(PEERS, "digits_cnn", _StubMeasurer(), ours, seeds=[0, 1])
    assert [(r["peer"], r.get("variant", "")[:6]) for r in rows] == [
        ("AIMET", "as the"),
        ("NNCF", "as the"),
        ("NNCF", "its we"),  # per-tensor with mixed activations: also measured in our space
        ("NNCF", "as the"),  # the failed run stays a row
    ]
    aimet, nncf, nncf_ours, failed = rows
    assert failed["error"] == "AttributeError: boom" and "test" not in failed
    # AIMET 2/2/8/8: 20 bits -> acc 0.86, 200 bytes, BOPs 160; w4 is more accurate with fewer bytes and BOPs
    assert aimet["ours"]["test_accuracy"] == pytest.approx(0.86)
    assert aimet["test"]["bytes"]["verdict"] == "dominated" and aimet["test"]["bytes"]["by"] == "w4"
    assert aimet["test"]["bops"]["verdict"] == "dominated"
    assert aimet["collapsed"]  # 0.86 < 0.98 - 10 pp
    assert aimet["test_per_seed"][0]["bytes"]["verdict"] == "not dominated"  # w8 alone is larger
    # NNCF as run (per-tensor, 4-bit activations): 24 bits, BOPs 8*8+4*4+4*4+8*8 = 160
    assert nncf["ours"]["bops"] == 160 and nncf["plan_act_bits"] == {
        "conv1": 8,
        "conv2": 4,
        "fc1": 4,
        "fc2": 8,
    }
    assert nncf["ours"]["test_accuracy"] == pytest.approx(0.896) and nncf["ours"]["weight_bytes"] == 236
    assert nncf["test"]["bytes"]["verdict"] == nncf["test"]["bops"]["verdict"] == "dominated"  # by w4
    assert nncf_ours["plan_act_bits"] == dict.fromkeys(LAYERS, 8) and not nncf_ours["primary"]
    assert "peer_sim" not in nncf_ours and "peer_sim" not in nncf  # no peer_test in the hand-written JSON


def test_bytes_are_judged_on_the_bits_runs_and_bops_on_the_mac_bits_runs():
    # the bits run found only the 8-bit plan; the MAC-bits run a 4-bit one: the AIMET point (2/2/8/8: 200 bytes,
    # BOPs 160, acc 0.86) loses on bytes to the bits run, is dominated in BOPs by the MAC-bits run, and the pool
    # (both runs) dominates it in both pairs
    w8 = {"label": "w8", "kind": "avg_bits", "seed": 0, "accuracy": 0.98, "test_accuracy": 0.98,
          "weight_bytes": 320, "bops": 256}  # fmt: skip
    w4 = {**w8, "label": "w4", "kind": "mac_bits", "weight_bytes": 160, "bops": 128, "test_accuracy": 0.9}
    aimet = pb.evaluate_points(PEERS, "digits_cnn", _StubMeasurer(), {"front": [w8, w4]}, seeds=[0])[0]
    assert aimet["test"]["bytes"]["verdict"] == "not dominated"
    assert (aimet["test"]["bops"]["verdict"], aimet["test"]["bops"]["by"]) == ("dominated", "w4")
    assert {v["verdict"] for v in aimet["test_pooled"].values()} == {"dominated"}
    assert aimet["test_per_seed"][0]["bops"]["by"] == "w4"


def test_like_for_like_rows_and_per_seed_lines():
    rows = pb.evaluate_points(PEERS, "digits_cnn", _StubMeasurer(), {"front": []}, seeds=[0])
    aimet, nncf, nncf_ours = rows[:3]
    assert aimet["in_our_space"] and nncf_ours["in_our_space"] and not nncf["in_our_space"]
    assert pb.report.outside_reasons(nncf) == ["per-tensor weights", "activations below 8 bits"]
    # JSON turns the seed keys into strings; both spellings are read
    row = {"test_per_seed": {"0": aimet["test"], 1: nncf["test"]}}
    lines = pb.report._seed_lines([row], [0, 1])
    assert lines[0].startswith("- search seed 0 alone") and lines[1].startswith("- search seed 1 alone")
    assert pb.report._seed_lines([row], [0]) == []


def _section_inputs():
    w8 = {"label": "w8", "seed": 0, "accuracy": 0.98, "test_accuracy": 0.98, "weight_bytes": 320, "bops": 256}
    ours = {"front": [w8], "recheck_max_abs_diff": 0.0,
            "runs": [{"budget": 6.0, "seed": 0, "front_size": 1, "real_evaluations": 20, "seconds": 1.0}]}  # fmt: skip
    rows = pb.evaluate_points(PEERS, "digits_cnn", _StubMeasurer(), ours, seeds=[0])
    model = {"points": rows, "ours": ours, "fp32_weight_bytes": 1280, "w8a8_bops": 256,
             "same_weights_and_data_as_peers": {"state_digest": True}}  # fmt: skip
    return {"models": {"digits_cnn": model}, "budgets": [6.0], "mac_budgets": [5.0], "seeds": [0],
            "evaluations": 20, "seconds": 3.0, "install": "1 s",
            "versions": {"cpu": "cpu X", "cores": 2, "python": "3.11",
                         "versions": {"torch": "t", "optuna": "o", "numpy": "n"}}}  # fmt: skip


def test_section_lists_shares_and_losses():
    result = _section_inputs()
    text = "\n".join(pb.report.section(pb.HEADING, PEERS, result, argv="--budgets 6"))
    assert text.startswith(pb.HEADING)
    assert "python bench/peers_bench.py --budgets 6" in text
    assert "cpu X, 2 cores shared with other jobs" in text
    # AIMET 2/2/8/8 (200 bytes, BOPs 160) beats the lone 8-bit plan on cost: a loss in both pairs, listed
    loss = [ln for ln in text.splitlines() if ln.startswith("- digits_cnn, AIMET")]
    assert (
        len(loss) == 1 and "fails on (test, weight bytes)" in loss[0] and "fails on (test, BOPs)" in loss[0]
    )
    assert "our least weight at no lower test 0.2500 of FP32 weights" in loss[0]
    # the NNCF point (24 bits, per-tensor) is also smaller than w8: 0 of 2 peer points covered
    assert "(test, weight bytes) 0/2 (0 %) dominated or matched" in text


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


def test_lite1_section_states_the_metric_the_peers_command_and_the_verdicts():
    peers = {**PEERS, "argv": ["--models", "lite1", "--drops", "1", "2"], "threads": 2, "seconds": 12.0}
    text = "\n".join(
        pb.report.lite1_section(pb.LITE1_HEADING, peers, _section_inputs(), argv="--models lite1")
    )
    assert text.startswith(pb.LITE1_HEADING)
    assert (
        "run_peers.py --models lite1 --drops 1 2" in text
        and "python bench/peers_bench.py --models lite1" in text
    )
    assert "mean cosine of the logits to the FP32 model" in text and "Peer runs: 12 s in all" in text
    assert "(test, weight bytes) 0/2 (0 %) dominated or matched" in text
    assert "B = 6 average weight bits" in text and "B = 5 MACs-weighted" in text


def test_lite1_runs_on_its_own_with_its_own_files(monkeypatch):
    monkeypatch.setattr("sys.argv", ["peers_bench.py", "--models", "lite1"])
    args = pb._parse()
    assert args.heading == pb.LITE1_HEADING and args.section is pb.report.lite1_section
    assert args.peers_json == str(pb.LITE1_PEERS_JSON) and args.json == str(pb.LITE1_OUT_JSON)
    monkeypatch.setattr("sys.argv", ["peers_bench.py"])
    args = pb._parse()
    assert args.heading == pb.HEADING and args.peers_json == str(pb.PEERS_JSON)
    monkeypatch.setattr("sys.argv", ["peers_bench.py", "--models", "lite1", "digits_cnn"])
    with pytest.raises(SystemExit):
        pb._parse()


def test_our_fronts_are_reused_only_for_the_same_weights_and_budgets(tmp_path, monkeypatch):
    calls = []

    def fake_front(task, measurer, *, budgets, seeds, evaluations):
        calls.append(budgets)
        return {"front": [], "runs": [], "n": len(calls)}

    monkeypatch.setattr(pb, "our_front", fake_front)
    monkeypatch.setattr(pb, "ROOT", tmp_path)
    monkeypatch.setattr("sys.argv", ["peers_bench.py", "--budgets", "4", "--mac-budgets"])
    args = pb._parse()
    assert pb.cached_front(None, "m", None, args, "d1")["n"] == 1
    assert pb.cached_front(None, "m", None, args, "d1")["n"] == 1  # reused
    assert calls == [{"avg_bits": [4.0]}]
    assert pb.cached_front(None, "m", None, args, "d2")["n"] == 2  # other weights: searched again
    args.budgets = [5.0]
    assert pb.cached_front(None, "m", None, args, "d2")["n"] == 3


def test_the_peers_see_same_convs_as_pad_plus_conv_named_back_to_our_layers():
    from types import SimpleNamespace

    import torch
    from torch import nn

    class SameConv(nn.Conv2d):  # like efficientnet_lite_pytorch's Conv2dStaticSamePadding
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.static_padding = nn.ZeroPad2d((0, 1, 0, 1))

        def forward(self, x):
            return super().forward(self.static_padding(x))

    torch.manual_seed(0)
    model = nn.Sequential(SameConv(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    rp = _load("run_peers_for_test", ROOT / "bench" / "peers" / "run_peers.py")
    theirs, to_ours = rp.peer_model(SimpleNamespace(model=model))
    assert rp.quant_layer_names(theirs) == ["0.1", "2"]
    assert [to_ours(n) for n in rp.quant_layer_names(theirs)] == ["0", "2"]
    assert type(theirs[0][1]) is nn.Conv2d and isinstance(model[0], SameConv)  # the caller's model is kept
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(theirs(x), model(x), rtol=0, atol=0)
