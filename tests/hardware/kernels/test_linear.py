import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from workbench.hardware.kernels import (
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    KernelError,
    KernelFallbackWarning,
    choose_kernel,
    deploy_layers,
)
from workbench.quant import QuantPlan, QuantSpec
from workbench.quant.swap import quant_modules, quantize_model


def _model(out: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, out)).eval()


def _deployed(spec: QuantSpec, *, out: int = 32, strict: bool = False):
    model = _model(out)
    plan = QuantPlan({"0": spec, "2": spec})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = quantize_model(model, plan, None).eval()
    dep = copy.deepcopy(sim)
    choices, notes = deploy_layers(dep, sim, plan, ["0", "2"], strict=strict)
    return sim, dep, choices, notes


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize(
    ("spec", "kernel", "module"),
    [
        (QuantSpec(w_bits=8, a_bits=32), "int8_weight_only", Int8WeightOnlyLinear),
        (QuantSpec(w_bits=6, a_bits=32, w_symmetric=False), "int8_weight_only", Int8WeightOnlyLinear),
        (QuantSpec(w_bits=4, a_bits=32, granularity="per_group", group_size=32), "int4_weight_only", Int4WeightOnlyLinear),
        (QuantSpec(w_bits=4, a_bits=32, granularity="per_group", group_size=64, w_symmetric=False), "int4_weight_only", Int4WeightOnlyLinear),
        (QuantSpec(w_bits=4, a_bits=32), "int4_weight_only", Int4WeightOnlyLinear),
        (QuantSpec(w_bits=3, a_bits=16, granularity="per_group", group_size=32), "int4_weight_only", Int4WeightOnlyLinear),
    ],
)  # fmt: skip
def test_weight_only_kernels_reproduce_the_simulation(spec, kernel, module):
    sim, dep, choices, _ = _deployed(spec)
    assert [c.name for c in choices] == [kernel, kernel]
    assert isinstance(dep[0], module) and isinstance(dep[2], module)
    x = torch.randn(8, 64)
    with torch.no_grad():
        ref, out = sim(x), dep(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert _cosine(ref, out) >= 0.9999
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max()  # bf16 activations: about 3 significant digits


def test_int4_kernel_bakes_the_simulated_codes_exactly():
    spec = QuantSpec(w_bits=4, a_bits=32, granularity="per_group", group_size=32)
    sim, dep, _, _ = _deployed(spec, out=10)  # 10 outputs: zero rows pad the kernel to 16, sliced away
    twin = quant_modules(sim)["2"]
    eye = torch.eye(128)  # the kernel on the identity gives its weight back (bf16 scales, exact codes)
    with torch.no_grad():
        w_kernel = (dep[2](eye) - dep[2].bias).t()
        w_sim = twin.quantized_weight()
    scale = twin.w_quant.scale.reshape(10, -1).repeat_interleave(32, dim=1)
    codes_kernel = (w_kernel / scale).round()
    assert torch.equal(codes_kernel, (w_sim / scale).round())
    assert codes_kernel.abs().max() == 7  # a symmetric 4-bit grid


def test_unsupported_weight_only_spec_falls_back_with_a_named_reason():
    spec = QuantSpec(w_bits=8, a_bits=32, granularity="per_group", group_size=32)  # 8-bit codes, group scales
    with pytest.warns(
        KernelFallbackWarning, match=r"0: no linear kernel.*int8_weight_only: per-group scales"
    ):
        sim, dep, choices, notes = _deployed(spec)
    assert [c.name for c in choices] == ["fallback", "fallback"]
    assert "int4_weight_only: 8-bit codes do not fit 4 bits" in choices[0].reason
    assert type(dep[0]).__name__ == "QuantLinear"  # untouched: the simulation twin, same numerics
    with pytest.raises(KernelError, match="strict"):
        _deployed(spec, strict=True)


def test_group_size_the_int4_kernel_lacks_is_named():
    spec = QuantSpec(w_bits=4, a_bits=32, granularity="per_group", group_size=16)
    choice = choose_kernel(
        "fc",
        quant_modules(quantize_model(_model(), QuantPlan({"0": spec}), None, warn_float=False))["0"],
        spec,
    )
    assert choice.handler is None and "group_size=16 on 64 inputs" in choice.reason


def test_specs_map_to_their_kernels():
    layer = nn.Linear(64, 32)
    cases = {
        None: "fp32",
        QuantSpec(w_bits=32, a_bits=32): "fp32",
        QuantSpec(w_bits=16, a_bits=16): "bf16",
        QuantSpec(w_bits=8, a_bits=8): "int8_static",
        QuantSpec(w_bits=4, a_bits=8): "int8_static",
        QuantSpec(w_bits=8, a_bits=8, a_dynamic=True): "int8_dynamic",
        QuantSpec(w_bits=8, a_bits=32): "int8_weight_only",
        QuantSpec(w_bits=2, a_bits=32): "int4_weight_only",
    }
    for spec, name in cases.items():
        assert choose_kernel("fc", layer, spec).name == name, spec
