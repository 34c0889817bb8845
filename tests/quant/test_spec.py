"""QuantSpec / QuantPlan: validation, JSON round-trip, shorthand, summaries."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.quant import PlanError, QuantPlan, QuantSpec, parse_shorthand


def test_defaults_and_json_round_trip(tiny_model, tmp_path):
    plan = QuantPlan.uniform(tiny_model, QuantSpec(w_bits=4, a_bits=8))
    plan = plan.with_layer(
        "fc", QuantSpec(w_bits=8, a_bits=8, granularity="per_group", group_size=8, w_symmetric=False)
    )
    plan = plan.with_layer("features.0", QuantSpec(w_bits=4, channel_bits=(2, 3, 4, 5, 6, 8, 8, 4)))
    again = QuantPlan.from_json(plan.to_json())
    assert again == plan
    path = plan.save(tmp_path / "plan.json")
    assert QuantPlan.load(path) == plan
    with pytest.raises(FileExistsError):
        plan.save(path)
    plan.save(path, overwrite=True)
    assert list(plan) == ["features.0", "features.3", "fc"]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"w_bits": 7}, "valid bits"),
        ({"a_bits": 1}, "valid bits"),
        ({"granularity": "per_row"}, "per_tensor"),
        ({"granularity": "per_group"}, "group_size"),
        ({"group_size": 8}, "only used with granularity='per_group'"),
        ({"w_observer": "kl"}, "minmax"),
        ({"float16_format": "fp8"}, "bfloat16"),
        ({"channel_bits": (4, 16)}, "integer bits"),
        ({"granularity": "per_tensor", "channel_bits": (4, 4)}, "per_channel"),
        ({"a_granularity": "per_group"}, "per_tensor"),
    ],
)
def test_bad_specs_name_the_problem(kwargs, needle):
    with pytest.raises(PlanError, match=needle):
        QuantSpec(**kwargs)


def test_unknown_layer_and_field_errors(tiny_model):
    plan = QuantPlan({"features.9": QuantSpec()})
    with pytest.raises(PlanError, match=r"unknown layer.*features\.9.*valid layers.*features\.0"):
        plan.validate(tiny_model)
    with pytest.raises(PlanError, match="unknown spec field"):
        QuantPlan.from_dict({"fc": {"wbits": 4}})
    with pytest.raises(PlanError, match="channel_bits has 3 entries"):
        QuantPlan({"fc": QuantSpec(channel_bits=(4, 4, 4))}).validate(tiny_model)
    with pytest.raises(PlanError, match="no quantizable layers"):
        QuantPlan.uniform(torch.nn.Sequential(torch.nn.ReLU()), QuantSpec())


def test_shorthand():
    assert parse_shorthand("uniform:w4a8:per_channel") == QuantSpec(
        w_bits=4, a_bits=8, granularity="per_channel"
    )
    s = parse_shorthand("uniform:w3a6:g16:asym:mse:dynamic")
    assert (s.granularity, s.group_size, s.w_symmetric, s.w_observer, s.a_dynamic) == (
        "per_group",
        16,
        False,
        "mse",
        True,
    )
    assert parse_shorthand("uniform:w16a16:fp16").float16_format == "float16"
    for bad in ("w4a8", "uniform:4/8", "uniform:w4a8:per_row", "uniform:w7a8"):
        with pytest.raises(PlanError):
            parse_shorthand(bad)


def test_summary_counts_bits_scales_and_bops(tiny_model):
    x = torch.zeros(1, 1, 8, 8)
    n_params = sum(p.numel() for p in tiny_model.parameters())
    fp32 = QuantPlan({}).summary(tiny_model, x)
    bn_buffers = 4 * (8 + 8) + 8  # running mean / var (float32) and num_batches_tracked (int64)
    assert fp32.size_bytes == fp32.fp32_size_bytes == 4 * n_params + bn_buffers
    assert fp32.avg_weight_bits == 32.0 and fp32.bops == fp32.fp32_bops

    plan = QuantPlan.uniform(tiny_model, QuantSpec(w_bits=4, a_bits=8, granularity="per_channel"))
    s = plan.summary(tiny_model, x)
    conv0, conv1, fc = 8 * 9, 8 * 4 * 9, 10 * 32
    weight_bits = 4 * (conv0 + conv1 + fc) + 32 * (8 + 8 + 10)  # packed codes + one float32 scale per channel
    other_bits = 32 * (n_params - conv0 - conv1 - fc - 16)  # biases; BatchNorm is folded into features.0
    act_bits = 3 * 64  # one float32 scale + int32 zero point per static activation quantizer
    assert s.size_bytes == math.ceil((weight_bits + other_bits + act_bits) / 8)
    unfolded = plan.with_layer("features.0", QuantSpec(w_bits=32, a_bits=8))  # float conv keeps its BatchNorm
    s32 = unfolded.summary(tiny_model, x)
    assert s32.size_bytes == math.ceil(
        (weight_bits - 4 * conv0 - 32 * 8 + 32 * conv0 + other_bits + act_bits) / 8
    ) + (4 * 16 + bn_buffers)
    assert s.avg_weight_bits == 4.0 and s.avg_act_bits == 8.0
    macs = 8 * 64 * 9 + 8 * 64 * 4 * 9 + 10 * 32
    assert s.bops == 4 * 8 * macs and s.fp32_bops == 32 * 32 * macs

    mixed = plan.with_layer("fc", QuantSpec(w_bits=8, channel_bits=(2,) * 5 + (8,) * 5))
    assert mixed.summary(tiny_model, x).avg_weight_bits == pytest.approx(
        (4 * (conv0 + conv1) + 5 * fc) / (conv0 + conv1 + fc)
    )
    low_act = plan.with_layer("fc", QuantSpec(w_bits=4, a_bits=4))
    assert low_act.summary(tiny_model, x).avg_act_bits == pytest.approx(
        (8 * (conv0 + conv1) + 4 * fc) / (conv0 + conv1 + fc)
    )


def test_plan_json_with_a_duplicate_layer_or_field_is_refused_naming_it(tmp_path):
    layer = '{"w_bits": 4, "a_bits": 8}'
    with pytest.raises(PlanError, match="ambiguous: the key 'fc' appears twice"):
        QuantPlan.from_json(f'{{"fc": {layer}, "conv": {layer}, "fc": {{"w_bits": 8}}}}')
    path = tmp_path / "dup.json"
    path.write_text('{"fc": {"w_bits": 4, "w_bits": 2}}')
    with pytest.raises(PlanError, match=f"plan file {path}: .*the key 'w_bits' appears twice"):
        QuantPlan.load(path)


def test_plan_load_names_a_directory_and_a_missing_file(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"plan file {tmp_path} is a directory"):
        QuantPlan.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        QuantPlan.load(tmp_path / "missing.json")
