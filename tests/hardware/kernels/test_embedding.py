import copy

import pytest
import torch
from torch import nn

from workbench.hardware.kernels import PackedEmbedding, deploy_layers
from workbench.quant import QuantPlan, QuantSpec
from workbench.quant.swap import quantize_model


@pytest.mark.parametrize(
    ("spec", "nibbles"),
    [
        (QuantSpec(w_bits=4, a_bits=32, granularity="per_group", group_size=8), True),
        (QuantSpec(w_bits=4, w_symmetric=False), True),
        (QuantSpec(w_bits=8, a_bits=8), False),
        (QuantSpec(w_bits=6, granularity="per_group", group_size=12, w_symmetric=False), False),
    ],
)
def test_packed_lookup_gives_the_simulated_rows_exactly(spec, nibbles):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 24))
    plan = QuantPlan({"0": spec})
    sim = quantize_model(model, plan, None).eval()
    dep = copy.deepcopy(sim)
    choices, _ = deploy_layers(dep, sim, plan, ["0"])
    assert choices[0].name == "packed_lookup" and isinstance(dep[0], PackedEmbedding)
    assert dep[0].nibbles is nibbles
    assert dep[0].codes.dtype == torch.uint8 and dep[0].codes.shape[1] == (12 if nibbles else 24)
    ids = torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        assert torch.equal(dep(ids), sim(ids))
