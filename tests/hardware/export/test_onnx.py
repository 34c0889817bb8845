import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.nn import functional as F

from workbench.hardware.export.onnx import (
    OnnxConfig,
    OnnxExportError,
    OnnxRuntimeModel,
    export_module,
    export_onnx,
)
from workbench.quant import QuantPlan, QuantSpec
from workbench.quant.swap import quantize_model
from workbench.transformer_task import BertConfig, DigitsBert

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cos(a, b) -> float:
    return float(F.cosine_similarity(torch.as_tensor(a).flatten(1), torch.as_tensor(b).flatten(1)).min())


def test_export_twins_compute_the_simulation_in_torch(small_net):
    model, plan, calib, x = small_net
    sim = quantize_model(model, plan, [(c,) for c in calib], warn_float=False)
    mod, rows, notes = export_module(sim, OnnxConfig())
    with torch.no_grad():
        assert torch.allclose(mod(x), sim(x), atol=1e-6, rtol=0)
    by = {r.layer: r for r in rows}
    assert by["dw"].activations == "qdq uint8 per tensor (clamped to the grid)"  # 4-bit grid in a uint8
    assert by["fc1"].weights == "matmul_nbits 4-bit block 32" and by["fc1"].activations == "float"
    assert by["fc2"].weights.startswith("dq") and "per tensor" in by["fc2"].weights
    assert "fc0" not in by and notes == []  # float layers are exported as they are


def test_mixed_cnn_runs_in_a_plain_session_as_simulated(small_net, tmp_path):
    model, plan, calib, x = small_net
    path = tmp_path / "net.onnx"
    exp = export_onnx(model, plan, calib, path)
    with torch.no_grad():
        sim = exp.simulated(x).numpy()
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "MatMulNBits", "Conv"} <= ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # no workbench in the way
    assert [i.name for i in session.get_inputs()] == ["input"]
    out = session.run(None, {"input": x.numpy()})[0]
    assert out.shape == (6, 10) and _cos(out, sim) >= 0.999
    exact = OnnxRuntimeModel(path, threads=1, optimization="basic")(x)  # float kernels on dequantized values
    assert np.abs(exact.numpy() - sim).max() < 1e-4
    assert tuple(session.run(None, {"input": x[:1].numpy()})[0].shape) == (1, 10)  # dynamic batch


def test_weight_only_transformer_matches_simulation(tmp_path):
    torch.manual_seed(0)
    model = DigitsBert(BertConfig(hidden=32, layers=1, heads=2, intermediate=64, dropout=0.0)).eval()
    specs = {"embeddings.word_embeddings": QuantSpec(w_bits=8, a_bits=32)}
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for i, name in enumerate(linears):
        specs[name] = (
            QuantSpec(w_bits=4, a_bits=32, granularity="per_group", group_size=16)
            if i % 2
            else QuantSpec(w_bits=8, a_bits=32)
        )
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 15, (4, 12), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    exp = export_onnx(model, QuantPlan(specs), batch, tmp_path / "bert.onnx")
    assert exp.input_names == ["input_ids", "attention_mask"]
    table = exp.table().set_index("layer")
    assert table.loc["encoder.layer.0.attention.self.key", "weights"] == "matmul_nbits 4-bit block 16"
    assert table.loc["embeddings.word_embeddings", "weights"] == "dq int8 per channel"
    ids2 = torch.randint(1, 15, (3, 12), generator=gen)
    mask = torch.ones_like(ids2)
    mask[:, 9:] = 0
    x = {"attention_mask": mask, "input_ids": ids2}  # names, not order, decide
    with torch.no_grad():
        sim = exp.simulated(**x).logits
    out = exp.session(threads=1)(x)
    assert _cos(out, sim) >= 0.999 and float((out - sim).abs().max()) < 1e-4


def test_unsupported_layer_is_named(small_net, tmp_path):
    model, plan, calib, _ = small_net
    specs = plan.to_dict()
    specs["c2"] = {**specs["c2"], "a_dynamic": True}
    bad = QuantPlan.from_dict(specs)
    with pytest.raises(OnnxExportError, match=r"c2: dynamic activation ranges"):
        export_onnx(model, bad, calib, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    exp = export_onnx(model, bad, calib, tmp_path / "fb.onnx", config=OnnxConfig(on_unsupported="float"))
    assert any(n.startswith("c2: float fallback") for n in exp.notes)
    assert exp.table().set_index("layer").loc["c2", "activations"] == "float"


def test_config_and_session_validate():
    with pytest.raises(ValueError, match="on_unsupported='skip'"):
        OnnxConfig(on_unsupported="skip")
    with pytest.raises(ValueError, match="opset=18"):
        OnnxConfig(opset=18)
    with pytest.raises(ValueError, match="optimization='max'"):
        OnnxRuntimeModel("nowhere.onnx", optimization="max")
