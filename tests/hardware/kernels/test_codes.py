import torch
from torch import nn

from workbench.hardware.kernels import weight_codes
from workbench.quant import QuantPlan, QuantSpec
from workbench.quant.swap import quant_modules, quantize_model


def _twin(spec: QuantSpec, fan_in: int = 40) -> nn.Module:
    torch.manual_seed(0)
    return quant_modules(quantize_model(nn.Sequential(nn.Linear(fan_in, 16)), QuantPlan({"0": spec}), None))[
        "0"
    ]


def test_codes_rebuild_the_simulated_weight_bit_for_bit():
    for spec in (
        QuantSpec(
            w_bits=4, a_bits=32, granularity="per_group", group_size=16
        ),  # 40 inputs: a padded last group
        QuantSpec(w_bits=5, a_bits=32, w_symmetric=False),
        QuantSpec(w_bits=8, a_bits=32, granularity="per_tensor"),
        QuantSpec(w_bits=4, a_bits=32, sparsity=0.5),
        QuantSpec(w_bits=8, a_bits=32, channel_bits=[4] * 8 + [8] * 8),
    ):
        twin = _twin(spec)
        codes = weight_codes(twin)
        assert not isinstance(codes, str), (spec, codes)
        with torch.no_grad():
            assert torch.equal(codes.weight(), twin.quantized_weight()), spec
        assert codes.scale.shape == (16, 3 if spec.granularity == "per_group" else 1)


def test_weights_not_on_one_grid_are_named():
    assert "low-rank" in weight_codes(_twin(QuantSpec(w_bits=8, a_bits=32, rank_ratio=0.5)))
    assert "float" in weight_codes(_twin(QuantSpec(w_bits=16, a_bits=16)))
