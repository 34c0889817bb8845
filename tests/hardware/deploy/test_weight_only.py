import pytest
import torch
from torch.nn import functional as F

from workbench.hardware.deploy import DeployInputError, deploy
from workbench.hardware.kernels import (
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    KernelError,
    KernelFallbackWarning,
    PackedEmbedding,
)
from workbench.quant import QuantPlan, QuantSpec
from workbench.quant.inputs import call_model, primary_output
from workbench.quant.introspect import quantizable_layers
from workbench.transformer_task import BertConfig, DigitsBert

W4 = QuantSpec(w_bits=4, a_bits=32, granularity="per_group", group_size=32)
W8 = QuantSpec(w_bits=8, a_bits=32)


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    model = DigitsBert(BertConfig(hidden=32, layers=1, heads=2, intermediate=64, dropout=0.0)).eval()
    ids = torch.randint(1, 17, (4, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}
    return model, batch


def _mixed_plan(model) -> QuantPlan:
    layers = quantizable_layers(model)
    return QuantPlan({n: (W8 if "attention" in n or "embeddings" in n else W4) for n in layers})


def test_weight_only_transformer_deploys_on_the_kernel_menu(bert):
    model, batch = bert
    plan = _mixed_plan(model)
    dep = deploy(model, plan, batch, strict=True)  # token ids: no tracing needed for weight-only plans
    mods = dict(dep.module.named_modules())
    for name, spec in plan.items():
        expected = (
            PackedEmbedding
            if "embeddings" in name
            else (Int8WeightOnlyLinear if spec is W8 else Int4WeightOnlyLinear)
        )
        assert isinstance(mods[name], expected), name
    with torch.no_grad():
        sim = primary_output(call_model(dep.simulated, batch))
        out = primary_output(dep(batch))
    assert F.cosine_similarity(sim.flatten(), out.flatten(), dim=0) >= 0.9999
    assert set(dep.table()["weight_only"]) == {True}


def test_unsupported_spec_falls_back_named_or_raises_when_strict(bert):
    model, batch = bert
    spec = QuantSpec(w_bits=8, a_bits=32, granularity="per_group", group_size=16)
    plan = QuantPlan({**{n: W8 for n in quantizable_layers(model)}, "classifier": spec})
    with pytest.warns(KernelFallbackWarning, match="classifier: no linear kernel"):
        dep = deploy(model, plan, batch)
    baked = dict(dep.module.named_modules())["classifier"]  # float32, the simulated weights baked in
    assert type(baked) is torch.nn.Linear
    with torch.no_grad():
        assert torch.equal(baked.weight, dep.simulated.classifier.quantized_weight())
    assert any(n.startswith("classifier: no linear kernel") for n in dep.notes)
    with pytest.raises(KernelError, match="classifier"):
        deploy(model, plan, batch, strict=True)


def test_static_int8_still_needs_float_inputs(bert):
    model, batch = bert
    with pytest.raises(DeployInputError, match="input_ids"):
        deploy(model, QuantPlan({"classifier": QuantSpec(w_bits=8, a_bits=8)}), batch)
