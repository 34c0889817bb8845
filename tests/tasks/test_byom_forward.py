"""Bring your own model whose forward takes ONE dict (sentence-transformers style: ``forward(self, features)``,
returning a dict): detected from the signature or forced with ``task_from_model(forward=...)``, quantized and
evaluated without a wrapper."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from workbench.pipeline import evaluate_plan
from workbench.quant import QuantPlan, quantize_model
from workbench.quant.inputs import call_model, set_forward_style, takes_one_dict
from workbench.tasks import task_from_model

VOCAB, SEQ, DIM = 30, 8, 16


class DictEncoder(nn.Module):
    """Takes ``features = {"input_ids", "attention_mask"}`` as one argument and returns it with
    ``sentence_embedding`` added, as a SentenceTransformer does."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.dense = nn.Linear(DIM, DIM)
        self.out = nn.Linear(DIM, 12)

    def forward(self, features: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        e = torch.tanh(self.dense(self.embed(features["input_ids"])))
        m = features["attention_mask"].unsqueeze(-1).to(e.dtype)
        pooled = (e * m).sum(1) / m.sum(1).clamp_min(1.0)
        return {**features, "sentence_embedding": self.out(pooled)}


class AnyKwargs(nn.Module):
    """A wrapper-like forward: no required positional parameter, dicts go as keyword arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 2)

    def forward(self, *args, **kwargs):
        return self.inner(kwargs["x"])


def _loader(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    mask = (torch.arange(SEQ)[None, :] < torch.randint(3, SEQ + 1, (n, 1), generator=g)).long()
    return DataLoader([{"input_ids": ids[i], "attention_mask": mask[i]} for i in range(n)], batch_size=8)


def _model() -> DictEncoder:
    torch.manual_seed(0)
    return DictEncoder().eval()


def test_call_model_detects_a_single_dict_forward():
    x = next(iter(_loader(8, 0)))
    model = _model()
    assert takes_one_dict(model, x)  # 'features' is required and not a key of the dict
    assert call_model(model, x)["sentence_embedding"].shape == (8, 12)
    kw = AnyKwargs()
    assert not takes_one_dict(kw, {"x": torch.ones(1, 4)})
    assert call_model(kw, {"x": torch.ones(3, 4)}).shape == (3, 2)
    assert not takes_one_dict(lambda input_ids, attention_mask: None, x)  # keys name the parameters
    assert not takes_one_dict(
        lambda tokens, mask: None, x
    )  # two positionals: keyword arguments (a clear error)


def test_dict_forward_model_is_quantized_and_evaluated():
    model = _model()
    task = task_from_model(
        model,
        calib_loader=_loader(32, 1),
        val_loader=_loader(16, 2),
        test_loader=_loader(16, 2),
        metric="cosine",
        output_key="sentence_embedding",
        name="dict-encoder",
    )
    assert task.info["forward"] == "model(x)" and task.num_classes == 12
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", model, embeddings=True)
    assert list(plan) == ["embed", "dense", "out"]
    summary = plan.summary(model, task.example_input())
    assert summary.coverage == "covers 3 of 3 weight layers, 100.0 % of weight parameters"
    res = evaluate_plan(task, plan, name="w8a8")
    assert res.fp32_accuracy == pytest.approx(1.0) and 0.99 < res.accuracy < 1.0
    assert res.weight_coverage == 1.0
    qmodel = quantize_model(model, plan, task.calib_loader)
    assert 0.99 < task.evaluate(qmodel, "test") < 1.0


def test_forward_choice_is_validated_and_recorded():
    class KwargsEncoder(DictEncoder):
        def forward(self, input_ids, attention_mask):  # type: ignore[override]
            return super().forward({"input_ids": input_ids, "attention_mask": attention_mask})

    loaders = {"calib_loader": _loader(16, 3), "val_loader": _loader(8, 4), "test_loader": _loader(8, 4)}
    with pytest.raises(ValueError, match=r"forward must be one of \['auto', 'kwargs', 'dict'\].*'list'"):
        task_from_model(_model(), **loaders, metric="cosine", forward="list")
    tensors = DataLoader([torch.zeros(3)] * 4, batch_size=2)
    with pytest.raises(ValueError, match="forward='dict' is about dict inputs"):
        task_from_model(
            nn.Linear(3, 2),
            calib_loader=tensors,
            val_loader=tensors,
            test_loader=tensors,
            metric="cosine",
            forward="dict",
        )
    task = task_from_model(KwargsEncoder().eval(), **loaders, metric="cosine", forward="kwargs")
    assert task.info["forward"] == "model(**x)"
    forced = task_from_model(_model(), **loaders, metric="cosine", forward="dict")
    assert forced.info["forward"] == "model(x)"
    try:  # the choice holds for the class, so every copy (quantized ones too) is called alike
        set_forward_style(DictEncoder, "kwargs")
        with pytest.raises(ValueError, match="model failed on the first calibration sample"):
            task_from_model(_model(), **loaders, metric="cosine")
    finally:
        set_forward_style(DictEncoder, "auto")
    with pytest.raises(ValueError, match="forward style must be one of"):
        set_forward_style(DictEncoder, "both")
