"""Layers quantized through an adapter (SAME padding) deploy on int8 kernels with their pad kept in front."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.quant.test_adapters import SameNet
from workbench.hardware.deploy import deploy
from workbench.hardware.kernels.modules import Bf16Layer
from workbench.quant import QuantPlan, QuantSpec, quantize_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_same_padding_layers_deploy_on_int8_kernels_like_their_simulation():
    torch.manual_seed(0)
    net = SameNet().eval()
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", net)
    dep = deploy(net, plan, x)
    assert set(dep.table()["precision"]) == {"int8"}
    code = dep.module.code
    assert "same_pad2d" in code  # the dynamic SAME pad of 'down', computed from the input size
    sim = quantize_model(net, plan, [x])
    with torch.no_grad():
        ref, simulated, deployed = net(x), sim(x), dep.module(x)
    assert float(F.cosine_similarity(deployed, ref).min()) > 0.999
    assert float(F.cosine_similarity(deployed, simulated).min()) > 0.999


@pytest.mark.parametrize("layer", ["stem", "down"])  # a static ZeroPad2d pre-op, a dynamic SAME pad
def test_a_bf16_layer_with_a_same_padding_pre_op_deploys_with_its_pad_in_front(layer):
    torch.manual_seed(0)
    net = SameNet().eval()
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", net)
    plan = QuantPlan({**plan.layers, layer: QuantSpec(w_bits=16, a_bits=16, float16_format="bfloat16")})
    dep = deploy(net, plan, x)
    table = dep.table().set_index("layer")
    assert table.loc[layer, "precision"] == "bf16"
    assert set(table.drop(index=layer)["precision"]) == {"int8"}
    assert isinstance(dep.module.get_submodule(f"{layer}.1"), Bf16Layer)  # the conv behind its pad
    assert table.loc[layer, "kernel"].endswith("Bf16Layer")  # the table names it, not the pad's container
    assert not any(layer in n and "fused away" in n for n in dep.notes)
    sim = quantize_model(net, plan, [x])
    with torch.no_grad():
        ref, simulated, deployed = net(x), sim(x), dep.module(x)
    assert float(F.cosine_similarity(deployed, simulated).min()) > 0.999
    assert float(F.cosine_similarity(deployed, ref).min()) > 0.999
