import copy

import torch
from torch import nn
from torch.nn import functional as F

from workbench.hardware.kernels import deploy_layers
from workbench.quant import QuantPlan, QuantSpec
from workbench.quant.swap import quantize_model


def test_int8_dynamic_kernel_carries_the_simulated_codes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16)).eval()
    spec = QuantSpec(w_bits=8, a_bits=8, a_dynamic=True)
    plan = QuantPlan({"0": spec, "2": spec})
    sim = quantize_model(model, plan, None).eval()
    dep = copy.deepcopy(sim)
    choices, _ = deploy_layers(dep, sim, plan, ["0", "2"])
    assert [c.name for c in choices] == ["int8_dynamic", "int8_dynamic"]
    w = dep[0].weight()  # the packed per-channel int8 weight
    with torch.no_grad():
        torch.testing.assert_close(w.dequantize(), sim[0].quantized_weight(), rtol=0, atol=1e-6)
    x = torch.randn(8, 64)
    with torch.no_grad():
        cos = F.cosine_similarity(sim(x).flatten(), dep(x).flatten(), dim=0).item()
    assert (
        cos >= 0.999
    )  # the kernel's own (7-bit on x86) activation grid per batch, not the simulated 8-bit one
