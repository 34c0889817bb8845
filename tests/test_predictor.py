"""Tests for workbench.predictor on digits_cnn (4 layers): small plan datasets, a hand-made sensitivity."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from workbench import predictor as P
from workbench.predictor import (
    AccuracyPredictor,
    PlanDataset,
    PlanDatasetConfig,
    PlanFeaturizer,
    build_plan_dataset,
    evaluate_predictors,
    generate_plans,
    make_model,
    plan_id,
)
from workbench.quant import (
    PlanError,
    QuantPlan,
    QuantSpec,
    quantizable_layers,
    quantize_model,
    quantize_weight,
)
from workbench.sensitivity import TABLE_COLUMNS, SensitivityResult
from workbench.tasks import Task

BITS = (2, 3, 4, 6, 8)
SMALL = PlanDatasetConfig(n_random=20, n_stratified=16, seed=0)


# ------------------------------------------------------------------------------------------------ helpers


@torch.no_grad()
def fake_sensitivity(task: Task, *, metrics: tuple[str, ...] = ("output_mse", "omega")) -> SensitivityResult:
    """output_mse: MSE of the model output on the calibration data with one layer's weights quantized;
    omega: Hessian trace taken as 1.0 times the weight noise power ||W - Q(W)||^2."""
    x = torch.cat([b[0] for b in task.calib_loader])
    ref = task.model.eval()(x)
    names = quantizable_layers(task.model)
    rows = []
    for depth, name in enumerate(names):
        w = task.model.get_submodule(name).weight.detach()
        for b in BITS:
            spec = QuantSpec(w_bits=b, a_bits=32, granularity="per_channel")
            values = {}
            if "output_mse" in metrics:
                q = quantize_model(task.model, QuantPlan({name: spec}))
                values["output_mse"] = float((q(x) - ref).pow(2).mean())
            if "omega" in metrics:
                values["omega"] = float((quantize_weight(w, spec) - w).pow(2).sum())
            for metric, value in values.items():
                rows.append(
                    {
                        "layer": name,
                        "op_type": "x",
                        "depth": depth,
                        "metric": metric,
                        "kind": "weight",
                        "granularity": "per_channel",
                        "w_bits": b,
                        "a_bits": 32,
                        "value": value,
                    }  # fmt: skip
                )
    layers = pd.DataFrame({"layer": names, "depth": range(len(names)), "hessian_trace": 1.0})
    return SensitivityResult(table=pd.DataFrame(rows, columns=TABLE_COLUMNS), layers=layers)


def synthetic_dataset(featurizer: PlanFeaturizer, n: int, *, seed: int = 0) -> PlanDataset:
    """Random plans whose acc_drop is additive in per-layer log weight noise (plus a little noise)."""
    rng = np.random.default_rng(seed)
    names = list(featurizer.layer_names)
    w = np.asarray(BITS)[rng.integers(0, len(BITS), size=(n, len(names)))]
    w_idx, _ = featurizer.encode(w)
    log_noise = np.log(featurizer.w_tables["w_rel_noise"][np.arange(len(names))[None, :], w_idx])
    coef = np.linspace(0.5, 2.0, len(names))
    y = log_noise @ coef
    y = y - y.min() + rng.normal(0, 0.05, size=n)
    frame = pd.DataFrame({"plan_id": [f"p{i}" for i in range(n)], "source": "synthetic"})
    for i, name in enumerate(names):
        frame[f"w:{name}"] = w[:, i]
    for name in names:
        frame[f"a:{name}"] = 8
    frame["accuracy"] = 1 - y / 100
    frame["acc_drop"] = y
    frame["kl"] = frame["logit_mse"] = np.abs(y)
    plans = [
        QuantPlan({nm: QuantSpec(w_bits=int(b), a_bits=8) for nm, b in zip(names, row, strict=True)})
        for row in w
    ]
    return PlanDataset(frame=frame, plans=plans, layer_names=names)


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    cols = [c for c in a.columns if c != "eval_seconds"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Tiny models: one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def task(digits_cnn_task: Task) -> Task:
    return digits_cnn_task


@pytest.fixture(scope="module")
def sens(task: Task) -> SensitivityResult:
    return fake_sensitivity(task)


@pytest.fixture(scope="module")
def built(task: Task, sens: SensitivityResult, tmp_path_factory: pytest.TempPathFactory) -> PlanDataset:
    path = tmp_path_factory.mktemp("plans") / "plans.jsonl"
    return build_plan_dataset(task, sens, SMALL, path=path, progress=False)


@pytest.fixture(scope="module")
def featurizer(task: Task, sens: SensitivityResult) -> PlanFeaturizer:
    return PlanFeaturizer.fit(task, sens)


# ------------------------------------------------------------------------------------------------ plans


def test_generated_plans_are_deterministic_distinct_and_extend(task: Task, sens: SensitivityResult) -> None:
    names = quantizable_layers(task.model)
    a = generate_plans(names, SMALL, sensitivity=sens)
    b = generate_plans(names, SMALL, sensitivity=sens)
    assert [plan_id(p) for _, p in a] == [plan_id(p) for _, p in b]
    assert len({plan_id(p) for _, p in a}) == len(a) == 36
    sources = [s for s, _ in a]
    n_anchor = sources.count("anchor")
    assert 6 <= n_anchor <= 8  # an anchor equal to an earlier plan is dropped
    assert sources == ["random"] * 20 + ["anchor"] * n_anchor + ["stratified"] * (16 - n_anchor)
    bigger = generate_plans(names, PlanDatasetConfig(n_random=30, n_stratified=0), sensitivity=sens)
    assert [plan_id(p) for _, p in bigger[:20]] == [plan_id(p) for _, p in a[:20]]
    other_seed = generate_plans(names, PlanDatasetConfig(n_random=20, n_stratified=0, seed=1))
    assert [plan_id(p) for _, p in other_seed] != [plan_id(p) for _, p in a[:20]]
    no_sens = generate_plans(names, SMALL)
    assert {s for s, _ in no_sens} == {"random"}
    for _, plan in a:
        assert set(plan) == set(names)
        assert all(spec.w_bits in BITS and spec.a_bits == 8 for spec in plan.layers.values())


def test_stratified_plans_span_widest_to_narrowest(task: Task, sens: SensitivityResult) -> None:
    names = quantizable_layers(task.model)
    cfg = PlanDatasetConfig(n_random=0, n_stratified=60, a_bits=(4, 8))
    plans = generate_plans(names, cfg, sensitivity=sens)
    mean_bits = np.array([np.mean([p[n].w_bits for n in names]) for _, p in plans])
    assert mean_bits.max() >= 7.0 and mean_bits.min() <= 3.0
    assert np.histogram(mean_bits, bins=[2, 4, 6, 8.1])[0].min() >= 5  # every third of the range is populated
    a_bits = {p[n].a_bits for _, p in plans for n in names}
    assert a_bits == {4, 8}


def test_anchor_drops_spread_budgets_over_log_drop(task: Task, sens: SensitivityResult) -> None:
    fracs = [i / 7 for i in range(8)]
    xp, fp = P._drop_map(fracs, [-0.4, 0, 0, 0.1, 5, 50, 90, 87])
    np.testing.assert_allclose(xp, np.log1p([0, 0.1, 5, 50, 90]))  # running max, flat runs cut to the last
    np.testing.assert_allclose(fp, [fracs[2], fracs[3], fracs[4], fracs[5], fracs[6]])
    assert P._drop_map(fracs, [0, 0, 0, 0, 0, 0, 0, 0.3]) is None  # nothing to stratify
    names = quantizable_layers(task.model)
    seen: list[list[QuantPlan]] = []

    def measure(plans: list[QuantPlan]) -> list[float]:
        seen.append(plans)
        return [0, 0, 0, 0, 0, 0, 80, 90][: len(plans)]

    cfg = PlanDatasetConfig(n_random=0, n_stratified=30)
    plans = generate_plans(names, cfg, sensitivity=sens, measure=measure)
    assert len(seen) == 1 and [plan_id(p) for p in seen[0]] == [plan_id(p) for s, p in plans if s == "anchor"]
    wide = generate_plans(names, cfg, sensitivity=sens)
    narrow_bits = [np.mean([p[n].w_bits for n in names]) for s, p in plans if s == "stratified"]
    wide_bits = [np.mean([p[n].w_bits for n in names]) for s, p in wide if s == "stratified"]
    assert np.mean(narrow_bits) < np.mean(wide_bits)  # budgets moved to the lossy end of the path


def test_stratified_greedy_lowers_least_sensitive_layers_first(task: Task) -> None:
    names = quantizable_layers(task.model)
    sens_values = {"conv1": 1e3, "conv2": 1.0, "fc1": 1e-3, "fc2": 1e6}
    rows = [
        {
            "layer": n,
            "op_type": "x",
            "depth": d,
            "metric": "output_mse",
            "kind": "weight",
            "granularity": "per_channel",
            "w_bits": b,
            "a_bits": 32,
            "value": sens_values[n] * 4.0**-b,
        }  # fmt: skip
        for d, n in enumerate(names)
        for b in BITS
    ]
    fake = SensitivityResult(
        table=pd.DataFrame(rows), layers=pd.DataFrame({"layer": names, "depth": range(4)})
    )
    cfg = PlanDatasetConfig(n_random=0, n_stratified=15, stratify_noise=0.0)
    for _, plan in generate_plans(names, cfg, sensitivity=fake, weight_params=[1, 1, 1, 1]):
        w = [plan[n].w_bits for n in names]
        # equal sizes, no jitter: a more sensitive layer never has fewer bits than a less sensitive one
        assert w[3] >= w[0] >= w[1] >= w[2]


# ------------------------------------------------------------------------------------------------ dataset


def test_dataset_frame_is_exact(task: Task, built: PlanDataset) -> None:
    names = quantizable_layers(task.model)
    df = built.frame
    assert len(df) == len(built.plans) == 36 and built.layer_names == names
    assert list(df.columns[:2]) == ["plan_id", "source"]
    assert [f"w:{n}" for n in names] + [f"a:{n}" for n in names] == list(df.columns[2 : 2 + 2 * len(names)])
    fp32 = task.evaluate(task.model, "val")
    assert built.info["fp32_accuracy"] == pytest.approx(fp32, abs=1e-12)
    np.testing.assert_allclose(df["acc_drop"], 100 * (fp32 - df["accuracy"]), atol=1e-9)
    assert (df["kl"] >= 0).all() and (df["logit_mse"] >= 0).all()
    assert df["acc_drop"].max() > 5  # some plans really hurt
    # one plan measured independently: accuracy from task.evaluate, size from QuantPlan.summary
    i = int(df["acc_drop"].idxmax())
    plan = built.plans[i]
    assert plan_id(plan) == df.loc[i, "plan_id"]
    assert df.loc[i, "accuracy"] == pytest.approx(
        task.evaluate(quantize_model(task.model, plan, task.calib_loader), "val")
    )
    summary = plan.summary(task.model, task.example_input())
    assert df.loc[i, "size_bytes"] == summary.size_bytes and df.loc[i, "bops"] == summary.bops
    assert df.loc[i, "avg_weight_bits"] == pytest.approx(summary.avg_weight_bits)
    w, a = built.bits()
    assert w.shape == (36, 4) and (a == 8).all()
    assert [plan[n].w_bits for n in names] == list(w[i])


def test_resume_after_interruption_measures_only_the_rest(
    task: Task, sens: SensitivityResult, built: PlanDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "resume.jsonl"
    real = P.measure_plan
    calls: list[str] = []

    def flaky(task_, plan, reference, *, costs):
        if len(calls) == 7:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(plan_id(plan))
        return real(task_, plan, reference, costs=costs)

    monkeypatch.setattr(P, "measure_plan", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_plan_dataset(task, sens, SMALL, path=path, progress=False)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 7 and json.loads(lines[0])["type"] == "header"
    first = list(calls)

    calls.clear()
    monkeypatch.setattr(P, "measure_plan", lambda *a, **k: calls.append(plan_id(a[1])) or real(*a, **k))
    resumed = build_plan_dataset(task, sens, SMALL, path=path, progress=False)
    assert len(calls) == 36 - 7 and not set(calls) & set(first)
    assert resumed.info["n_cached"] == 7 and resumed.info["n_measured"] == 29
    _frames_equal(resumed.frame, built.frame)

    # a line cut short by a crash is skipped, and nothing is measured again
    with path.open("a") as f:
        f.write('{"type": "plan", "plan_id": "trunc')
    calls.clear()
    again = build_plan_dataset(task, sens, SMALL, path=path, progress=False)
    assert calls == [] and again.info["n_cached"] == 36
    _frames_equal(again.frame, built.frame)
    loaded = PlanDataset.load(path)
    assert len(loaded) == 36 and set(loaded.frame["plan_id"]) == set(built.frame["plan_id"])

    # measurements of another model are never reused from an explicit path
    other = copy.deepcopy(task)
    with torch.no_grad():
        other.model.fc2.bias.add_(0.01)
    with pytest.raises(ValueError, match="another model, data or quantization code"):
        build_plan_dataset(other, sens, SMALL, path=path, progress=False)


def test_default_cache_path_key_and_tracking(
    task: Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench import tracking

    logged: dict[str, object] = {}

    class Recorder:
        def log_metrics(self, metrics, step=None):
            logged["metrics"] = metrics

        def log_dataframe(self, df, name):
            logged[name] = df

    @contextlib.contextmanager
    def fake_start_run(stage, **kwargs):
        logged["stage"] = stage
        yield Recorder()

    monkeypatch.setattr(tracking, "start_run", fake_start_run)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    cfg = PlanDatasetConfig(n_random=3, n_stratified=0)
    ds = build_plan_dataset(task, None, cfg, progress=False, track=True)
    assert logged["stage"] == "predictor_dataset" and logged["metrics"]["n_measured"] == 3
    assert len(logged["plan_dataset"]) == 3
    assert Path(ds.info["path"]).parent == tmp_path.resolve() / "data" / "predictor"
    assert ds.info["key"] == P.dataset_key(task, cfg) and ds.info["key"].startswith("digits_cnn-")
    assert P.dataset_key(task, PlanDatasetConfig(split="test")) != ds.info["key"]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="w_bits"):
        PlanDatasetConfig(w_bits=(7,))
    with pytest.raises(ValueError, match="granularity"):
        PlanDatasetConfig(granularity="per_group")
    with pytest.raises(ValueError, match="n_random"):
        PlanDatasetConfig(n_random=-1)
    with pytest.raises(ValueError, match="stratify_metric"):
        PlanDatasetConfig(stratify_metric="nope")


# ------------------------------------------------------------------------------------------------ features


def test_featurizer_plans_and_arrays_agree(featurizer: PlanFeaturizer, built: PlanDataset) -> None:
    X = featurizer.transform(built)
    assert X.shape == (36, len(featurizer.feature_names)) and np.isfinite(X).all()
    np.testing.assert_array_equal(featurizer.transform(built.plans), X)
    np.testing.assert_array_equal(featurizer.transform(built.bit_array()), X)
    w, _ = built.bits()
    np.testing.assert_array_equal(featurizer.transform(w), X)  # activations default to 8 bits
    np.testing.assert_array_equal(featurizer.transform(built.plans[3]), X[3:4])
    names = featurizer.feature_names
    assert {
        "log_sens_omega:conv1",
        "log_sens_output_mse:fc2",
        "sum_sens_output_mse",
        "avg_weight_bits",
    } <= set(names)
    # omega at the plan's bits, gathered per layer, is the table lookup
    col = names.index("log_sens_omega:fc1")
    j = featurizer.bits.index(int(w[5, 2]))
    table = featurizer.w_tables["sens_omega"]
    assert X[5, col] == pytest.approx(math.log(table[2, j] + P._log_floor(table)))
    assert featurizer.transform(np.array([[8, 8, 8, 8]]))[0, names.index("avg_weight_bits")] == 8.0


def test_featurizer_rejects_bad_plans(featurizer: PlanFeaturizer) -> None:
    with pytest.raises(PlanError, match="unknown layer"):
        featurizer.transform([QuantPlan({"nope": QuantSpec(w_bits=4)})])
    with pytest.raises(ValueError, match="expected"):
        featurizer.transform(np.full((3, 5), 8))
    with pytest.raises(ValueError, match=r"\[7\]"):
        featurizer.transform(np.array([[8, 7, 8, 8]]))
    partial = featurizer.transform(QuantPlan({"conv1": QuantSpec(w_bits=4)}))  # other layers stay float32
    np.testing.assert_array_equal(
        partial, featurizer.transform(np.array([[[4, 8], [32, 32], [32, 32], [32, 32]]]))
    )


def test_featurizer_works_with_partial_or_no_sensitivity(task: Task, built: PlanDataset) -> None:
    bare = PlanFeaturizer.fit(task)
    only_mse = PlanFeaturizer.fit(task, fake_sensitivity(task, metrics=("output_mse",)))
    assert not any("sens_" in n for n in bare.feature_names)
    assert any("sens_output_mse" in n for n in only_mse.feature_names)
    assert "trace_noise" in only_mse.w_tables  # Hessian trace x weight noise stands in for the missing omega
    for f in (bare, only_mse):
        X = f.transform(built)
        assert X.shape[0] == 36 and np.isfinite(X).all()


def test_featurizer_uses_profile_input_variance(task: Task) -> None:
    names = quantizable_layers(task.model)
    profile = pd.DataFrame({"layer": names, "input_var": [1.0, 2.0, 4.0, 8.0]})
    f = PlanFeaturizer.fit(task, profile=profile)
    np.testing.assert_allclose(f.a_tables["act_noise"][:, f.bits.index(8)], np.array([1, 2, 4, 8]) * 2.0**-16)
    with pytest.raises(ValueError, match="input_var"):
        PlanFeaturizer.fit(task, profile=profile.drop(columns="input_var"))


# ------------------------------------------------------------------------------------------------ models


def test_ridge_recovers_additive_target(featurizer: PlanFeaturizer) -> None:
    train = synthetic_dataset(featurizer, 120, seed=1)
    test = synthetic_dataset(featurizer, 200, seed=2)
    pred = AccuracyPredictor.fit(train, featurizer, model="ridge", transform="none")
    rho = scipy.stats.spearmanr(test.target(), pred.predict(test)).statistic
    assert rho > 0.95


@pytest.mark.parametrize("name", ["ridge", "mlp", "gbt", "ensemble"])
def test_every_model_fits_and_ranks(featurizer: PlanFeaturizer, name: str) -> None:
    train = synthetic_dataset(featurizer, 120, seed=1)
    test = synthetic_dataset(featurizer, 100, seed=2)
    kwargs = {"n_members": 3} if name == "ensemble" else {}
    pred = AccuracyPredictor.fit(train, featurizer, model=name, seed=0, **kwargs)
    p = pred.predict(test)
    assert p.shape == (100,) and np.isfinite(p).all()
    assert scipy.stats.spearmanr(test.target(), p).statistic > 0.8
    assert pred.plans_per_second(n=2000, repeats=2) > 0


def test_models_are_seeded(featurizer: PlanFeaturizer) -> None:
    X = featurizer.transform(synthetic_dataset(featurizer, 50))
    y = np.arange(50, dtype=float)
    a = make_model("mlp", seed=3, steps=50).fit(X, y).predict(X)
    b = make_model("mlp", seed=3, steps=50).fit(X, y).predict(X)
    c = make_model("mlp", seed=4, steps=50).fit(X, y).predict(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_ensemble_uncertainty_and_save_load(
    featurizer: PlanFeaturizer, built: PlanDataset, tmp_path: Path
) -> None:
    pred = AccuracyPredictor.fit(built, featurizer, model="ensemble", n_members=4)
    mean, std = pred.predict_with_uncertainty(built)
    np.testing.assert_allclose(mean, pred.predict(built))
    assert std.shape == (36,) and (std >= 0).all() and std.max() > 0
    path = pred.save(tmp_path / "pred.joblib")
    with pytest.raises(FileExistsError):
        pred.save(path)
    back = AccuracyPredictor.load(path)
    edited = tmp_path / "edited.joblib"  # one byte of the signed pickle changed: refused before unpickling
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 1
    edited.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="fails its signature check"):
        AccuracyPredictor.load(edited)
    arr = np.random.default_rng(0).choice(BITS, size=(500, 4))
    np.testing.assert_array_equal(back.predict(arr), pred.predict(arr))
    np.testing.assert_array_equal(
        back.predict_with_uncertainty(arr)[1], pred.predict_with_uncertainty(arr)[1]
    )
    gbt = AccuracyPredictor.fit(built, featurizer, model="gbt")
    with pytest.raises(ValueError, match="ensemble"):
        gbt.predict_with_uncertainty(built)


def test_bad_inputs_name_counts_and_choices(featurizer: PlanFeaturizer, built: PlanDataset) -> None:
    with pytest.raises(ValueError, match=r"at least 10 .* got 6"):
        AccuracyPredictor.fit(built.subset(range(6)), featurizer)
    with pytest.raises(ValueError, match=r"at least 13 plans .* got 12"):
        evaluate_predictors(built.subset(range(12)), featurizer, models=("ridge",), k=5)
    with pytest.raises(ValueError, match="ridge"):
        AccuracyPredictor.fit(built, featurizer, model="forest")
    with pytest.raises(ValueError, match="choose from"):
        evaluate_predictors(built, featurizer, models=("forest",))
    with pytest.raises(ValueError, match="transform"):
        AccuracyPredictor.fit(built, featurizer, transform="sqrt")
    with pytest.raises(FileNotFoundError):
        AccuracyPredictor.load("/nonexistent/pred.joblib")


# ------------------------------------------------------------------------------------------------ evaluation


def test_evaluate_predictors_kfold(featurizer: PlanFeaturizer, built: PlanDataset) -> None:
    table = evaluate_predictors(built, featurizer, models=("ridge", "gbt"), k=4, throughput_n=1000)
    assert list(table["model"]) == ["ridge", "gbt"]
    assert (table["n_train"] == 27).all() and (table["n_test"] == 9).all()
    uneven = evaluate_predictors(
        built.subset(range(35)), featurizer, models=("ridge",), k=3, throughput_n=100
    )
    assert uneven.loc[0, "n_train"] + uneven.loc[0, "n_test"] == 35 and uneven.loc[0, "n_test"] == 12
    assert table[["spearman", "kendall", "mae", "plans_per_second"]].notna().all().all()
    assert (table["spearman"] > 0.3).all()  # real measured plans, tiny dataset: ranks well above chance
    folds = table.attrs["folds"]
    assert len(folds) == 8 and set(folds["fold"]) == {0, 1, 2, 3}
    preds = table.attrs["predictions"]
    assert len(preds) == 72 and set(preds[preds.model == "gbt"]["plan_id"]) == set(built.frame["plan_id"])


def test_evaluate_predictors_synthetic_is_accurate(featurizer: PlanFeaturizer) -> None:
    table = evaluate_predictors(
        synthetic_dataset(featurizer, 100), featurizer, models=("ridge",), k=5, transform="none"
    )
    assert table.loc[0, "spearman"] > 0.95 and table.loc[0, "n_test"] == 20


def test_evaluate_predictors_logs_through_tracking(
    featurizer: PlanFeaturizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calls into workbench.tracking (a real MLflow store is exercised in test_tracking.py)."""
    from workbench import tracking

    logged: dict[str, object] = {"metrics": {}, "tables": []}

    class Recorder:
        def log_metrics(self, metrics, step=None):
            logged["metrics"].update(metrics)

        def log_dataframe(self, df, name):
            logged["tables"].append(name)

    @contextlib.contextmanager
    def fake_start_run(stage, **kwargs):
        logged["stage"], logged["params"] = stage, kwargs.get("params")
        yield Recorder()

    monkeypatch.setattr(tracking, "start_run", fake_start_run)
    table = evaluate_predictors(
        synthetic_dataset(featurizer, 40), featurizer, models=("ridge",), k=4, track=True
    )
    assert logged["stage"] == "predictor" and logged["params"]["k"] == 4
    assert logged["metrics"]["ridge.spearman"] == table.loc[0, "spearman"]
    assert logged["tables"] == ["predictor_eval", "predictor_folds"]
