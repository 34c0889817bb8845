"""Sensitivity analysis: probes against quantize_model, Hutchinson against the exact Hessian, Fisher against
per-sample gradients, HAWQ omega, cache, determinism, user metrics, validation, rank agreement and figures."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench.quant import QuantPlan, QuantSpec, quantize_model, quantize_weight
from workbench.sensitivity import (
    CHANNEL_COLUMNS,
    COST_BENEFIT_COLUMNS,
    LAYER_COLUMNS,
    TABLE_COLUMNS,
    OutputMetric,
    SensitivityConfig,
    SensitivityContext,
    SensitivityMetric,
    SensitivityResult,
    analyze_sensitivity,
    available_metrics,
    fisher_scores,
    hutchinson_trace,
    rank_agreement,
    register_metric,
    unregister_metric,
)
from workbench.tasks import Task, task_from_model

QUIET = {"progress": False, "num_threads": 1}  # one thread: far faster on a shared, busy CPU


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Tiny models: one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def cnn_task(digits_cnn_task: Task) -> Task:
    return digits_cnn_task


@pytest.fixture(scope="module")
def cnn_result(cnn_task: Task) -> SensitivityResult:
    """The default analysis of digits_cnn (every metric, both granularities, activations)."""
    return analyze_sensitivity(cnn_task, SensitivityConfig(**QUIET), cache=False)


class ResidualBNNet(nn.Module):
    """Tiny conv net with BatchNorm (folded by the probes) and a residual add (a non-chain graph)."""

    def __init__(self, *, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)) + h)
        return self.fc(torch.flatten(self.pool(h), 1))


def _bn_task(*, inplace: bool = False, n_calib: int = 64, batch_size: int = 16) -> Task:
    torch.manual_seed(0)
    model = ResidualBNNet(inplace=inplace)
    with torch.no_grad():  # non-trivial BatchNorm statistics so that folding matters
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    model.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_calib + 48, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model mostly gets right, so accuracy drops are meaningful
    calib = DataLoader(TensorDataset(x[:n_calib], y[:n_calib]), batch_size=batch_size)
    val = DataLoader(TensorDataset(x[n_calib:], y[n_calib:]), batch_size=batch_size)
    return task_from_model(model, calib_loader=calib, val_loader=val, test_loader=val, name="bn_net")


def _cheap(**kw) -> SensitivityConfig:
    base = {"w_bits": (2, 4, 8), "a_bits": (4,), "hutchinson_max_iter": 20, **QUIET}
    return SensitivityConfig(**{**base, **kw})


# --------------------------------------------------------------------------------------------- tables


def test_table_schema_and_coverage(cnn_task, cnn_result):
    r, cfg = cnn_result, SensitivityConfig()
    assert list(r.table.columns) == TABLE_COLUMNS
    assert list(r.layers.columns[: len(LAYER_COLUMNS)]) == LAYER_COLUMNS
    assert list(r.channels.columns) == CHANNEL_COLUMNS
    assert list(r.cost_benefit.columns) == COST_BENEFIT_COLUMNS
    assert r.layer_names == ["conv1", "conv2", "fc1", "fc2"]
    assert list(r.layers["depth"]) == [0, 1, 2, 3]
    t = r.table
    n_layers = len(r.layer_names)
    for metric in ("output_mse", "output_kl", "acc_drop", "omega"):
        w = t[(t.metric == metric) & (t.kind == "weight")]
        assert len(w) == n_layers * len(cfg.w_bits) * len(cfg.granularities), metric
        assert set(w["a_bits"]) == {32}
    for metric in ("output_mse", "output_kl", "acc_drop"):
        a = t[(t.metric == metric) & (t.kind == "activation")]
        assert (
            len(a) == n_layers * len(cfg.a_bits)
            and set(a["w_bits"]) == {32}
            and set(a["granularity"]) == {"per_tensor"}
        )
    for metric in ("hessian_trace", "fisher"):
        rows = t[t.metric == metric]
        assert len(rows) == n_layers and set(rows["kind"]) == {"layer"}
    assert r.layers["hutchinson_iters"].between(cfg.hutchinson_min_iter, cfg.hutchinson_max_iter).all()
    assert (r.layers["hessian_trace"] > 0).all() and (r.layers["fisher"] > 0).all()
    counts = r.channels[r.channels.metric == "omega"].groupby("layer").size()
    out_ch = r.layers.set_index("layer")["out_channels"]
    assert (counts == out_ch[counts.index] * len(cfg.w_bits)).all()
    assert r.matrix("output_mse").shape == (n_layers, len(cfg.w_bits))
    assert r.info["source"] == "computed" and r.info["calib_samples"] == 128
    assert 0.9 < r.info["fp32_val_accuracy"] <= 1.0


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
    inplace_task = _bn_task(inplace=True)
    ctx = SensitivityContext(inplace_task, _cheap(), calib=list(inplace_task.calib_loader)[:2])
    assert not hasattr(ctx.probe_model, "graph")  # not traced: in-place ops would corrupt cached values
    inplace = analyze_sensitivity(inplace_task, _cheap(metrics=("output_mse", "output_kl")), cache=False)
    pd.testing.assert_frame_equal(fast.table, inplace.table, rtol=1e-6)


# --------------------------------------------------------------------------------------------- estimators


def _tiny_mlp() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(48, 5, generator=g)
    y = torch.randint(0, 4, (48,), generator=g)
    return model, [(x[:24], y[:24]), (x[24:], y[24:])]


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


# --------------------------------------------------------------------------------------------- cache etc.


def test_cache_hit_identical_and_model_untouched(cnn_task, tmp_path):
    model = cnn_task.model
    before = copy.deepcopy(model.state_dict())
    model.train()  # the training flag must come back as it was
    try:
        threads = torch.get_num_threads()
        cfg = _cheap(metrics=("output_mse", "hessian", "fisher"), a_bits=())
        first = analyze_sensitivity(cnn_task, cfg, cache_dir=tmp_path)
        assert torch.get_num_threads() == threads
        # speed knobs are not part of the key
        second = analyze_sensitivity(
            cnn_task, replace(cfg, num_threads=None, progress=True), cache_dir=tmp_path
        )
        assert model.training
    finally:
        model.eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert first.info["source"] == "computed" and second.info["source"] == "cache"
    assert second.info["cache_path"] == first.info["cache_path"] and len(list(tmp_path.glob("*.json"))) == 1
    for attr in ("table", "layers", "channels", "cost_benefit"):
        pd.testing.assert_frame_equal(getattr(first, attr), getattr(second, attr))
    # another config (seed) is another key; the same config without the cache recomputes identically (seeded)
    other = analyze_sensitivity(
        cnn_task, _cheap(metrics=("output_mse",), a_bits=(), seed=1), cache_dir=tmp_path
    )
    assert other.info["source"] == "computed" and len(list(tmp_path.glob("*.json"))) == 2
    again = analyze_sensitivity(cnn_task, cfg, cache=False)
    pd.testing.assert_frame_equal(first.table, again.table)


def test_save_load_roundtrip(cnn_result, tmp_path):
    path = cnn_result.save(tmp_path / "sens.pkl")
    back = SensitivityResult.load(path)
    for attr in ("table", "layers", "channels", "cost_benefit"):
        pd.testing.assert_frame_equal(getattr(cnn_result, attr), getattr(back, attr))
    assert back.info["timings_s"] == cnn_result.info["timings_s"]
    with pytest.raises(FileExistsError):
        cnn_result.save(path)
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04K\x01.")  # a pickled int
    with pytest.raises(ValueError, match="not a sensitivity result"):
        SensitivityResult.load(tmp_path / "junk.pkl")


@pytest.mark.slow  # creating an MLflow store costs seconds
def test_track_logs_tables(cnn_task, tmp_path, monkeypatch):
    from workbench import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("WORKBENCH_TRACKING", raising=False)
    r = analyze_sensitivity(cnn_task, _cheap(metrics=("output_mse",), a_bits=()), cache=False, track=True)
    runs = tracking.runs_frame(stage="sensitivity")
    assert r.info["mlflow_run_id"] in set(runs["run_id"])
    art = tmp_path / "workbench"
    assert any(p.name == "sensitivity.csv" for p in art.rglob("*.csv"))
    assert any(p.name == "cost_benefit.csv" for p in art.rglob("*.csv"))


# --------------------------------------------------------------------------------------------- metrics


def test_user_metrics_register_and_appear(cnn_task):
    class MaxAbsLogitError(OutputMetric):
        name = "max_abs_logit"

        def score(self, reference, quantized, targets):
            return float((quantized - reference).abs().max())

    class WeightNorm(SensitivityMetric):
        name = "weight_norm"
        kind = "layer"

        def compute(self, ctx):
            from workbench.sensitivity import MetricOutput

            out = MetricOutput()
            for info in ctx.layers:
                out.add(info.name, float(ctx.weight(info.name).norm()), metric=self.name)
            return out

    register_metric(MaxAbsLogitError)
    register_metric(WeightNorm)
    try:
        register_metric(MaxAbsLogitError)  # re-running the defining cell is fine
        assert {"max_abs_logit", "weight_norm"} <= set(available_metrics())

        class Impostor(OutputMetric):
            name = "max_abs_logit"

        with pytest.raises(ValueError, match="taken"):
            register_metric(Impostor)
        cfg = _cheap(metrics=("output_mse", "max_abs_logit", "weight_norm"), cost_metric="max_abs_logit")
        r = analyze_sensitivity(cnn_task, cfg, cache=False)
        assert {"output_mse", "max_abs_logit", "weight_norm"} == set(r.metrics())
        m = r.matrix("max_abs_logit")
        assert (m[2] > m[8]).all()
        mse = r.matrix("output_mse")
        assert (m.pow(2) >= mse).all().all()  # the max squared error bounds the mean one
        norms = r.layer_values("weight_norm")
        assert norms["fc1"] == pytest.approx(float(cnn_task.model.fc1.weight.detach().norm()))
        assert set(r.cost_benefit["metric"]) == {"max_abs_logit"}
    finally:
        unregister_metric("max_abs_logit")
        unregister_metric("weight_norm")
    assert "max_abs_logit" not in available_metrics()
    with pytest.raises(ValueError, match="available"):
        SensitivityConfig(metrics=("max_abs_logit",))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"w_bits": (4, 7)}, r"unsupported bits \[7\]; valid bits: \[2, 3, 4, 5, 6, 8\]"),
        ({"w_bits": (16,)}, "valid bits"),
        ({"w_bits": ()}, "must not be empty"),
        ({"a_bits": (1,)}, "valid bits"),
        ({"granularities": ("per_group",)}, "choose from"),
        ({"metrics": ("output_mse", "nope")}, "unknown sensitivity metric 'nope'; available"),
        ({"metrics": ()}, "must not be empty"),
        ({"calib_batches": 0}, "calib_batches must be an int >= 1"),
        ({"hutchinson_min_iter": 50, "hutchinson_max_iter": 10}, "exceeds"),
        ({"hutchinson_tol": -1.0}, "hutchinson_tol"),
        ({"reference_bits": 7}, "reference_bits"),
        ({"cost_metric": "fisher"}, "per-bit weight metric"),
        ({"metrics": ("fisher",)}, "cost_metric='output_mse'"),
        ({"probe_cache_mb": -1}, "probe_cache_mb"),
        ({"num_threads": 0}, "num_threads must be an int >= 1"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SensitivityConfig(**kwargs)


def test_config_normalises():
    cfg = SensitivityConfig(w_bits=[8, 2, 4, 4], metrics=["fisher"], cost_metric=None)
    assert cfg.w_bits == (2, 4, 8) and cfg.metrics == ("fisher",)
    assert SensitivityConfig(metrics=("hessian",), cost_metric="omega").per_bit_weight_metrics() == ["omega"]


def test_bad_tasks_and_data():
    model, batches = _tiny_mlp()
    one = [(batches[0][0][:1], batches[0][1][:1])]

    def task(calib) -> Task:
        return Task(
            name="t",
            model=model,
            calib_loader=calib,
            val_loader=batches,
            test_loader=batches,
            input_shape=(5,),
        )

    cfg = SensitivityConfig(metrics=("output_mse",), **QUIET)
    with pytest.raises(ValueError, match="at least 2 labelled samples, got 1"):
        analyze_sensitivity(task(one), cfg, cache=False)
    with pytest.raises(ValueError, match="at least 2 labelled samples, got 0"):
        analyze_sensitivity(task([]), cfg, cache=False)
    with pytest.raises(ValueError, match="without targets"):  # inputs alone: label-free metrics only
        labels_needed = replace(cfg, metrics=("output_mse", "fisher"))
        analyze_sensitivity(task([batches[0][0]]), labels_needed, cache=False)
    assert not analyze_sensitivity(task([batches[0][0]]), cfg, cache=False).table.empty
    with pytest.raises(ValueError, match="SensitivityConfig"):
        analyze_sensitivity(task(batches), {"w_bits": (4,)}, cache=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no quantizable layers"):
        analyze_sensitivity(
            Task(name="t", model=nn.Tanh(), calib_loader=batches, val_loader=batches, test_loader=batches,
                 input_shape=(5,)),
            cfg,
            cache=False,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------- views


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


def test_sensitivity_imports_no_ui_or_mlflow():
    import ast
    import inspect as _inspect

    import workbench.sensitivity as mod

    tree = ast.parse(_inspect.getsource(mod))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert not imported & {"plotly", "ipywidgets", "mlflow"}
