"""run_search end to end on digits_cnn: budgets, caching, constraints, modes, storage, resume, tracking."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from workbench.quant import QuantPlan
from workbench.search import SearchConfig, SearchError, SpaceConfig, run_search
from workbench.search.objectives import pareto_mask


@pytest.fixture(autouse=True)
def _tmp_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))


class LookupPredictor:
    """Predicted drop (pp) = sum over layers of a per-bit penalty: a stand-in with the predictor's interface."""

    PENALTY = {2: 3.0, 3: 1.0, 4: 0.4, 6: 0.1, 8: 0.0, 16: 0.0, 32: 0.0}

    def __init__(self) -> None:
        self.info: dict = {}
        self.model_name = "lookup"
        self.calls = 0

    def predict(self, plans):
        self.calls += len(plans)
        return np.array([sum(self.PENALTY[s.w_bits] for _, s in p.items()) for p in plans])


def _cfg(**kw):
    base = dict(
        budget=5, storage=":memory:", track=False, progress=False, space=SpaceConfig(w_bits=(2, 4, 8))
    )
    base.update(kw)
    return SearchConfig(**base)


def test_tpe_budget_counts_real_evaluations(digits_cnn_task, one_torch_thread):
    r = run_search(digits_cnn_task, _cfg(strategy="tpe", budget=6))
    assert r.real_evaluations == 6 == int(r.trials["real_eval"].sum())
    assert len(r.trials) >= 6
    # a plan measured twice is a cache hit and costs nothing
    dup = r.trials[r.trials.duplicated("plan_key", keep="first")]
    assert (dup["real_eval"] == 0).all() and dup["cache_hit"].all()
    # the front is non-dominated in (accuracy up, weight bytes down, the tie-breaking secondary score up) and
    # re-measured on the test split
    vals = r.front[["accuracy", "weight_bytes", "secondary"]].to_numpy(dtype=float)
    assert pareto_mask(vals, ["maximize", "minimize", "maximize"]).all()
    assert r.front["test_accuracy"].between(0, 1).all()
    assert 0.0 <= r.hypervolume <= 1.0
    d = r.to_dict()
    assert {"front", "hypervolume", "real_evaluations"} <= set(d)
    assert QuantPlan.from_dict(d["front"][0]["plan"])


def test_uniform_and_constraints(digits_cnn_task, one_torch_thread):
    r = run_search(digits_cnn_task, _cfg(strategy="uniform", max_weight_fraction=0.2))
    labels = list(r.trials["label"])
    assert any("w2" in lab for lab in labels) and any("w8" in lab for lab in labels)
    w8 = r.trials[r.trials["label"].str.contains("w8")].iloc[0]
    assert not w8["feasible"] and w8["accuracy_source"] == "skipped_over_budget" and w8["real_eval"] == 0
    assert (r.front["weight_bytes"] <= 0.2 * r.fp32_weight_bytes).all()
    with pytest.raises(SearchError, match="smallest plan"):
        run_search(digits_cnn_task, _cfg(max_weight_fraction=0.01))


def test_avg_weight_bits_budget(digits_cnn_task, one_torch_thread):
    """An element-weighted average-bits budget: plans above it are skipped, the front stays within it, 5-bit
    choices are open to the space, and a budget below the space's smallest plan is refused."""
    space = SpaceConfig(w_bits=(3, 5, 8), a_bits=(32,))
    r = run_search(
        digits_cnn_task, _cfg(strategy="tpe", budget=6, space=space, max_avg_weight_bits=5.0, seed=1)
    )
    over = r.trials[r.trials["avg_weight_bits"] > 5.0 + 1e-9]
    assert (~over["feasible"]).all() and (over["accuracy_source"] == "skipped_over_budget").all()
    assert (r.front["avg_weight_bits"] <= 5.0 + 1e-9).all() and not r.front.empty
    assert (r.trials["avg_act_bits"] == 32).all()  # weight-only: activations stay float
    best = r.best(max_avg_weight_bits=4.0) if (r.front["avg_weight_bits"] <= 4.0).any() else r.best()
    assert best["avg_weight_bits"] <= 5.0 + 1e-9
    uniform = run_search(digits_cnn_task, _cfg(strategy="uniform", space=space, max_avg_weight_bits=5.0))
    feasible = uniform.trials[uniform.trials["feasible"]]
    assert sorted(feasible["avg_weight_bits"].round(6)) == [3.0, 5.0]  # uniform w8 is over the budget
    with pytest.raises(SearchError, match="smallest plan averages 3.000"):
        run_search(digits_cnn_task, _cfg(space=space, max_avg_weight_bits=2.5))
    with pytest.raises(SearchError, match="max_avg_weight_bits"):
        _cfg(max_avg_weight_bits=0.5)


def test_predicted_and_multifidelity(digits_cnn_task, one_torch_thread):
    pred = LookupPredictor()
    r = run_search(digits_cnn_task, _cfg(strategy="nsga2", accuracy="predicted", budget=12), predictor=pred)
    assert r.real_evaluations == 0 and len(r.trials) == 12
    assert (r.trials["accuracy_source"] == "predicted").all()
    top = r.trials.sort_values("accuracy").iloc[-1]
    assert top["accuracy"] == pytest.approx(
        r.fp32_accuracy
        - sum(LookupPredictor.PENALTY[s["w_bits"]] for s in json.loads(top["plan"]).values()) / 100
    )
    m = run_search(
        digits_cnn_task,
        _cfg(strategy="tpe", accuracy="multifidelity", budget=4, screen_trials=40),
        predictor=pred,
    )
    assert m.real_evaluations <= 4 and len(m.trials) == 4
    assert (m.front["accuracy_source"] == "measured").all()
    with pytest.raises(SearchError, match="only knows quantization"):
        run_search(digits_cnn_task, _cfg(accuracy="predicted", space=SpaceConfig(methods=("quantize", "prune"))),
                   predictor=pred)  # fmt: skip


def test_sqlite_storage_refuses_reuse_and_resumes(digits_cnn_task, one_torch_thread, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    first = run_search(digits_cnn_task, _cfg(strategy="random", budget=3, storage=url, study_name="s"))
    assert first.real_evaluations == 3
    with pytest.raises(SearchError, match="already exists"):
        run_search(digits_cnn_task, _cfg(strategy="random", budget=3, storage=url, study_name="s"))
    again = run_search(
        digits_cnn_task, _cfg(strategy="random", budget=5, storage=url, study_name="s", resume=True)
    )
    assert again.real_evaluations == 5
    kept = again.trials.set_index("trial").loc[first.trials["trial"], "plan_key"]
    assert list(kept) == list(first.trials["plan_key"])
    with pytest.raises(SearchError, match="does not exist"):
        run_search(digits_cnn_task, _cfg(storage=url, study_name="missing", resume=True))
    # bad requests leave no study behind
    with pytest.raises(SearchError):
        run_search(digits_cnn_task, _cfg(storage=url, study_name="bad", max_weight_fraction=0.001))
    names = [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/s.db")]
    assert names == ["s"]


def test_bad_requests_name_the_choices(digits_cnn_task):
    with pytest.raises(SearchError, match="unknown strategy 'annealing'"):
        SearchConfig(strategy="annealing")
    with pytest.raises(SearchError, match="storage scheme 'redis'"):
        run_search(digits_cnn_task, _cfg(storage="redis://localhost/0"))
    with pytest.raises(SearchError, match="budget"):
        SearchConfig(budget=0)
    with pytest.raises(SearchError, match="objectives"):
        SearchConfig(objectives=("size",))


def test_tracking_parent_and_children(digits_cnn_task, one_torch_thread):
    from workbench import tracking
    from workbench.ui.search import search_figures

    r = run_search(digits_cnn_task, _cfg(strategy="tpe", budget=3, track=True), figures=search_figures)
    parent = tracking.runs_frame(stage="search")
    children = tracking.runs_frame(stage="search-trial")
    assert len(parent) == 1 and len(children) == len(r.trials)
    assert (children["tags.mlflow.parentRunId"] == r.run_id).all()
    import mlflow

    client = mlflow.MlflowClient(tracking.tracking_uri())
    folders = {a.path for a in client.list_artifacts(r.run_id)}
    assert {"tables", "plans", "figures"} <= folders
    tables = {a.path for a in client.list_artifacts(r.run_id, "tables")}
    assert {"tables/front.csv", "tables/trials.csv"} <= tables
    assert any(a.path.endswith("pareto_front.html") for a in client.list_artifacts(r.run_id, "figures"))


def test_reward_shaping_penalises_mixed_and_repeated_plans(digits_cnn_task, one_torch_thread):
    r = run_search(
        digits_cnn_task, _cfg(strategy="random", budget=6, complexity_penalty=0.01, diversity_penalty=0.02)
    )
    t = r.trials
    mixed = t["plan"].map(lambda p: len({json.dumps(s, sort_keys=True) for s in json.loads(p).values()}) > 1)
    layers = len(json.loads(t["plan"].iloc[0]))
    for (_, row), is_mixed in zip(t.iterrows(), mixed, strict=True):
        distinct = len({json.dumps(s, sort_keys=True) for s in json.loads(row["plan"]).values()})
        penalty = row["accuracy"] - row["shaped_accuracy"]
        assert penalty >= 0.01 * (distinct - 1) / layers - 1e-12  # complexity part, plus any diversity part
        if not is_mixed and row["trial"] == 0:
            assert penalty == pytest.approx(0.0)  # first plan, uniform: nothing to penalise
    # the raw accuracy is what the front reports
    assert set(r.front["accuracy"]) <= set(t["accuracy"])


def test_cli_search_json(tmp_path):
    from workbench.cli import main

    out = tmp_path / "s.json"
    args = ["search", "--model", "digits_cnn", "--strategy", "uniform", "--budget", "3", "--w-bits", "2,4,8",
            "--storage", f"sqlite:///{tmp_path}/s.db", "--quiet", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    d = json.loads(out.read_text())
    assert d["real_evaluations"] == 3
    assert {"value", "reference"} <= set(d["hypervolume"])
    for entry in d["front"]:
        assert {"accuracy", "size_bytes", "bops", "latency_ms", "plan"} <= set(entry)
    assert main(args) == 2  # --json exists: never overwritten silently


def test_shared_cache_saves_compute_not_budget(digits_cnn_task, one_torch_thread, tmp_path):
    url = f"sqlite:///{tmp_path}/shared.db"
    a = run_search(digits_cnn_task, _cfg(strategy="uniform", budget=3, storage=url, study_name="a"))
    b = run_search(digits_cnn_task, _cfg(strategy="uniform", budget=3, storage=url, study_name="b"))
    assert not a.trials["cache_hit"].any()
    assert b.trials["cache_hit"].all()  # measured once, in study a
    assert b.real_evaluations == a.real_evaluations == 3  # but each study's budget counts its own plans
    assert list(b.trials["accuracy"]) == list(a.trials["accuracy"])
    # resuming adopts the stored configuration (strategy, space, objectives), whatever the new config says
    c = run_search(
        digits_cnn_task,
        _cfg(
            strategy="tpe",
            budget=3,
            storage=url,
            study_name="a",
            resume=True,
            objectives=("accuracy", "bops"),
        ),
    )
    assert c.config.strategy == "uniform" and c.config.objectives == ("accuracy", "weight_size")
    assert len(c.trials) == 3


def test_warm_start_seeds_the_sampler_within_the_budget(digits_cnn_task, one_torch_thread):
    r = run_search(
        digits_cnn_task,
        _cfg(strategy="tpe", budget=5, warm_start="uniform", warm_start_plans=2, max_weight_fraction=0.3),
    )
    first = r.trials.sort_values("trial").head(2)
    assert first["label"].str.startswith("warm start: uniform").all()
    assert r.real_evaluations == 5
    with pytest.raises(SearchError, match="warm_start"):
        SearchConfig(strategy="ilp", warm_start="ilp")
    with pytest.raises(SearchError, match="warm_start="):
        SearchConfig(warm_start="hawq")


def test_worker_threads_set_torch_threads_while_trials_run(digits_cnn_task, one_torch_thread, monkeypatch):
    import torch

    seen = []
    evaluate = digits_cnn_task.evaluate

    def spy(model, split, *a, **kw):
        seen.append(torch.get_num_threads())
        return evaluate(model, split, *a, **kw)

    monkeypatch.setattr(digits_cnn_task, "evaluate", spy)
    r = run_search(digits_cnn_task, _cfg(strategy="random", budget=2, worker_threads=2, final_split=None))
    assert r.real_evaluations == 2
    assert seen == [1, 2, 2]  # setup measures FP32 at the caller's threads, then the trials at worker_threads
    assert torch.get_num_threads() == 1  # restored
    assert SearchConfig.from_dict(_cfg(worker_threads=3).to_dict()).worker_threads == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(SearchError, match="worker_threads"):
            SearchConfig(worker_threads=bad)


def test_a_missing_sensitivity_or_predictor_is_refused_by_name(digits_cnn_task):
    """run_search builds nothing but auto's fast sensitivity pass: a strategy, warm start or accuracy mode
    without its input is refused before the FP32 accuracy is measured, naming the input and
    workbench.pipeline.prepare_search."""
    with pytest.raises(SearchError, match=r"strategy 'ilp' needs a sensitivity result.*prepare_search"):
        run_search(digits_cnn_task, _cfg(strategy="ilp"))
    with pytest.raises(SearchError, match=r"warm_start='greedy' needs a sensitivity result"):
        run_search(digits_cnn_task, _cfg(strategy="tpe", warm_start="greedy"))
    with pytest.raises(
        SearchError, match=r"accuracy='predicted' needs an accuracy predictor.*prepare_search"
    ):
        run_search(digits_cnn_task, _cfg(accuracy="predicted"), sensitivity=object())
    with pytest.raises(SearchError, match=r"strategy 'control' needs an accuracy predictor"):
        run_search(digits_cnn_task, _cfg(strategy="control"))


def test_resume_after_a_kill_continues_the_study_s_parent_run(digits_cnn_task, one_torch_thread, tmp_path):
    """A search killed with SIGKILL leaves its MLflow parent run (and the trial running then) RUNNING; the resumed
    search continues that run: one study, one parent, every trial under it (before: a second parent, the first
    RUNNING for ever)."""
    import mlflow

    from workbench import tracking

    url = f"sqlite:///{tmp_path}/s.db"
    cfg = dict(strategy="random", storage=url, study_name="k", track=True)
    first = run_search(digits_cnn_task, _cfg(budget=2, **cfg))
    client = mlflow.MlflowClient(tracking.tracking_uri())
    stale = tracking.runs_frame(stage="search-trial")["run_id"].iloc[0]
    for run_id in (first.run_id, stale):  # what SIGKILL leaves behind
        client.update_run(run_id, status="RUNNING")
    again = run_search(digits_cnn_task, _cfg(budget=3, resume=True, **cfg))
    parents = tracking.runs_frame(stage="search")
    assert list(parents["run_id"]) == [first.run_id] and again.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and client.get_run(stale).info.status == "KILLED"
    assert run.data.params["budget"] == "2" and run.data.tags["resumed.budget"] == "3"
    assert run.data.tags["workbench.resumes"] == "1"
    children = tracking.runs_frame(stage="search-trial")
    assert len(children) == len(again.trials) and (children["tags.mlflow.parentRunId"] == first.run_id).all()
