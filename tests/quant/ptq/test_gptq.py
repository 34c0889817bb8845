"""gptq: the column loop's exactness, conv unfolding, and the step inside quantize_model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from workbench.quant import QuantPlan, quantize_model
from workbench.quant.ptq import GptqConfig, PtqSkipWarning
from workbench.quant.ptq.gptq import (
    _inverse_cholesky,
    _row_errors,
    columns,
    refine,
    round_columns,
    search_clip,
)
from workbench.quant.spec import PlanError


def _grid(w: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    qmax = 2 ** (bits - 1) - 1
    scale = (w.abs().amax(2, keepdim=True) / qmax).expand_as(w)
    return {
        "scale": scale,
        "zero_point": torch.zeros_like(w),
        "qmin": torch.full_like(w, -qmax - 1),
        "qmax": torch.full_like(w, qmax),
    }


def test_round_columns_lowers_the_hessian_weighted_error_and_stays_on_the_grid():
    g = torch.Generator().manual_seed(0)
    # correlated inputs: where error feedback pays
    mix = torch.randn(2, 16, 4, generator=g, dtype=torch.float64)
    x = mix @ torch.randn(2, 4, 400, generator=g, dtype=torch.float64)
    x = x + 0.1 * torch.randn(2, 16, 400, generator=g, dtype=torch.float64)
    h = torch.bmm(x, x.transpose(1, 2))
    w = torch.randn(2, 6, 16, generator=g, dtype=torch.float64)
    q = _grid(w, 3)
    nearest = (torch.clamp(torch.round(w / q["scale"]), q["qmin"], q["qmax"])) * q["scale"]
    gptq = round_columns(w, _inverse_cholesky(h, 0.01), q, block=5)  # blocks split the 16 columns unevenly

    def err(v: torch.Tensor) -> float:
        return float(torch.bmm(v - w, x).pow(2).sum())

    assert err(gptq) < 0.5 * err(nearest)
    codes = gptq / q["scale"]
    assert torch.allclose(codes, codes.round(), atol=1e-9)
    assert bool((codes >= q["qmin"]).all() and (codes <= q["qmax"]).all())


def test_identity_hessian_gives_nearest_rounding():
    w = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q = _grid(w, 4)
    out = round_columns(w, torch.eye(8, dtype=torch.float64).unsqueeze(0), q, block=3)
    assert torch.equal(out, torch.round(w / q["scale"]) * q["scale"])


@pytest.mark.parametrize("groups,stride,padding", [(1, 1, 1), (4, 2, 0), (8, 1, 1)])
def test_columns_reproduce_the_convolution(groups, stride, padding):
    conv = nn.Conv2d(8, 8, 3, stride=stride, padding=padding, groups=groups, bias=False)
    x = torch.randn(2, 8, 7, 7)
    cols = columns(conv, x)  # [groups, fan_in/groups, positions]
    w = conv.weight.reshape(groups, 8 // groups, -1)
    out = torch.bmm(w, cols)  # [groups, out/groups, n*L]
    ref = conv(x)
    n, c, ho, wo = ref.shape
    ref = ref.reshape(n, groups, c // groups, ho * wo).permute(1, 2, 0, 3).reshape(groups, c // groups, -1)
    assert torch.allclose(out, ref, atol=1e-5)


def test_gptq_beats_nearest_rounding_in_quantize_model(ir_model, ir_data):
    plan = QuantPlan.from_shorthand("uniform:w3a8:per_channel", ir_model)
    x = torch.cat([b[0] for b in ir_data])
    with torch.no_grad():
        ref = ir_model(x)
        base = quantize_model(ir_model, plan, ir_data)(x)
        q = quantize_model(ir_model, plan, ir_data, ptq=[GptqConfig(calib_samples=48)])
        out = q(x)
    assert set(q.ptq_reports["gptq"]) == {"expand", "dw", "project", "fc"}
    assert float(F.mse_loss(out, ref)) < 0.8 * float(F.mse_loss(base, ref))
    kept = [n for n, r in q.ptq_reports["gptq"].items() if r["kept"] != "nearest"]
    assert len(kept) >= 3
    for name in kept:  # rounded weights sit on the grid
        layer = q.get_submodule(name)
        assert torch.allclose(layer.quantized_weight(), layer.weight, atol=1e-6)


def test_gptq_names_what_it_skips_and_rejects_bad_configs(ir_model, ir_data):
    with pytest.warns(PtqSkipWarning, match="'gptq' skipped every layer"):
        quantize_model(
            ir_model, QuantPlan.from_shorthand("uniform:w8a8:per_channel", ir_model), ir_data,
            ptq=[GptqConfig(max_bits=4)],
        )  # fmt: skip
    with pytest.raises(PlanError, match="target='output'"):
        GptqConfig(target="output")
    with pytest.raises(PlanError, match="needs calibration data"):
        quantize_model(ir_model, QuantPlan.from_shorthand("uniform:w4:per_channel", ir_model), ptq=["gptq"])


def test_refine_never_raises_any_row_error():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 12, 4, generator=g, dtype=torch.float64) @ torch.randn(3, 4, 200, generator=g).double()
    h = torch.bmm(x, x.transpose(1, 2)) + 0.01 * torch.eye(12, dtype=torch.float64)
    w = torch.randn(3, 5, 12, generator=g, dtype=torch.float64)
    q = _grid(w, 3)
    nearest = torch.clamp(torch.round(w / q["scale"]), q["qmin"], q["qmax"]) * q["scale"]
    out = refine(w, nearest, h, q, sweeps=3)
    before, after = _row_errors(w - nearest, h), _row_errors(w - out, h)
    assert bool((after <= before * (1 + 1e-12)).all())
    assert float(after.sum()) < 0.6 * float(before.sum())
    codes = out / q["scale"]
    assert torch.allclose(codes, codes.round(), atol=1e-9)


def test_clip_search_shrinks_scales_where_an_outlier_wastes_the_grid():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 6))
    with torch.no_grad():
        model[0].weight.normal_()
        model[0].weight[:, 0] = 12.0  # one outlier per row: min-max scales waste most of the 3-bit grid
    q = quantize_model(model, QuantPlan.from_shorthand("uniform:w3:per_channel", model))
    layer = q.get_submodule("0")
    w = layer.weight.detach().double().reshape(1, 6, 32)
    h = torch.eye(32, dtype=torch.float64).unsqueeze(0)
    h[0, 0, 0] = 0.01  # the outliers' input is small: clipping them costs little

    def err() -> float:
        return float(_row_errors(w - layer.quantized_weight().detach().double().reshape(1, 6, 32), h).sum())

    before = err()
    ratio = search_clip(layer, w, h, (1.0, 0.8, 0.6, 0.4))
    assert ratio < 1.0
    assert err() < 0.8 * before
    assert search_clip(layer, w, h, (1.0,)) == 1.0  # a single ratio leaves the scales alone
