import pytest
import torch
from torch import nn

from workbench.hardware.export.modules import container, nbits_packing
from workbench.hardware.export.onnx import OnnxConfig, export_module, export_onnx
from workbench.hardware.kernels.codes import weight_codes
from workbench.quant import QuantPlan, QuantSpec
from workbench.quant.swap import quant_modules, quantize_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_container_is_the_narrowest_integer_type():
    assert container(0, 15) == torch.uint8 and container(-127, 127) == torch.int8
    assert container(0, 1023) == torch.uint16 and container(-40000, 0) is None


@pytest.mark.parametrize(
    ("spec", "bits", "block"),
    [
        (QuantSpec(w_bits=4, a_bits=32, w_symmetric=False), 4, 32),  # asymmetric, K=40: one scale per row
        (QuantSpec(w_bits=6, a_bits=32), 8, 32),  # a 6-bit grid stored on 8 bits
        (QuantSpec(w_bits=3, a_bits=32, granularity="per_group", group_size=16), 4, 16),
    ],
)
def test_weight_only_linear_packs_for_matmul_nbits_exactly(spec, bits, block, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 5)).eval()
    plan = QuantPlan({"0": spec})
    sim = quantize_model(model, plan, warn_float=False)
    packing = nbits_packing(weight_codes(quant_modules(sim)["0"]))
    assert packing[:2] == (bits, block)
    mod, rows, _ = export_module(sim, OnnxConfig())
    assert rows[0].weights == f"matmul_nbits {bits}-bit block {block}"
    x = torch.randn(3, 40)
    with torch.no_grad():
        assert torch.allclose(mod(x), sim(x), atol=1e-5, rtol=0)
    out = export_onnx(model, plan, x, tmp_path / "m.onnx", simulated=sim).session(threads=1)(x)
    assert torch.allclose(out, sim(x).detach(), atol=1e-4, rtol=0)


def test_group_matmul_nbits_cannot_take_falls_back_to_dequantize_with_a_note():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 8)).eval()
    plan = QuantPlan({"0": QuantSpec(w_bits=4, a_bits=32, granularity="per_group", group_size=10)})
    sim = quantize_model(model, plan, warn_float=False)
    mod, rows, notes = export_module(sim, OnnxConfig())
    assert rows[0].weights == "dq int8 group 10"
    assert notes == ["0: weight-only Linear as DequantizeLinear + MatMul, not MatMulNBits (group size 10 is not "
                     "one MatMulNBits takes (128, 64, 32, 16))"]  # fmt: skip
    x = torch.randn(2, 40)
    with torch.no_grad():
        assert torch.allclose(mod(x), sim(x), atol=1e-6, rtol=0)
