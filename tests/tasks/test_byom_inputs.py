"""Bring your own model: dict inputs (input_ids + attention_mask), dict outputs, loaders without labels and a
fidelity metric, through evaluate_plan, sensitivity, profiling and a search; the caller's model never changes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from workbench.pipeline import evaluate_plan
from workbench.profiling import ProfileConfig, profile_model
from workbench.quant import QuantPlan, QuantSpec, quantize_model
from workbench.quant.introspect import layer_costs
from workbench.sensitivity import SensitivityConfig, analyze_sensitivity
from workbench.tasks import Task, fidelity_metric, task_from_model

VOCAB, SEQ, DIM = 40, 12, 16


class TokenTable(nn.Module):
    """An embedding lookup that is not an ``nn.Embedding``: the quantizable layers here are the Linear ones only
    (Embedding quantization is tested with the layer types, in tests/quant)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(VOCAB, DIM))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.table)


class BagOfTokens(nn.Module):
    """Token lookup, mean pool over the unmasked tokens, two Linear layers; returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = TokenTable()
        self.proj = nn.Linear(DIM, 32)
        self.act = nn.GELU()
        self.head = nn.Linear(32, 6)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.embed(input_ids)
        m = attention_mask.unsqueeze(-1).to(e.dtype)
        pooled = (e * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        return {"pooled": pooled, "logits": self.head(self.act(self.proj(pooled)))}


def _samples(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    lengths = torch.randint(4, SEQ + 1, (n,), generator=g)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    return [{"input_ids": ids[i], "attention_mask": mask[i]} for i in range(n)]


def _model() -> BagOfTokens:
    torch.manual_seed(0)
    return BagOfTokens().eval()


def _task(model: nn.Module, kind: str = "cosine") -> Task:
    # batches are dicts {"input_ids": int64[16, 12], "attention_mask": int64[16, 12]}, without labels
    calib = DataLoader(_samples(48, 1), batch_size=16)
    val = DataLoader(_samples(32, 2), batch_size=16)
    return task_from_model(
        model,
        calib_loader=calib,
        val_loader=val,
        test_loader=val,
        metric=fidelity_metric(model, kind),
        name="bag",
    )


def _linear_plan(w_bits: int, a_bits: int = 8) -> QuantPlan:
    spec = QuantSpec(w_bits=w_bits, a_bits=a_bits, granularity="per_channel")
    return QuantPlan({"proj": spec, "head": spec})


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], bool, int]:
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return {k: v.clone() for k, v in model.state_dict().items()}, model.training, hooks


def _same(model: nn.Module, snap: tuple[dict[str, torch.Tensor], bool, int]) -> bool:
    state, training, hooks = snap
    now = model.state_dict()
    return (
        set(now) == set(state)
        and all(torch.equal(now[k], state[k]) for k in state)
        and model.training == training
        and hooks == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
        and all(type(m) in (BagOfTokens, TokenTable, nn.Linear, nn.GELU) for m in model.modules())
    )


def test_task_from_dict_loader_without_labels() -> None:
    model = _model()
    task = _task(model)
    assert task.input_shape == (SEQ,) and task.num_classes == 6
    assert task.info["labels"] is False and "input_ids: int64[1, 12]" in task.info["inputs"]
    x = task.example_input(20)  # spans two calibration batches, keeps the dict
    assert set(x) == {"input_ids", "attention_mask"} and x["input_ids"].shape == (20, SEQ)
    assert task.evaluate(split="val") == pytest.approx(1.0)  # the FP32 model against itself
    costs = layer_costs(model, x)
    assert list(costs) == ["proj", "head"] and costs["proj"].macs == DIM * 32


def test_evaluate_plan_fidelity_and_no_mutation() -> None:
    model = _model()
    snap = _snapshot(model)
    task = _task(model)
    r8 = evaluate_plan(task, _linear_plan(8), split="val")
    r2 = evaluate_plan(task, _linear_plan(2), split="val")
    assert r8.fp32_accuracy == pytest.approx(1.0)
    assert 0.99 < r8.accuracy < 1.0  # cosine to the FP32 logits: close, not exact
    assert r2.accuracy < r8.accuracy  # 2-bit weights are worse
    assert r8.size_bytes < r8.fp32_size_bytes
    assert _same(model, snap)


@pytest.mark.parametrize("kind", ["cosine", "min_cosine", "neg_rel_mse", "topk_agreement"])
def test_fidelity_kinds(kind: str) -> None:
    model = _model()
    task = _task(model, kind)
    perfect = {"cosine": 1.0, "min_cosine": 1.0, "neg_rel_mse": 0.0, "topk_agreement": 1.0}[kind]
    assert task.evaluate(split="val") == pytest.approx(perfect, abs=1e-6)
    q4 = quantize_model(model, _linear_plan(3), task.calib_loader)
    value = task.evaluate(q4, split="val")
    assert math.isfinite(value) and value < perfect


def test_sensitivity_label_free_metrics() -> None:
    model = _model()
    snap = _snapshot(model)
    task = _task(model)
    config = SensitivityConfig(
        metrics=("output_mse", "output_kl"), w_bits=(2, 8), a_bits=(8,), granularities=("per_channel",),
        calib_batches=2, progress=False,
    )  # fmt: skip
    result = analyze_sensitivity(task, config, cache=False)
    weights = result.matrix("output_mse", kind="weight", granularity="per_channel")
    assert list(weights.index) == ["proj", "head"]
    assert (weights[2] > weights[8]).all()  # fewer bits hurt more
    assert result.info["calib_samples"] == 32
    with pytest.raises(ValueError, match=r"need labels.*'hessian'|'hessian'.*need labels"):
        analyze_sensitivity(task, SensitivityConfig(metrics=("output_mse", "hessian")), cache=False)
    assert _same(model, snap)


def test_profile_dict_batches() -> None:
    model = _model()
    snap = _snapshot(model)
    task = _task(model)
    df = profile_model(model, task.calib_loader, config=ProfileConfig(max_batches=2, progress=False))
    assert list(df["layer"]) == ["proj", "head"]
    assert df.loc["proj", "macs"] == DIM * 32 and df.loc["head", "input_shape"] == (32,)
    one = profile_model(model, task.example_input(4), config=ProfileConfig(progress=False))  # a dict batch
    assert list(one["layer"]) == ["proj", "head"]
    assert _same(model, snap)


def test_search_on_dict_task() -> None:
    from workbench.search.study import SearchConfig, run_search

    model = _model()
    snap = _snapshot(model)
    task = _task(model)
    result = run_search(
        task,
        SearchConfig(
            strategy="tpe", budget=4, storage=":memory:", track=False, progress=False, final_split=None
        ),
    )
    assert len(result.trials) >= 4 and not result.front.empty
    assert result.fp32_accuracy == pytest.approx(1.0)
    assert result.front["accuracy"].between(0.0, 1.0 + 1e-9).all()
    assert _same(model, snap)


def test_eval_fn_task_and_bad_inputs() -> None:
    model = _model()
    calib = DataLoader(_samples(16, 1), batch_size=8)
    batch = next(iter(calib))

    def eval_fn(m: nn.Module) -> float:
        with torch.no_grad():
            return float(-(m(**batch)["logits"] - model(**batch)["logits"]).pow(2).mean())

    task = task_from_model(model, calib_loader=calib, eval_fn=eval_fn)
    assert task.evaluate() == 0.0 and task.val_loader is calib
    assert evaluate_plan(task, _linear_plan(4)).accuracy < 0.0

    nan_task = task_from_model(model, calib_loader=calib, eval_fn=lambda m: math.nan)
    with pytest.raises(ValueError, match="NaN"):
        nan_task.evaluate()
    text_task = task_from_model(model, calib_loader=calib, eval_fn=lambda m: "good")
    with pytest.raises(ValueError, match="'good'"):
        text_task.evaluate()
    with pytest.raises(ValueError, match=r"\(x, y\)"):  # default accuracy needs labels
        task_from_model(model, calib_loader=calib, val_loader=calib, test_loader=calib)

    class Broken(BagOfTokens):
        def forward(self, input_ids, attention_mask):  # type: ignore[override]
            raise RuntimeError("shape mismatch in my layer")

    with pytest.raises(
        ValueError, match=r"model failed.*input_ids: int64\[1, 12\].*RuntimeError: shape mismatch"
    ):
        task_from_model(Broken(), calib_loader=calib, eval_fn=eval_fn)

    class NoTensor(BagOfTokens):
        def forward(self, input_ids, attention_mask):  # type: ignore[override]
            return {"n_tokens": int(attention_mask.sum())}

    with pytest.raises(ValueError, match=r"no tensor.*keys \['n_tokens'\]"):
        task_from_model(NoTensor(), calib_loader=calib, eval_fn=eval_fn)
    with pytest.raises(ValueError, match="not both"):
        task_from_model(model, calib_loader=calib, eval_fn=eval_fn, metric=fidelity_metric(model))


def test_fidelity_reference_cached_per_loader() -> None:
    model = _model()
    metric = fidelity_metric(model, "cosine")
    loader = DataLoader(_samples(32, 2), batch_size=16)
    calls = {"n": 0}
    other = copy.deepcopy(model)
    handle = model.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        metric(other, loader)
        after_first = calls["n"]
        metric(other, loader)
    finally:
        handle.remove()
    assert after_first == 2 and calls["n"] == 2  # the reference ran once per batch, once per loader
    with pytest.raises(ValueError, match="unknown fidelity kind"):
        fidelity_metric(model, "psnr")


# --------------------------------------------------------------------------------------------- a chosen output
# The model returns its scores behind a garbage output ("aux" = 7 - 50 * scores: its argmax is the scores'
# argmin, its MSE 2500 times theirs, its cosine another). With output_key set, every stage must score the same
# numbers as a copy of the model that returns the scores alone; without it they would use aux.


class TwoOutputs(BagOfTokens):
    """BagOfTokens whose scores come second: a dict ``{"aux", "scores"}``, a tuple ``(aux, scores)``, or the
    scores tensor alone (``style="plain"``, the reference)."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):  # type: ignore[override]
        scores = super().forward(input_ids, attention_mask)["logits"]
        aux = 7.0 - 50.0 * scores
        if self.style == "dict":
            return {"aux": aux, "scores": scores}
        if self.style == "tuple":
            return (aux, scores)
        return scores


KEYS = {"dict": "scores", "tuple": 1}


def _two_outputs(style: str) -> tuple[TwoOutputs, TwoOutputs]:
    """The model and a ``plain`` copy with the same weights (returning the scores alone)."""
    torch.manual_seed(0)
    model = TwoOutputs(style).eval()
    plain = copy.deepcopy(model)
    plain.style = "plain"
    return model, plain


def _labelled(model: nn.Module, n: int, seed: int, batch: int = 8) -> DataLoader:
    """``(dict inputs, labels)`` batches labelled with the FP32 scores' argmax (FP32 top-1 accuracy is 1)."""
    samples = _samples(n, seed)
    plain = copy.deepcopy(model)
    plain.style = "plain"
    with torch.no_grad():
        ids = torch.stack([s["input_ids"] for s in samples])
        mask = torch.stack([s["attention_mask"] for s in samples])
        labels = plain(ids, mask).argmax(dim=1)
    return DataLoader(list(zip(samples, labels)), batch_size=batch)


def _labelled_task(model: nn.Module, key: str | int | None, **kwargs) -> Task:
    return task_from_model(
        model,
        calib_loader=_labelled(model, 32, 1),
        val_loader=_labelled(model, 24, 2),
        test_loader=_labelled(model, 24, 3),
        train_loader=_labelled(model, 32, 4),
        output_key=key,
        name="two-outputs",
        **kwargs,
    )


def _frozen(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[tuple[str, type, bool]], int]:
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    modules = [(n, type(m), m.training) for n, m in model.named_modules()]
    return {k: v.clone() for k, v in model.state_dict().items()}, modules, hooks


def _unchanged(model: nn.Module, snap: tuple) -> bool:
    state, modules, hooks = snap
    now = model.state_dict()
    return (
        set(now) == set(state)
        and all(torch.equal(now[k], state[k]) for k in state)
        and [(n, type(m), m.training) for n, m in model.named_modules()] == modules
        and hooks == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    )


@pytest.mark.parametrize("style", ["dict", "tuple"])
def test_output_key_evaluate(style: str) -> None:
    from workbench.models import evaluate_accuracy

    model, _ = _two_outputs(style)
    snap = _frozen(model)
    key = KEYS[style]
    task = _labelled_task(model, key)
    assert task.output_key == key and task.num_classes == 6 and task.metric_name == "accuracy"
    assert task.evaluate(split="val") == 1.0  # the scores' argmax are the labels
    assert task.to("cpu").output_key == key
    val = task.val_loader
    assert evaluate_accuracy(model, val) == 0.0  # the first tensor (aux) picks the scores' argmin
    assert evaluate_accuracy(model, val, output_key=key) == 1.0
    assert _labelled_task(model, None).evaluate(split="val") == 0.0  # without the key: aux
    q = quantize_model(model, _linear_plan(8), task.calib_loader)
    assert task.evaluate(q, split="val") > 0.9
    assert _unchanged(model, snap)


@pytest.mark.parametrize("style", ["dict", "tuple"])
def test_output_key_sensitivity(style: str, tmp_path) -> None:
    model, plain = _two_outputs(style)
    snap = _frozen(model)
    config = SensitivityConfig(
        metrics=("output_mse", "output_kl", "acc_drop", "hessian", "fisher"), w_bits=(2, 8), a_bits=(8,),
        granularities=("per_channel",), calib_batches=2, hutchinson_max_iter=3, hutchinson_min_iter=1,
        hutchinson_window=1, progress=False,
    )  # fmt: skip
    keyed = analyze_sensitivity(_labelled_task(model, KEYS[style]), config, cache_dir=tmp_path)
    reference = analyze_sensitivity(_labelled_task(plain, None), config, cache=False)
    wrong = analyze_sensitivity(_labelled_task(model, None), config, cache_dir=tmp_path)
    assert keyed.info["cache_key"] != wrong.info["cache_key"]  # another output, another cache entry
    for metric in ("output_mse", "output_kl", "acc_drop", "omega", "fisher"):
        a = keyed.table[keyed.table["metric"] == metric]["value"].to_numpy()
        b = reference.table[reference.table["metric"] == metric]["value"].to_numpy()
        assert len(a) and torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-6, atol=1e-12), metric
    mse = keyed.matrix("output_mse", kind="weight", granularity="per_channel")
    mse_wrong = wrong.matrix("output_mse", kind="weight", granularity="per_channel")
    assert (mse_wrong / mse).to_numpy() == pytest.approx(2500.0, rel=1e-3)  # aux = 7 - 50 * scores
    assert keyed.info["fp32_val_accuracy"] == 1.0 and wrong.info["fp32_val_accuracy"] == 0.0
    assert keyed.info["metric_name"] == "accuracy" and keyed.info["output_key"] == KEYS[style]
    again = analyze_sensitivity(_labelled_task(model, KEYS[style]), config, cache_dir=tmp_path)
    assert again.info["source"] == "cache" and again.info["output_key"] == KEYS[style]
    assert _unchanged(model, snap)


@pytest.mark.parametrize("style", ["dict", "tuple"])
def test_output_key_qat_steps(style: str) -> None:
    from workbench.qat import QATConfig, train_steps

    model, plain = _two_outputs(style)
    snap = _frozen(model)
    config = QATConfig(epochs=1, distill_weight=0.5, quant_loss_weight=0.1, seed=0)
    keyed = train_steps(_labelled_task(model, KEYS[style]), _linear_plan(4), config, max_steps=3)
    reference = train_steps(_labelled_task(plain, None), _linear_plan(4), config, max_steps=3)
    wrong = train_steps(_labelled_task(model, None), _linear_plan(4), config, max_steps=3)
    cols = ["loss", "ce_loss", "distill_loss", "quant_loss", "val_accuracy"]
    assert keyed.steps == 3 and keyed.history[cols].notna().all().all()
    assert keyed.history[cols].to_numpy() == pytest.approx(reference.history[cols].to_numpy(), rel=1e-5)
    assert keyed.accuracy_after == reference.accuracy_after and keyed.fp32_accuracy == 1.0
    assert wrong.fp32_accuracy == 0.0  # aux scored
    assert abs(wrong.history["ce_loss"].iloc[0] - keyed.history["ce_loss"].iloc[0]) > 1.0  # aux trained
    assert keyed.metric_name == "accuracy" and keyed.output_key == KEYS[style]
    assert keyed.to_dict()["output_key"] == KEYS[style]
    assert _unchanged(model, snap)


def test_output_key_predictor_and_fidelity(tmp_path) -> None:
    from workbench.predictor import PlanDatasetConfig, build_plan_dataset, dataset_key

    model, plain = _two_outputs("dict")
    snap = _frozen(model)
    config = PlanDatasetConfig(n_random=4, n_stratified=0, w_bits=(2, 4, 8), split="val")
    task = _labelled_task(model, "scores")
    keyed = build_plan_dataset(task, config=config, path=tmp_path / "a.jsonl", progress=False)
    reference = build_plan_dataset(
        _labelled_task(plain, None), config=config, path=tmp_path / "b.jsonl", progress=False
    )
    cols = ["accuracy", "acc_drop", "kl", "logit_mse"]
    assert keyed.frame[cols].to_numpy() == pytest.approx(reference.frame[cols].to_numpy(), rel=1e-6)
    assert keyed.info["fp32_accuracy"] == 1.0
    assert keyed.info["metric_name"] == "accuracy" and keyed.info["output_key"] == "scores"
    assert dataset_key(task, config) != dataset_key(_labelled_task(model, None), config)

    # a fidelity metric named by its kind compares the chosen output
    unlabelled = DataLoader(_samples(24, 2), batch_size=8)
    loaders = {"calib_loader": unlabelled, "val_loader": unlabelled, "test_loader": unlabelled}
    fid = task_from_model(model, **loaders, metric="cosine", output_key="scores")
    fid_plain = task_from_model(plain, **loaders, metric="cosine")
    assert fid.metric.output_key == "scores" and fid.metric_name == "cosine"
    assert fid.evaluate() == pytest.approx(1.0)
    q, q_plain = (quantize_model(m, _linear_plan(2), unlabelled) for m in (model, plain))
    assert fid.evaluate(q) == pytest.approx(fid_plain.evaluate(q_plain), abs=1e-9)
    aux_cos = task_from_model(model, **loaders, metric="cosine").evaluate(q)
    assert aux_cos != pytest.approx(fid.evaluate(q), abs=1e-6)  # aux (the first tensor) differs
    with pytest.raises(ValueError, match=r"unknown metric 'psnr'.*cosine"):
        task_from_model(model, **loaders, metric="psnr")
    assert _unchanged(model, snap)


def test_output_key_linear_deployments() -> None:
    from workbench.hardware.dynamic import compare_linear_deployments

    model, plain = _two_outputs("tuple")
    model.train()  # the flags come back as they were
    snap = _frozen(model)
    kwargs = {"batch_size": 4, "repeats": 1, "warmup": 0, "threads": 1, "split": "val"}
    keyed = compare_linear_deployments(_labelled_task(model, 1), **kwargs)
    reference = compare_linear_deployments(_labelled_task(plain, None), **kwargs)
    wrong = compare_linear_deployments(_labelled_task(model, None), **kwargs)
    cols = ["metric", "cosine_to_fp32", "top1_agreement"]
    assert keyed[cols].to_numpy() == pytest.approx(reference[cols].to_numpy(), rel=1e-6)
    assert keyed["metric"].iloc[0] == 1.0 and wrong["metric"].iloc[0] == 0.0
    assert keyed.attrs["metric_name"] == "accuracy" and keyed.attrs["output_key"] == 1
    assert _unchanged(model, snap)


def test_metric_names() -> None:
    import functools

    from workbench.models import evaluate_accuracy
    from workbench.tasks import EvalFnMetric, metric_name

    model = _model()

    def perplexity_score(m: nn.Module) -> float:
        return 0.0

    class Recall:
        def __call__(self, m: nn.Module, loader) -> float:
            return 0.0

    assert metric_name(evaluate_accuracy) == "accuracy"
    assert metric_name(functools.partial(evaluate_accuracy, output_key="x")) == "accuracy"
    assert metric_name(fidelity_metric(model, "topk_agreement")) == "topk_agreement"
    assert metric_name(EvalFnMetric(perplexity_score)) == "perplexity_score"
    assert metric_name(Recall()) == "Recall"
    assert _task(model, "neg_rel_mse").metric_name == "neg_rel_mse"
    calib = DataLoader(_samples(8, 1), batch_size=8)
    assert (
        task_from_model(model, calib_loader=calib, eval_fn=perplexity_score).metric_name == "perplexity_score"
    )
