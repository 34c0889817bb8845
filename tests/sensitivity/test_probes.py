"""Probes: output error against bits and granularity, probes against quantize_model with BatchNorm folding,
and reuse of upstream activations."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tests.sensitivity.helpers import _bn_task, _cheap
from workbench.quant import QuantPlan, QuantSpec, quantize_model
from workbench.sensitivity import SensitivityContext, analyze_sensitivity


def test_output_error_falls_with_bits(cnn_result):
    for gran in ("per_tensor", "per_channel"):
        mse = cnn_result.matrix("output_mse", granularity=gran)
        assert (mse[2] >= mse[4]).all() and (mse[4] >= mse[8]).all(), mse
        assert (mse[2] > 10 * mse[8]).all()
        kl = cnn_result.matrix("output_kl", granularity=gran)
        assert (kl[2] > kl[8]).all()
    act = cnn_result.matrix("output_mse", kind="activation")
    assert (act[4] >= act[6]).all() and (act[6] >= act[8]).all()
    drop = cnn_result.matrix("acc_drop", granularity="per_tensor")
    assert drop[2].max() > 1.0  # some layer loses more than a point at 2 bits
    assert drop[8].abs().max() <= 0.5  # 8 bits: at most one validation sample flips


def test_per_channel_beats_per_tensor_in_aggregate(cnn_result):
    for metric in ("output_mse", "omega"):
        pt = cnn_result.matrix(metric, granularity="per_tensor").to_numpy().sum()
        pc = cnn_result.matrix(metric, granularity="per_channel").to_numpy().sum()
        assert pc < pt, metric


def test_probes_match_quantize_model_with_bn_folding():
    task = _bn_task()
    result = analyze_sensitivity(task, _cheap(metrics=("output_mse", "acc_drop")), cache=False)
    assert result.info["folded_bn"] == [["conv1", "bn1"], ["conv2", "bn2"]]
    calib = list(task.calib_loader)[:2]
    x = torch.cat([b[0] for b in calib])
    with torch.no_grad():
        ref = task.model(x)
    cases = [
        ("conv2", QuantSpec(w_bits=4, a_bits=32, granularity="per_tensor"), "weight", "per_tensor", 4),
        ("conv1", QuantSpec(w_bits=2, a_bits=32, granularity="per_channel"), "weight", "per_channel", 2),
        ("fc", QuantSpec(w_bits=32, a_bits=4, granularity="per_tensor"), "activation", "per_tensor", 4),
    ]
    for layer, spec, kind, gran, bits in cases:
        qmodel = quantize_model(task.model, QuantPlan({layer: spec}), calib)
        with torch.no_grad():
            expected = float((qmodel(x) - ref).double().pow(2).mean())
        got = result.matrix("output_mse", kind=kind, granularity=gran).loc[layer, bits]
        assert got == pytest.approx(expected, rel=1e-3), (layer, spec)


def test_graph_reuse_gives_the_same_numbers():
    """Probes that reuse upstream activations (torch.fx) equal probes that run the whole model; a model with an
    in-place ReLU falls back to whole-model probes."""
    task = _bn_task()
    fast = analyze_sensitivity(task, _cheap(metrics=("output_mse", "output_kl")), cache=False)
    slow = analyze_sensitivity(
        task, _cheap(metrics=("output_mse", "output_kl"), probe_cache_mb=0), cache=False
    )
    pd.testing.assert_frame_equal(fast.table, slow.table, rtol=1e-6)
    chunked = analyze_sensitivity(  # one probe's outputs per chunk: a streamed pass per probe
        task, _cheap(metrics=("output_mse", "output_kl"), probe_cache_mb=1e-6), cache=False
    )
    pd.testing.assert_frame_equal(fast.table, chunked.table, rtol=0, atol=0)
    inplace_task = _bn_task(inplace=True)
    ctx = SensitivityContext(inplace_task, _cheap(), calib=list(inplace_task.calib_loader)[:2])
    assert not hasattr(ctx.probe_model, "graph")  # not traced: in-place ops would corrupt cached values
    inplace = analyze_sensitivity(inplace_task, _cheap(metrics=("output_mse", "output_kl")), cache=False)
    pd.testing.assert_frame_equal(fast.table, inplace.table, rtol=1e-6)


def test_progress_ticks_per_probe_and_batch():
    """Streamed probes report progress as they go (a probe on a batch at a time), summing to the probe count,
    like the whole-model path (a probe at a time)."""
    task = _bn_task()
    for cache_mb, per_call in ((512.0, 0.5), (0, 1.0)):  # streamed over 2 calibration batches; whole model
        ctx = SensitivityContext(task, _cheap(probe_cache_mb=cache_mb), calib=list(task.calib_loader)[:2])
        probes = [p for p in ctx.probes() if p.kind == "weight"]
        ticks: list[float] = []
        ctx._probe_outputs(probes, ["calib"], {}, tick=ticks.append)
        assert ticks == [per_call] * int(len(probes) / per_call)
