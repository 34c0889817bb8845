"""The per-sample activation granularity: one dynamic range per input of the batch (dim 0)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.quant import QuantPlan, QuantSpec, quantize_model
from workbench.quant.modules import ActQuantizer
from workbench.quant.spec import PlanError

PER_SAMPLE = QuantSpec(w_bits=4, a_bits=4, a_dynamic=True, a_granularity="per_sample")


def _reference(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric fake quantization with one min-max range per sample, extended to contain 0."""
    flat = x.reshape(x.shape[0], -1)
    lo, hi = flat.amin(1).clamp(max=0.0), flat.amax(1).clamp(min=0.0)
    levels = 2**bits - 1
    scale = ((hi - lo) / levels).clamp(min=1e-12)
    zero = torch.round(-lo / scale)
    shape = (-1,) + (1,) * (x.dim() - 1)
    s, z = scale.view(shape), zero.view(shape)
    return (torch.clamp(torch.round(x / s) + z, 0, levels) - z) * s


def test_per_sample_needs_a_dynamic_range_and_errors_name_the_choices():
    with pytest.raises(PlanError, match=r"needs a_dynamic=True.*'per_tensor', 'per_channel'"):
        QuantSpec(a_granularity="per_sample")
    with pytest.raises(PlanError, match=r"'per_tensor', 'per_channel' or, with a_dynamic=True, 'per_sample'"):
        QuantSpec(a_granularity="per_row", a_dynamic=True)
    assert QuantSpec.from_dict(PER_SAMPLE.to_dict()) == PER_SAMPLE


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_sample_quantizer_matches_the_reference_bit_for_bit(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(5, 3, 4, 4, generator=g) * torch.tensor([0.1, 1.0, 7.0, 1.0, 1.0]).view(-1, 1, 1, 1)
    x[3] = 0.0  # an all-zero input keeps a zero output
    x[4] = x[4].abs() + 0.5  # an all-positive input: its range is extended down to 0
    q = ActQuantizer(QuantSpec(a_bits=bits, a_dynamic=True, a_granularity="per_sample"))
    out = q(x)
    assert torch.equal(out, _reference(x, bits))
    assert torch.equal(out[3], torch.zeros_like(out[3]))
    # each input's grid follows its own range: the small input 0 keeps an error of at most half its own step
    step = float(x[0].max().clamp(min=0) - x[0].min().clamp(max=0)) / (2**bits - 1)
    assert float((out[0] - x[0]).abs().max()) <= step / 2 + 1e-6


def test_an_input_does_not_change_the_others_quantization():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    q = ActQuantizer(QuantSpec(a_bits=4, a_dynamic=True, a_granularity="per_sample"))
    x2 = x.clone()
    x2[1] *= 10.0
    out, out2 = q(x), q(x2)
    assert torch.equal(out[[0, 2, 3]], out2[[0, 2, 3]]) and not torch.equal(out[1], out2[1])
    per_tensor = ActQuantizer(QuantSpec(a_bits=4, a_dynamic=True))
    assert not torch.equal(per_tensor(x)[0], per_tensor(x2)[0])  # a batch-wide range would


def test_quantize_model_runs_per_sample_specs_without_calibration():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 3)).eval()
    qmodel = quantize_model(model, QuantPlan({"0": PER_SAMPLE, "3": PER_SAMPLE}))
    x = torch.randn(3, 2, 8)
    with torch.no_grad():
        both = qmodel(x)
        alone = qmodel(x[1:2])
    torch.testing.assert_close(both[1:2], alone, rtol=0, atol=1e-5)  # batched kernels round apart
    assert (both - model(x)).abs().max() < 0.5
