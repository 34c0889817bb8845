"""Bring your own model: a BERT-style encoder with dict inputs runs through the stages (issue 14, first slice)."""

from __future__ import annotations

import pytest
import torch

from workbench.data import DigitsConfig
from workbench.pipeline import evaluate_plan
from workbench.qat import QATConfig, train_qat
from workbench.quant import QuantPlan, load_packed, quantize_model, save_packed
from workbench.sensitivity import SensitivityConfig, analyze_sensitivity
from workbench.tasks.digits_bert import BertTrainConfig, DigitsBert, digits_tokens, transformer_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TRAIN = BertTrainConfig()  # the default: the one cached model every DigitsBert test and example shares


@pytest.fixture(scope="module")
def task():
    return transformer_task(train=TRAIN)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_tokens_keep_masks_and_model_names_layers_like_bert(task):
    inputs, y = next(iter(task.calib_loader))
    assert set(inputs) == {"input_ids", "attention_mask"} and inputs["input_ids"].shape[1] == 64
    assert (inputs["attention_mask"].sum(1) < 64).any()  # trailing blank pixels are padded and masked
    assert ((inputs["input_ids"] == 0) == (inputs["attention_mask"] == 0)).all()
    names = dict(task.model.named_modules())
    assert isinstance(names["embeddings.word_embeddings"], torch.nn.Embedding)
    assert "encoder.layer.1.intermediate.dense" in names and "pooler.dense" in names
    assert task.evaluate(split="test") >= 0.85  # trained (the default 40 epochs)


def test_weight_only_and_pattern_plans(task):
    before = _state(task.model)
    fp32 = task.evaluate(split="test")
    w8 = evaluate_plan(
        task, QuantPlan.from_shorthand("uniform:w8:per_channel", task.model), fp32_accuracy=fp32
    )
    assert abs(w8.accuracy - fp32) <= 0.01
    plan = QuantPlan.from_shorthand("uniform:w4:per_channel;include=*.dense;exclude=pooler*", task.model)
    assert set(plan.layers) == {f"encoder.layer.{i}.{p}.dense" for i in range(2) for p in
                                ("attention.output", "intermediate", "output")}  # fmt: skip
    summary = plan.summary(task.model, task.example_input(1))
    assert 0.0 < summary.covered_fraction < 1.0
    assert all(v.equal(before[k]) for k, v in task.model.state_dict().items())  # caller's model untouched


def test_embedding_quantized_and_packed_round_trip(task, tmp_path):
    plan = QuantPlan.from_shorthand("uniform:w4:per_channel;include=*", task.model)
    assert "embeddings.word_embeddings" in plan.layers
    q = quantize_model(task.model, plan, task.calib_loader)
    save_packed(q, tmp_path / "m.wbq")
    back = load_packed(tmp_path / "m.wbq", task.model)
    inputs, _ = next(iter(task.test_loader))
    with torch.no_grad():
        assert torch.equal(q(**inputs).logits, back(**inputs).logits)


def test_sensitivity_covers_embedding_without_activation_probes(task):
    cfg = SensitivityConfig(metrics=("output_mse",), w_bits=(2, 8), granularities=("per_channel",), a_bits=(8,),
                            progress=False)  # fmt: skip
    res = analyze_sensitivity(task, cfg, cache=False)
    table = res.table[res.table["metric"] == "output_mse"]
    emb = table[table["layer"] == "embeddings.word_embeddings"]
    assert set(emb["kind"]) == {"weight"}  # weight-only: no activation probe
    assert "activation" in set(table["kind"])  # the Linear layers do get them
    w2 = emb[emb["w_bits"] == 2]["value"].iloc[0]
    w8 = emb[emb["w_bits"] == 8]["value"].iloc[0]
    assert w2 > w8 >= 0


def test_qat_steps_on_dict_inputs(task):
    before = _state(task.model)
    res = train_qat(
        task, "uniform:w3:per_channel", QATConfig(epochs=1, max_steps=3), track=False, progress=False
    )
    assert res.steps == 3 and res.interrupted
    assert all(v.equal(before[k]) for k, v in task.model.state_dict().items())


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="integer"):
        DigitsBert()(input_ids=torch.zeros(2, 64))
    x = torch.zeros(3, 1, 8, 8) - 1.0  # all blank pixels
    tokens = digits_tokens(x, DigitsConfig())
    assert tokens["attention_mask"][:, 1:].sum() == 0


def test_dynamic_int8_and_bf16_deployments(task):
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    from workbench.hardware.dynamic import compare_linear_deployments, dynamic_int8

    before = _state(task.model)
    q = dynamic_int8(task.model)
    assert isinstance(dict(q.named_modules())["encoder.layer.0.intermediate.dense"], DynLinear)
    only = dynamic_int8(
        task.model, QuantPlan.from_shorthand("uniform:w8;include=*.intermediate.dense", task.model)
    )
    kinds = {n: type(m) for n, m in only.named_modules()}
    assert (
        kinds["encoder.layer.0.intermediate.dense"] is DynLinear and kinds["pooler.dense"] is torch.nn.Linear
    )
    df = compare_linear_deployments(task, batch_size=8, repeats=2, warmup=1, threads=1).set_index("variant")
    assert list(df.index) == ["fp32", "dynamic_int8", "bf16"]
    assert df.loc["dynamic_int8", "cosine_to_fp32"] > 0.99 and df.loc["bf16", "cosine_to_fp32"] > 0.99
    assert abs(df.loc["dynamic_int8", "metric"] - df.loc["fp32", "metric"]) <= 0.02
    assert all(v.equal(before[k]) for k, v in task.model.state_dict().items())
    with pytest.raises(ValueError, match="no nn.Linear"):
        dynamic_int8(task.model, QuantPlan.from_shorthand("uniform:w4;include=embeddings.*", task.model))


def test_transformer_task_module_reexports_digits_bert() -> None:
    import workbench.tasks.digits_bert as new
    import workbench.transformer_task as old

    for name in new.__all__:
        assert getattr(old, name) is getattr(new, name), name
    assert old._cache_path is new._cache_path
