"""Tests for workbench.profiling: exact costs and shapes, streaming statistics against direct computation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from torch import nn

from workbench.profiling import ProfileConfig, profile_model, profile_summary, select_layers

FAST = ProfileConfig(latency_repeats=3, warmup=1, max_batches=None, layers="leaf", progress=False)


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def batches(n: int = 3, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 1, 8, 8, generator=g) * 2 + 0.5, torch.zeros(size)) for _ in range(n)]


def outputs_by_layer(model: nn.Sequential, data: list) -> dict[str, torch.Tensor]:
    """Outputs of modules 0, 1, 3 over all batches, concatenated (the reference for the streaming stats)."""
    outs: dict[str, list[torch.Tensor]] = {"0": [], "1": [], "3": []}
    with torch.no_grad():
        for x, _ in data:
            h0 = model[0](x)
            h1 = model[1](h0)
            h3 = model[3](model[2](h1))
            outs["0"].append(h0)
            outs["1"].append(h1)
            outs["3"].append(h3)
    return {k: torch.cat(v) for k, v in outs.items()}


@pytest.fixture(scope="module")
def profiled() -> tuple[nn.Sequential, list, pd.DataFrame]:
    model = tiny_model()
    data = batches()
    return model, data, profile_model(model, data, config=FAST)


def test_rows_costs_and_shapes_are_exact(profiled) -> None:
    _, _, df = profiled
    assert list(df["layer"]) == list(df.index)
    assert list(df.index) == ["0", "1", "3"]  # Flatten does no compute: skipped
    assert list(df["type"]) == ["Conv2d", "ReLU", "Linear"]
    assert list(df["depth"]) == [0, 1, 2]
    assert list(df["params"]) == [4 * 1 * 3 * 3 + 4, 0, 256 * 10 + 10]
    assert list(df["macs"]) == [4 * 8 * 8 * 1 * 3 * 3, 0, 256 * 10]
    assert list(df["output_shape"]) == [(4, 8, 8), (4, 8, 8), (10,)]
    assert list(df["input_shape"]) == [(1, 8, 8), (4, 8, 8), (256,)]
    assert list(df["param_bytes"]) == [40 * 4, 0, 2570 * 4]
    assert list(df["activation_bytes"]) == [256 * 4, 256 * 4, 10 * 4]


def test_activation_stats_match_direct_computation(profiled) -> None:
    model, data, df = profiled
    ref = outputs_by_layer(model, data)
    for name, y in ref.items():
        row = df.loc[name]
        assert row["act_min"] == pytest.approx(float(y.min()), abs=0)
        assert row["act_max"] == pytest.approx(float(y.max()), abs=0)
        assert row["act_mean"] == pytest.approx(float(y.double().mean()), rel=1e-6, abs=1e-9)
        assert row["act_var"] == pytest.approx(float(torch.var(y.double())), rel=1e-4)
        counts = torch.histc(y.flatten(), bins=FAST.hist_bins, min=float(y.min()), max=float(y.max()))
        p = counts[counts > 0].double() / counts.sum()
        assert row["act_entropy"] == pytest.approx(float(-(p * p.log2()).sum()), rel=1e-9)
        assert 0 < row["act_entropy"] <= math.log2(FAST.hist_bins)
    relu = ref["1"]
    assert df.loc["1", "act_sparsity"] == pytest.approx(float((relu == 0).double().mean()), abs=1e-12)
    assert 0.2 < df.loc["1", "act_sparsity"] < 0.6
    assert df.loc["0", "act_sparsity"] == 0.0
    # input of the Linear is the flattened ReLU output; input of the conv is the raw data
    assert df.loc["3", "input_var"] == pytest.approx(float(torch.var(relu.double())), rel=1e-4)
    x_all = torch.cat([x for x, _ in data]).double()
    assert df.loc["0", "input_var"] == pytest.approx(float(torch.var(x_all)), rel=1e-4)


def test_weight_stats_match_scipy(profiled) -> None:
    model, _, df = profiled
    for name in ("0", "3"):
        w = getattr(model, name).weight.detach().double().flatten()
        assert df.loc[name, "w_kurtosis"] == pytest.approx(scipy.stats.kurtosis(w.numpy()), rel=1e-9)
        assert df.loc[name, "w_std"] == pytest.approx(float(w.std()), rel=1e-9)
        assert df.loc[name, "w_absmax"] == pytest.approx(float(w.abs().max()), rel=1e-12)
        assert 0 < df.loc[name, "w_entropy"] <= math.log2(FAST.hist_bins)
    assert np.isnan(df.loc["1", "w_kurtosis"])  # ReLU has no weight


def test_latency_positive_and_shares_sum_to_one(profiled) -> None:
    _, _, df = profiled
    assert (df["latency_ms"] > 0).all()
    assert df["latency_share"].sum() == pytest.approx(1.0)
    assert df.attrs["model_latency_ms"] > 0


def test_summary_totals(profiled) -> None:
    _, _, df = profiled
    s = profile_summary(df)
    assert s["layers"] == 3
    assert s["params"] == 2610
    assert s["macs"] == 2304 + 2560
    assert s["param_bytes"] == 2610 * 4
    assert s["peak_activation_bytes"] == 1024
    assert s["latency_ms"] == pytest.approx(float(df["latency_ms"].sum()))


def test_model_is_not_mutated() -> None:
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile_model(model, batches(2), config=FAST)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    model.eval()
    profile_model(model, batches(1), config=FAST)
    assert not model.training


def test_quantizable_default_plain_tensor_and_max_batches() -> None:
    model = tiny_model()
    data = batches(4)
    cfg = ProfileConfig(latency_repeats=1, warmup=0, max_batches=2, progress=True)
    df = profile_model(model, (b for b in data), config=cfg)  # a one-shot generator works too
    assert list(df.index) == ["0", "3"]
    first_two = outputs_by_layer(model, data[:2])["0"]
    assert df.loc["0", "act_max"] == float(first_two.max())  # batches 3, 4 were not used
    df_t = profile_model(model, data[0][0], config=cfg)
    only_first = outputs_by_layer(model, data[:1])["3"]
    assert df_t.loc["3", "act_min"] == float(only_first.min())


def test_dataloader_batches() -> None:
    x = torch.randn(20, 1, 8, 8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(20)), batch_size=8)
    model = tiny_model()
    df = profile_model(model, loader, config=FAST)
    with torch.no_grad():
        y = model[0](x)
    assert df.loc["0", "act_var"] == pytest.approx(float(torch.var(y.double())), rel=1e-4)


def test_validation_errors() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="empty"):
        profile_model(model, [], config=FAST)
    with pytest.raises(ValueError, match="leaf"):
        profile_model(nn.Sequential(nn.ReLU(), nn.Tanh()), batches(1), config=ProfileConfig(progress=False))
    with pytest.raises(ValueError, match="quantizable"):
        ProfileConfig(layers="all")
    with pytest.raises(ValueError, match="latency_repeats"):
        ProfileConfig(latency_repeats=0)
    with pytest.raises(
        TypeError, match="tuples"
    ):  # dicts of tensors are keyword inputs now; a str is no batch
        profile_model(model, ["not a batch"], config=FAST)
    assert list(select_layers(nn.Sequential(nn.ReLU(), nn.Tanh()), "leaf")) == ["0", "1"]
