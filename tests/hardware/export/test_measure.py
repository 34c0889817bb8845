import pytest

from workbench.hardware.export.measure import OnnxCompareConfig, compare_onnx
from workbench.quant import QuantPlan, QuantSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_onnx_runtime_beside_torch_ao_and_fp32(small_net, tmp_path):
    model, plan, calib, x = small_net
    plan = QuantPlan(
        {**plan.layers, "fc2": QuantSpec(w_bits=8, a_bits=8)}
    )  # per channel: torch.ao deploys it
    cfg = OnnxCompareConfig(threads=1, repeats=1, warmup=0)
    df, export = compare_onnx(model, plan, calib, x, tmp_path / "net.onnx", config=cfg)
    rows = df.set_index("variant")
    assert list(rows.index) == ["fp32", "torch_ao", "onnx_fp32", "onnx"]
    assert rows.loc["onnx", "cosine_to_sim"] >= 0.999 and rows.loc["torch_ao", "cosine_to_sim"] >= 0.99
    assert rows.loc["fp32", "speedup_vs_fp32"] == 1.0 and (rows["median_ms"] > 0).all()
    assert rows.loc["onnx", "samples"] == 6 and df.attrs["threads"] == 1 and df.attrs["onnx_size_mb"] > 0
    assert export.path.exists()


def test_compare_config_validates():
    with pytest.raises(ValueError, match="optimizations=\\('fast',\\)"):
        OnnxCompareConfig(optimizations=("fast",))
