"""Bring your own model: bad input gets a clear error, on a small model with dict inputs (input_ids +
attention_mask) and labels. A forward that fails, outputs without a usable tensor, a missing output key, scores
that are not numbers, a plan naming an unsupported layer type, a glob that matches nothing; and the user's model
is left as it was by evaluate, sensitivity and QAT."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from workbench.pipeline import evaluate_plan, resolve_plan
from workbench.quant import PlanError, QuantPlan, QuantSpec, quantize_model
from workbench.quant.inputs import OutputError, primary_output
from workbench.tasks import Task, task_from_model

VOCAB, SEQ, DIM, CLASSES = 20, 6, 8, 4


class Tagger(nn.Module):
    """Embedding (quantizable, weight-only), LayerNorm (not quantizable), mean pool over the mask, two Linear
    layers; returns ``{"logits": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.norm = nn.LayerNorm(DIM)
        self.proj = nn.Linear(DIM, 16)
        self.head = nn.Linear(16, CLASSES)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        e = self.norm(self.emb(input_ids))
        m = attention_mask.unsqueeze(-1).to(e.dtype)
        return (e * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(torch.relu(self.proj(self.pooled(input_ids, attention_mask))))}


def _model() -> Tagger:
    torch.manual_seed(0)
    return Tagger().eval()


def _loader(n: int = 24, seed: int = 0, *, labels: bool = True) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    mask = (torch.arange(SEQ)[None, :] < torch.randint(2, SEQ + 1, (n, 1), generator=g)).long()
    y = torch.randint(0, CLASSES, (n,), generator=g)
    samples = [{"input_ids": ids[i], "attention_mask": mask[i]} for i in range(n)]
    return DataLoader(list(zip(samples, y)) if labels else samples, batch_size=8)


def _task(model: nn.Module, **kwargs) -> Task:
    loaders = {"calib_loader": _loader(seed=1), "val_loader": _loader(seed=2), "test_loader": _loader(seed=3)}
    return task_from_model(model, **{**loaders, "train_loader": _loader(seed=4), **kwargs})


STRUCTURE = r"dict\(input_ids: int64\[1, 6\], attention_mask: int64\[1, 6\]\)"


# --------------------------------------------------------------------------------------------- the forward


def test_forward_failure_names_batch_structure_and_exception() -> None:
    class Broken(Tagger):
        def forward(self, input_ids, attention_mask):  # type: ignore[override]
            return self.head(self.pooled(input_ids, attention_mask))  # 8 features into a Linear(16, ...)

    with pytest.raises(
        ValueError, match=rf"model failed on the first calibration sample \({STRUCTURE}\)"
    ) as info:
        _task(Broken())
    message = str(info.value)
    assert "RuntimeError" in message and "mat1 and mat2 shapes cannot be multiplied" in message
    assert isinstance(info.value.__cause__, RuntimeError)  # the original exception is chained

    class WrongArgs(Tagger):
        def forward(self, tokens, mask):  # type: ignore[override]
            return super().forward(tokens, mask)

    with pytest.raises(
        ValueError, match=rf"{STRUCTURE}.*TypeError: .*unexpected keyword argument 'input_ids'"
    ):
        _task(WrongArgs())


# --------------------------------------------------------------------------------------------- the outputs


@pytest.mark.parametrize(
    ("output", "found"),
    [
        ("a sentence", r"type str has no tensor a metric can use; found no keys or fields"),
        ({"n_tokens": 3, "label": "x"}, r"type dict has no tensor .*keys \['n_tokens', 'label'\]"),
        ((None, 3.0), r"type tuple has no tensor .*elements \['NoneType', 'float'\]"),
        ({"nested": {"deeper": [1, 2]}}, r"type dict has no tensor .*keys \['nested'\]"),
    ],
)
def test_output_without_a_tensor(output, found: str) -> None:
    class Talker(Tagger):
        def forward(self, input_ids, attention_mask):  # type: ignore[override]
            return output

    with pytest.raises(
        ValueError, match=r"model output on the first calibration sample is unusable: .*" + found
    ):
        _task(Talker())
    with pytest.raises(OutputError, match="output_key=..."):  # the hint names the way out
        primary_output(output)


def test_output_key_missing_or_not_a_tensor() -> None:
    class Two(Tagger):
        def forward(self, input_ids, attention_mask):  # type: ignore[override]
            out = super().forward(input_ids, attention_mask)
            return {"aux": out["logits"] * 0, "logits": out["logits"], "n": 3}

    with pytest.raises(ValueError, match=r"has no 'scores'; found keys \['aux', 'logits', 'n'\]"):
        _task(Two(), output_key="scores")
    with pytest.raises(
        ValueError, match=r"\['n'\] is a int, not a tensor; found keys \['aux', 'logits', 'n'\]"
    ):
        _task(Two(), output_key="n")
    with pytest.raises(TypeError, match="output_key must be a str .* got 1.5"):
        _task(Two(), output_key=1.5)  # type: ignore[arg-type]
    assert _task(Two(), output_key="aux").output_key == "aux"

    class Pair(Tagger):
        def forward(self, input_ids, attention_mask):  # type: ignore[override]
            return (super().forward(input_ids, attention_mask)["logits"], "tag")

    with pytest.raises(ValueError, match=r"has no 2; found elements \['Tensor', 'str'\]"):
        _task(Pair(), output_key=2)
    with pytest.raises(ValueError, match=r"has no 'logits'; found elements \['Tensor', 'str'\]"):
        _task(Pair(), output_key="logits")  # a name on a tuple output


# --------------------------------------------------------------------------------------------- the score


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (math.nan, r"returned NaN"),
        (None, r"returned None \(a NoneType\)"),
        ("good", r"returned 'good' \(a str\)"),
        (torch.tensor([0.5, 0.7]), r"returned tensor\(\[0\.5000, 0\.7000\]\) \(a Tensor\)"),
        (float("nan") * torch.ones(()), r"returned NaN"),
    ],
)
def test_eval_fn_not_a_number(value, shown: str) -> None:
    model = _model()

    def my_score(m: nn.Module):
        return value

    task = task_from_model(model, calib_loader=_loader(labels=False), eval_fn=my_score)
    assert task.metric_name == "my_score"
    with pytest.raises(ValueError, match=r"eval_fn .*my_score " + shown + r".*must return a number"):
        task.evaluate()
    plan = QuantPlan({"proj": QuantSpec(w_bits=8, a_bits=8), "head": QuantSpec(w_bits=8, a_bits=8)})
    with pytest.raises(ValueError, match=shown):  # the same error from a stage
        evaluate_plan(task, plan)


def test_metric_not_a_number_names_the_metric() -> None:
    def recall_at_5(m: nn.Module, loader) -> float:
        return None  # type: ignore[return-value]

    task = _task(_model(), metric=recall_at_5, name="tagger")
    with pytest.raises(ValueError, match=r"the metric 'recall_at_5' of task 'tagger' returned None"):
        task.evaluate()


# --------------------------------------------------------------------------------------------- plans


def test_plan_naming_an_unsupported_layer_type() -> None:
    model = _model()
    task = _task(model)
    plan = QuantPlan({"norm": QuantSpec(w_bits=4), "proj": QuantSpec(w_bits=4)})
    supported = r"supported types: Conv1d, Conv2d, Linear, Embedding"
    with pytest.raises(PlanError, match=rf"layer 'norm' is a LayerNorm.*{supported}"):
        quantize_model(model, plan, task.calib_loader)
    with pytest.raises(PlanError, match=rf"'norm' is a LayerNorm.*{supported}"):
        evaluate_plan(task, plan)
    with pytest.raises(PlanError, match=r"LayerNorm"):
        plan.validate(model)


@pytest.mark.parametrize(
    ("spec", "near"),
    [
        (
            "uniform:w4:per_channel;include=*.dense",
            r"'\*\.dense' matches no quantizable layer; nearest layer names: \[",
        ),
        (
            "uniform:w4:per_channel;include=prj",
            r"'prj' matches no quantizable layer; nearest layer names: \['proj'",
        ),
    ],
)
def test_glob_matching_nothing_lists_near_names(spec: str, near: str) -> None:
    model = _model()
    with pytest.raises(PlanError, match=near):
        resolve_plan(spec, model)
    with pytest.raises(PlanError, match=r"matches no quantizable layer; nearest layer names"):
        QuantPlan.from_patterns(model, {"head": QuantSpec(w_bits=8), "encoder.*": QuantSpec(w_bits=4)})
    assert set(resolve_plan("uniform:w4:per_channel;include=p*,h*", model)) == {"proj", "head"}


# --------------------------------------------------------------------------------------------- no mutation


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[tuple[str, type, bool]], int]:
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(n, type(m), m.training) for n, m in model.named_modules()],
        hooks,
    )


def _assert_unchanged(model: nn.Module, snap: tuple) -> None:
    state, modules, hooks = snap
    now = model.state_dict()
    assert set(now) == set(state)
    assert all(torch.equal(now[k], state[k]) for k in state), "weights or buffers changed"
    assert [(n, type(m), m.training) for n, m in model.named_modules()] == modules, "modules or modes changed"
    assert hooks == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert all(not p.requires_grad or p.grad is None for p in model.parameters()), "gradients left behind"


def test_user_model_not_mutated_by_evaluate_sensitivity_qat() -> None:
    from workbench.qat import QATConfig, train_steps
    from workbench.sensitivity import SensitivityConfig, analyze_sensitivity

    model = _model()
    model.train()
    model.norm.eval()  # mixed training flags must come back as they were
    snap = _snapshot(model)
    task = _task(model)
    _assert_unchanged(model, snap)

    task.evaluate(split="val")
    plan = QuantPlan(
        {"emb": QuantSpec(w_bits=4, a_bits=32), "proj": QuantSpec(w_bits=4), "head": QuantSpec()}
    )
    evaluate_plan(task, plan, split="val")
    _assert_unchanged(model, snap)

    config = SensitivityConfig(
        metrics=("output_mse", "acc_drop", "hessian", "fisher"), w_bits=(2, 8), a_bits=(8,),
        granularities=("per_channel",), hutchinson_max_iter=2, hutchinson_min_iter=1, hutchinson_window=1,
        progress=False,
    )  # fmt: skip
    result = analyze_sensitivity(task, config, cache=False)
    assert set(result.layers["layer"]) == {"emb", "proj", "head"}
    _assert_unchanged(model, snap)

    qat = train_steps(task, plan, QATConfig(epochs=1, distill_weight=0.5), max_steps=2)
    assert qat.steps == 2 and qat.model is not model
    _assert_unchanged(model, snap)
