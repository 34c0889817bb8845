"""Pruning and low-rank factorisation as per-layer methods of a QuantPlan: specs, accounting, modules, packing."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from workbench.compress import prune_mask
from workbench.quant import (
    PlanError,
    QuantPlan,
    QuantSpec,
    load_packed,
    parse_shorthand,
    quant_modules,
    quantize_model,
    save_packed,
)
from workbench.quant.spec import folded_pairs, layer_weight_storage_bits


def _x(calib):
    return torch.cat([b[0] for b in calib])


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _seq() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10)).eval()


# -- specs ----------------------------------------------------------------------------------------------------
def test_defaults_keep_old_plans_and_json():
    spec = QuantSpec(w_bits=4)
    assert (spec.sparsity, spec.sparsity_structure, spec.rank_ratio) == (0.0, "unstructured", None)
    assert spec.method == "quantize" and QuantSpec(w_bits=32, a_bits=32).method == "none"
    old = {"w_bits": 4, "a_bits": 8, "granularity": "per_channel"}  # written before the new fields existed
    assert QuantSpec.from_dict(old) == QuantSpec(w_bits=4, a_bits=8)
    assert QuantPlan.from_json(json.dumps({"fc": old}))["fc"].method == "quantize"


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(w_bits=4, sparsity=0.5),
        QuantSpec(w_bits=8, sparsity=0.25, sparsity_structure="channel"),
        QuantSpec(w_bits=4, granularity="per_group", group_size=16, rank_ratio=0.3),
    ],
)
def test_json_round_trip_with_new_fields(spec):
    plan = QuantPlan({"fc": spec})
    text = plan.to_json()
    assert {"sparsity", "sparsity_structure", "rank_ratio"} <= set(json.loads(text)["fc"])
    assert QuantPlan.from_json(text) == plan


def test_method_and_identity():
    assert QuantSpec(w_bits=32, a_bits=32, sparsity=0.5).method == "prune"
    assert not QuantSpec(w_bits=32, a_bits=32, sparsity=0.5).is_identity
    assert QuantSpec(w_bits=32, a_bits=32, rank_ratio=1.0).method == "lowrank"
    assert not QuantSpec(w_bits=32, a_bits=32, rank_ratio=1.0).is_identity
    assert QuantSpec(
        w_bits=32, a_bits=32, sparsity_structure="channel"
    ).is_identity  # no pruning at sparsity 0
    assert QuantSpec(w_bits=32, a_bits=8, sparsity=0.1).transforms_weight
    assert not QuantSpec(w_bits=32, a_bits=8).transforms_weight


@pytest.mark.parametrize(
    ("kw", "pattern"),
    [
        ({"sparsity": 1.0}, r"sparsity=1\.0 .*\[0, 1\)"),
        ({"sparsity": -0.1}, r"sparsity=-0\.1 .*\[0, 1\)"),
        ({"sparsity": True}, r"sparsity=True"),
        ({"sparsity_structure": "rows"}, r"sparsity_structure='rows'.*'unstructured', 'channel'"),
        ({"rank_ratio": 0}, r"rank_ratio=0 .*\(0, 1\]"),
        ({"rank_ratio": 1.5}, r"rank_ratio=1\.5 .*\(0, 1\]"),
        ({"sparsity": 0.5, "rank_ratio": 0.5}, r"sparsity=0\.5 and rank_ratio=0\.5.*choose one method"),
        (
            {"w_bits": 4, "channel_bits": (4, 4), "sparsity": 0.5},
            r"channel_bits cannot be combined with prune",
        ),
        (
            {"w_bits": 4, "channel_bits": (4, 4), "rank_ratio": 0.5},
            r"channel_bits cannot be combined with lowrank",
        ),
    ],
)
def test_validation_names_the_value(kw, pattern):
    with pytest.raises(PlanError, match=pattern):
        QuantSpec(**kw)


def test_shorthand_options():
    assert parse_shorthand("uniform:w4a8:s0.5") == QuantSpec(w_bits=4, a_bits=8, sparsity=0.5)
    assert parse_shorthand("uniform:w8a8:cs.25") == QuantSpec(sparsity=0.25, sparsity_structure="channel")
    assert parse_shorthand("uniform:w4a8:per_group:g32:r0.25") == QuantSpec(
        w_bits=4, granularity="per_group", group_size=32, rank_ratio=0.25
    )
    assert parse_shorthand("uniform:w4a8:per_channel") == QuantSpec(w_bits=4)
    with pytest.raises(PlanError, match=r"'x0\.5'.*'s<F>', 'cs<F>', 'r<F>'"):
        parse_shorthand("uniform:w4a8:x0.5")
    with pytest.raises(PlanError, match=r"sparsity=1\.5"):
        parse_shorthand("uniform:w4a8:s1.5")


# -- accounting -----------------------------------------------------------------------------------------------
def test_storage_bits_by_hand():
    # unstructured: kept 18 of 36 at 4 bits + 36 mask bits + 4 float32 scales
    assert layer_weight_storage_bits(QuantSpec(w_bits=4, sparsity=0.5), (4, 1, 3, 3)) == 18 * 4 + 36 + 4 * 32
    # ... 16-bit weights: kept values + mask only
    assert layer_weight_storage_bits(QuantSpec(w_bits=16, sparsity=0.25), (10, 144)) == 1080 * 16 + 1440
    # channel: 2 of 4 rows kept, 8-bit asymmetric: codes + scale + zero point of kept rows
    spec = QuantSpec(w_bits=8, w_symmetric=False, sparsity=0.5, sparsity_structure="channel")
    assert layer_weight_storage_bits(spec, (4, 1, 3, 3)) == 2 * 9 * 8 + 2 * (32 + 8)
    # low-rank r = round(0.3 * 10) = 3, per group 64: A [10, 3] one group per row, B [3, 144] three per row
    spec = QuantSpec(w_bits=4, granularity="per_group", group_size=64, rank_ratio=0.3)
    assert layer_weight_storage_bits(spec, (10, 144)) == (30 * 4 + 10 * 32) + (432 * 4 + 9 * 32)
    # per tensor: one scale per factor; float32 factors: no scales
    spec = QuantSpec(w_bits=2, granularity="per_tensor", rank_ratio=0.3)
    assert layer_weight_storage_bits(spec, (10, 144)) == (30 + 432) * 2 + 2 * 32
    assert layer_weight_storage_bits(QuantSpec(w_bits=32, a_bits=32, rank_ratio=0.3), (10, 144)) == 462 * 32


def test_summary_of_pruned_and_low_rank_plan_by_hand():
    model = _seq()  # conv [4,1,3,3]: 1296 MACs; fc [10,144]: 1440 MACs; 1490 float32 parameters
    plan = QuantPlan(
        {
            "0": QuantSpec(w_bits=4, a_bits=8, sparsity=0.5),
            "3": QuantSpec(w_bits=8, a_bits=8, rank_ratio=0.3),  # r = 3
        }
    )
    s = plan.summary(model, torch.randn(1, 1, 8, 8))
    conv_bits = 18 * 4 + 36 + 4 * 32
    fc_bits = (30 * 8 + 10 * 32) + (432 * 8 + 3 * 32)
    act_bits = 2 * 64  # one float32 scale + int32 zero point per layer input
    assert s.fp32_size_bytes == 1490 * 4
    assert s.size_bytes == math.ceil((1490 * 32 - 1476 * 32 + conv_bits + fc_bits + act_bits) / 8)
    assert s.weight_bytes == math.ceil((conv_bits + fc_bits) / 8) == 544
    assert s.fp32_weight_bytes == 1476 * 4
    assert s.bops == 4 * 8 * 1296 // 2 + 8 * 8 * 3 * (144 + 10)
    assert s.fp32_bops == 32 * 32 * (1296 + 1440)
    assert s.avg_weight_bits == pytest.approx((4 * 36 + 8 * 1440) / 1476)
    assert s.quantized_layers == 2

    plan = QuantPlan({"0": QuantSpec(w_bits=32, a_bits=32, sparsity=0.5, sparsity_structure="channel")})
    s = plan.summary(model, torch.randn(1, 1, 8, 8))
    assert s.bops == 32 * 32 * (1296 // 2 + 1440)
    assert s.weight_bytes == (2 * 9 * 32 + 1440 * 32) // 8
    assert s.quantized_layers == 1


def test_pruned_float_conv_folds_its_batchnorm(tiny_model):
    plan = QuantPlan({"features.0": QuantSpec(w_bits=32, a_bits=32, sparsity=0.3)})
    assert folded_pairs(plan, tiny_model) == [("features.0", "features.1")]
    assert folded_pairs(QuantPlan({"features.0": QuantSpec(w_bits=32, a_bits=8)}), tiny_model) == []


# -- modules --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("structure", ["unstructured", "channel"])
def test_pruned_layer_has_exactly_the_expected_zeros(tiny_model, calib_batches, structure):
    before = copy.deepcopy(tiny_model)
    plan = QuantPlan(
        {
            "features.0": QuantSpec(w_bits=32, a_bits=32, sparsity=0.5, sparsity_structure=structure),
            "fc": QuantSpec(w_bits=8, a_bits=8, sparsity=0.75, sparsity_structure=structure),
        }
    )
    q = quantize_model(tiny_model, plan, calib_batches)
    assert _same_state(before, tiny_model)
    assert q.folded_bn == [("features.0", "features.1")]
    mods = quant_modules(q)
    conv, fc = mods["features.0"], mods["fc"]
    # the mask is taken on the BatchNorm-folded weight; float32 keeps every other value exactly
    folded = conv.weight.detach()
    expected = prune_mask(folded, 0.5, structure)
    w = conv.quantized_weight().detach()
    assert torch.equal(w != 0, expected)
    assert torch.equal(w[expected], folded[expected])
    n_zero = round(0.5 * 72) if structure == "unstructured" else 4 * 9
    assert int((w == 0).sum()) == n_zero
    w_fc = fc.quantized_weight().detach()
    fc_mask = prune_mask(tiny_model.fc.weight, 0.75, structure)
    assert torch.equal(fc.weight_mask, fc_mask)
    assert (w_fc[~fc_mask] == 0).all()
    assert int((~fc_mask).sum()) == (240 if structure == "unstructured" else 8 * 32)
    # scales come from the kept weights only: max |kept| maps onto the largest code
    kept_max = (tiny_model.fc.weight.detach().abs() * fc_mask).max()
    assert w_fc.abs().max() == pytest.approx(float(kept_max), rel=1e-6)


def test_pruned_weights_stay_zero_under_training(tiny_model, calib_batches):
    plan = QuantPlan.uniform(tiny_model, QuantSpec(w_bits=4, a_bits=8, sparsity=0.5))
    q = quantize_model(tiny_model, plan, calib_batches)
    fc = quant_modules(q)["fc"]
    q(_x(calib_batches)).square().mean().backward()
    assert (fc.weight.grad[~fc.weight_mask] == 0).all()
    assert fc.weight.grad[fc.weight_mask].abs().sum() > 0


def test_full_rank_float_low_rank_matches_float_model(tiny_model, calib_batches):
    x = _x(calib_batches)
    plan = QuantPlan.uniform(tiny_model, QuantSpec(w_bits=32, a_bits=32, rank_ratio=1.0))
    q = quantize_model(tiny_model, plan, calib_batches)
    assert set(quant_modules(q)) == {"features.0", "features.3", "fc"}
    with torch.no_grad():
        assert (q(x) - tiny_model(x)).abs().max() < 1e-4


def test_low_rank_layer_factors_and_training(tiny_model, calib_batches):
    plan = QuantPlan({"fc": QuantSpec(w_bits=4, a_bits=8, rank_ratio=0.5)})  # r = 5
    q = quantize_model(tiny_model, plan, calib_batches)
    fc = quant_modules(q)["fc"]
    assert fc.lowrank_a.shape == (10, 5) and fc.lowrank_b.shape == (5, 32)
    assert tuple(fc.w_quant.scale.shape) == (10, 1) and tuple(fc.w_quant_b.scale.shape) == (5, 1)
    w = tiny_model.fc.weight.detach().double()
    s = torch.linalg.svdvals(w)
    err = float((fc.weight.double() - w).pow(2).sum())
    assert err == pytest.approx(float(s[5:].pow(2).sum()), rel=1e-4)  # .weight holds the float approximation
    assert not fc.weight.requires_grad
    wq = fc.quantized_weight().detach()
    expected = fc.w_quant(fc.lowrank_a) @ fc.w_quant_b(fc.lowrank_b)
    assert torch.equal(wq, expected.detach())
    assert fc.w_quant(fc.lowrank_a).unique().numel() <= 10 * 15  # 4-bit symmetric: at most 15 levels a row
    q(_x(calib_batches)).square().mean().backward()
    assert fc.lowrank_a.grad.abs().sum() > 0 and fc.lowrank_b.grad.abs().sum() > 0


def test_pruning_half_of_digits_cnn_costs_little(digits_cnn_task, one_torch_thread):
    task = digits_cnn_task
    fp32 = task.evaluate(task.model, "test")
    plan = QuantPlan.uniform(task.model, QuantSpec(w_bits=8, a_bits=8, sparsity=0.5))
    q = quantize_model(task.model, plan, task.calib_loader)
    for name, mod in quant_modules(q).items():
        assert int((mod.quantized_weight() == 0).sum()) >= round(0.5 * mod.weight.numel()), name
    drop_pp = 100 * (fp32 - task.evaluate(q, "test"))
    assert drop_pp <= 4.0  # measured 2.2 pp (0.982 -> 0.960)
    s = plan.summary(task.model, task.example_input())
    assert s.bops == pytest.approx(0.5 * 64 / 1024 * s.fp32_bops, rel=1e-3)
    assert (
        3.0 < s.fp32_weight_bytes / s.weight_bytes < 32 / 5
    )  # 4 bits of values + 1 mask bit per weight, + scales


# -- packing --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(w_bits=4, a_bits=8, sparsity=0.5),
        QuantSpec(w_bits=3, a_bits=8, w_symmetric=False, sparsity=0.3, sparsity_structure="channel"),
        QuantSpec(
            w_bits=4,
            granularity="per_group",
            group_size=4,
            w_symmetric=False,
            sparsity=0.4,
            sparsity_structure="channel",
        ),
        QuantSpec(w_bits=4, granularity="per_tensor", sparsity=0.6, sparsity_structure="channel"),
        QuantSpec(w_bits=16, a_bits=16, sparsity=0.5),
        QuantSpec(w_bits=32, a_bits=32, sparsity=0.5, sparsity_structure="channel"),
        QuantSpec(w_bits=32, a_bits=32, sparsity=0.5),
        QuantSpec(w_bits=4, a_bits=8, rank_ratio=0.5),
        QuantSpec(w_bits=5, granularity="per_group", group_size=3, w_symmetric=False, rank_ratio=0.5),
        QuantSpec(w_bits=16, a_bits=16, float16_format="float16", rank_ratio=0.5),
        QuantSpec(w_bits=32, a_bits=32, rank_ratio=0.7),
    ],
)
def test_packed_round_trip_of_compressed_layers(tiny_model, calib_batches, spec, tmp_path):
    x = _x(calib_batches)
    plan = QuantPlan.uniform(tiny_model, spec)
    q = quantize_model(tiny_model, plan, calib_batches)
    report = save_packed(q, tmp_path / "m.wbq")
    loaded = load_packed(tmp_path / "m.wbq", tiny_model)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
        for name, mod in quant_modules(q).items():
            assert torch.equal(quant_modules(loaded)[name].quantized_weight(), mod.quantized_weight()), name
    # the file stores what the summary counts, plus a calibrated flag per layer and one bit per output channel
    summary = plan.summary(tiny_model, x)
    assert 0 <= report.theoretical_bytes - summary.size_bytes <= 3 + 3 * 2, (report, summary)


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(w_bits=4, a_bits=8, sparsity=0.5),
        QuantSpec(w_bits=2, a_bits=8, sparsity=0.5, sparsity_structure="channel"),
        QuantSpec(w_bits=4, a_bits=8, granularity="per_group", group_size=32, rank_ratio=0.25),
    ],
)
def test_packed_file_within_10_percent_of_summary(spec, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128)).eval()
    x = torch.randn(32, 256)
    plan = QuantPlan.uniform(model, spec)
    q = quantize_model(model, plan, [x])
    report = save_packed(q, tmp_path / "m.wbq")
    summary = plan.summary(model, x)
    assert report.file_bytes <= 1.10 * summary.size_bytes, (report, summary)
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "m.wbq", model)(x), q(x))
