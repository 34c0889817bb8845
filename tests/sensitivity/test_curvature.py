"""Hutchinson against the exact Hessian, Fisher against per-sample gradients, HAWQ omega and the per-channel
tables."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.sensitivity.helpers import _tiny_mlp
from workbench.quant import QuantSpec, quantize_weight
from workbench.sensitivity import fisher_scores, hutchinson_trace


def test_omega_is_mean_trace_times_weight_error(cnn_task, cnn_result):
    layers = cnn_result.layers.set_index("layer")
    for layer in cnn_result.layer_names:
        w = cnn_task.model.get_submodule(layer).weight.detach()
        trace = layers.loc[layer, "hessian_trace"]
        assert layers.loc[layer, "hessian_trace_per_param"] == pytest.approx(trace / w.numel(), rel=1e-12)
        for gran in ("per_tensor", "per_channel"):
            for bits in (2, 4, 8):
                err = float(
                    (quantize_weight(w, QuantSpec(w_bits=bits, granularity=gran)) - w).double().pow(2).sum()
                )
                omega = cnn_result.matrix("omega", granularity=gran).loc[layer, bits]
                assert omega == pytest.approx(trace / w.numel() * err, rel=1e-9)


def test_channel_tables_add_up_to_layers(cnn_task, cnn_result):
    ch = cnn_result.channels
    layers = cnn_result.layers.set_index("layer")
    for metric, column in (("hessian_trace", "hessian_trace"), ("fisher", "fisher")):
        sums = ch[ch.metric == metric].groupby("layer")["value"].sum()
        for layer, total in sums.items():
            assert total == pytest.approx(layers.loc[layer, column], rel=1e-6, abs=1e-12)
    # per-channel omega at b bits: (channel trace / params per channel) * per-channel weight error
    w = cnn_task.model.fc2.weight.detach()
    err = (quantize_weight(w, QuantSpec(w_bits=4, granularity="per_channel")) - w).double().pow(2).sum(1)
    fc2 = ch[(ch.layer == "fc2")]
    trace_c = fc2[fc2.metric == "hessian_trace"].set_index("channel")["value"].to_numpy()
    omega4 = fc2[(fc2.metric == "omega") & (fc2.w_bits == 4)].set_index("channel")["value"].to_numpy()
    np.testing.assert_allclose(omega4, trace_c / w.shape[1] * err.numpy(), rtol=1e-9)


def _exact_hessian(model: nn.Module, name: str, batches) -> torch.Tensor:
    """Hessian of the mean loss over all samples w.r.t. ``<name>.weight`` (flattened), exactly."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    params = {k: v.detach() for k, v in model.named_parameters()}
    key = f"{name}.weight"

    def loss(w: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, {**params, key: w}, (x,))
        return F.cross_entropy(out, y)

    w = params[key]
    return torch.autograd.functional.hessian(loss, w).reshape(w.numel(), w.numel())


def test_hutchinson_matches_exact_hessian_trace():
    model, batches = _tiny_mlp()
    before = copy.deepcopy(model.state_dict())
    res = hutchinson_trace(model, ["0", "2"], batches, tol=0.0, max_iter=400, min_iter=400, seed=0)
    for name in ("0", "2"):
        h = _exact_hessian(model, name, batches)
        exact = float(torch.diagonal(h).sum())
        assert res.iterations[name] == 400 and not res.converged[name]
        assert abs(res.trace[name] - exact) / abs(exact) < 0.1, (name, res.trace[name], exact)
        assert res.channel_trace[name].sum() == pytest.approx(res.trace[name], rel=1e-9)
        rows = torch.diagonal(h).reshape(model.get_submodule(name).weight.shape[0], -1).sum(1).numpy()
        assert np.abs(res.channel_trace[name] - rows).sum() / np.abs(rows).sum() < 0.25
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


def test_hutchinson_stops_early_and_is_seeded():
    model, batches = _tiny_mlp()
    a = hutchinson_trace(model, ["0", "2"], batches, tol=0.05, max_iter=500, min_iter=8, seed=3)
    b = hutchinson_trace(model, ["0", "2"], batches, tol=0.05, max_iter=500, min_iter=8, seed=3)
    assert all(a.converged.values()) and all(8 <= n < 500 for n in a.iterations.values())
    assert a.trace == b.trace and a.iterations == b.iterations


def test_fisher_is_taken_before_inplace_ops():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    inplace = copy.deepcopy(base)
    inplace[1] = nn.ReLU(inplace=True)
    batches = [(torch.randn(32, 8), torch.randint(0, 4, (32,)))]
    a, _ = fisher_scores(base, ["0", "2"], batches)
    b, _ = fisher_scores(inplace, ["0", "2"], batches)
    assert a["0"] == pytest.approx(b["0"], rel=1e-6) and a["2"] == pytest.approx(b["2"], rel=1e-6)


def test_fisher_matches_per_sample_gradients():
    model, batches = _tiny_mlp()
    total, channels = fisher_scores(model, ["0", "2"], batches)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    norms = {"0": [], "2": []}
    for i in range(len(y)):
        h0 = model[0](x[i : i + 1])
        out = model[2](model[1](h0))
        g0, g2 = torch.autograd.grad(F.cross_entropy(out, y[i : i + 1]), [h0, out])
        norms["0"].append(g0.pow(2).squeeze(0))
        norms["2"].append(g2.pow(2).squeeze(0))
    for name, sq in norms.items():
        per_channel = torch.stack(sq).mean(0).double().numpy()
        assert total[name] == pytest.approx(per_channel.sum(), rel=1e-6)
        np.testing.assert_allclose(channels[name], per_channel, rtol=1e-6)
