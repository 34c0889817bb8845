"""Views of a result: ranking, rank agreement, the cost-benefit table and the figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workbench.sensitivity import rank_agreement


def test_ranking_and_rank_agreement(cnn_result):
    rank = cnn_result.ranking("omega", bits=4)
    assert list(rank.columns) == ["layer", "op_type", "depth", "value", "rank"]
    assert rank["value"].is_monotonic_decreasing and list(rank["rank"]) == [1, 2, 3, 4]
    assert rank["value"].iloc[0] == cnn_result.matrix("omega", bits=[4])[4].max()
    fisher = cnn_result.ranking("fisher")  # precision-free: no bits needed
    assert set(fisher["layer"]) == set(cnn_result.layer_names)
    with pytest.raises(ValueError, match="needs bits"):
        cnn_result.ranking("omega")
    with pytest.raises(ValueError, match="not in this result"):
        cnn_result.ranking("nope", bits=4)
    same = rank_agreement(cnn_result, ("output_mse", 2), ("output_mse", 2))
    assert same["spearman"] == pytest.approx(1.0) and same["kendall"] == pytest.approx(1.0)
    agree = rank_agreement(cnn_result)
    assert agree["n_layers"] == 4 and agree["a"] == "omega@4"
    assert math.isnan(agree["spearman"]) or -1 <= agree["spearman"] <= 1
    assert -1 <= rank_agreement(cnn_result, ("omega", 2), ("output_kl", 2))["kendall"] <= 1


def test_cost_benefit(cnn_result):
    cb = cnn_result.cost_benefit
    assert set(cb["w_bits"]) == {2, 3, 4, 6} and set(cb["metric"]) == {"output_mse"}
    assert cb["ratio"].is_monotonic_decreasing and list(cb["rank"]) == list(range(1, len(cb) + 1))
    layers = cnn_result.layers.set_index("layer")
    mse = cnn_result.matrix("output_mse")
    for row in cb.itertuples():
        assert row.bytes_saved == layers.loc[row.layer, "weight_params"] * (8 - row.w_bits) / 8
        assert row.bops_saved == layers.loc[row.layer, "macs"] * (8 - row.w_bits) * 8
        assert row.sensitivity == mse.loc[row.layer, row.w_bits]
        assert row.ratio == pytest.approx(row.bytes_saved / (max(row.sensitivity, 0) + 1e-12))


# --------------------------------------------------------------------------------------------- figures


def test_figures(cnn_result):
    from workbench.ui.sensitivity import (
        channel_heatmap,
        cost_benefit_figure,
        layer_scores_figure,
        metric_agreement_figure,
        sensitivity_heatmap,
    )

    fig = sensitivity_heatmap(cnn_result, "output_mse")
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (4, 5) and list(fig.data[0].x) == ["W2", "W3", "W4", "W6", "W8"]
    np.testing.assert_allclose(z, np.log10(cnn_result.matrix("output_mse").to_numpy()))
    act = sensitivity_heatmap(cnn_result, "acc_drop", kind="activation", log=False)
    assert np.asarray(act.data[0].z).shape == (4, 3)
    ch = channel_heatmap(cnn_result, "conv1")
    assert np.asarray(ch.data[0].z).shape == (5, 16)
    assert np.asarray(channel_heatmap(cnn_result, "fc2", "fisher").data[0].z).shape == (1, 10)
    with pytest.raises(ValueError, match="layers"):
        channel_heatmap(cnn_result, "nope")
    agree = metric_agreement_figure(cnn_result, ("omega", 2), ("output_mse", 2))
    assert "Spearman" in agree.layout.annotations[0].text and len(agree.data[0].x) == 4
    assert agree.layout.xaxis.type == "log"
    cb = cost_benefit_figure(cnn_result, top=5)
    assert len(cb.data) == 4 + 1 and len(cb.data[-1].x) == 5
    assert len(layer_scores_figure(cnn_result).data) == 2
