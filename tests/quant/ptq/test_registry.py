"""The PTQ registry: fixed order, validation, errors and skips, the CLI and search knobs."""

from __future__ import annotations

import pytest
import torch

from workbench.quant import PlanError, QuantPlan, quantize_model
from workbench.quant.ptq import (
    DEFAULT_PTQ,
    AdaRoundConfig,
    BiasCorrectionConfig,
    CleConfig,
    parse_ptq,
    ptq_step_names,
    resolve_ptq,
)


def test_the_order_is_fixed_by_the_registry():
    assert ptq_step_names() == ("cle", "ranges", "gptq", "adaround", "bias_correction")
    steps = resolve_ptq(["bias_correction", AdaRoundConfig(iterations=3), "cle", "ranges"])
    assert [s.name for s, _ in steps] == ["cle", "ranges", "adaround", "bias_correction"]
    assert steps[2][1].iterations == 3
    assert parse_ptq("bias_correction, cle") == ("bias_correction", "cle")
    assert parse_ptq("none") == () and parse_ptq("") == ()
    assert set(DEFAULT_PTQ) <= set(ptq_step_names())


def test_bad_steps_are_named_with_the_valid_ones():
    with pytest.raises(
        PlanError, match="'bogus' unknown; valid steps: cle, ranges, gptq, adaround, bias_correction"
    ):
        resolve_ptq(["cle", "bogus"])
    with pytest.raises(PlanError, match="given twice"):
        resolve_ptq(["cle", CleConfig()])
    with pytest.raises(PlanError, match="names or step configs, got int"):
        resolve_ptq([3])
    with pytest.raises(PlanError, match="relu6='clip' unknown"):
        CleConfig(relu6="clip")


@pytest.mark.parametrize("step", ["adaround", "bias_correction", "ranges"])
def test_steps_that_need_data_say_so(ir_model, step):
    plan = QuantPlan.from_shorthand("uniform:w4:per_channel", ir_model)  # weight-only: no calibration needed
    with pytest.raises(PlanError, match=f"PTQ step '{step}' needs calibration data"):
        quantize_model(ir_model, plan, None, ptq=[step])


def test_bad_names_fail_before_any_work(ir_model, ir_data):
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", ir_model)
    with pytest.raises(PlanError, match="valid steps"):
        quantize_model(ir_model, plan, ir_data, ptq="cle,bogus")


def test_all_steps_together_keep_the_callers_model(ir_model, ir_data):
    before = {k: v.clone() for k, v in ir_model.state_dict().items()}
    plan = QuantPlan.from_shorthand("uniform:w4a8:per_channel", ir_model)
    steps = ["bias_correction", "cle", AdaRoundConfig(iterations=10), "ranges"]
    q = quantize_model(ir_model, plan, ir_data, ptq=steps)
    assert list(q.ptq_reports) == ["cle", "ranges", "adaround", "bias_correction"]
    assert all(torch.equal(before[k], v) for k, v in ir_model.state_dict().items())
    x = torch.cat([b[0] for b in ir_data])
    base = quantize_model(ir_model, plan, ir_data)
    with torch.no_grad():
        ref = ir_model(x)
        assert (q(x) - ref).pow(2).mean() < (base(x) - ref).pow(2).mean()
    q2 = quantize_model(ir_model, plan, ir_data, ptq=[BiasCorrectionConfig(calib_samples=8)])
    assert set(q2.ptq_reports) == {"bias_correction"}


def test_cli_rejects_a_bogus_step(capsys):
    from workbench.cli import main

    assert (
        main(["quantize", "--model", "digits_cnn", "--plan", "uniform:w8a8:per_channel", "--ptq", "bogus"])
        == 2
    )
    err = capsys.readouterr().err
    assert "'bogus' unknown" in err and "cle, ranges, gptq, adaround, bias_correction" in err


def test_search_config_validates_and_keys_ptq():
    from workbench.search.config import SearchConfig, SearchError

    assert SearchConfig(ptq="cle,bias_correction").ptq == ("cle", "bias_correction")
    assert SearchConfig().ptq == ()
    with pytest.raises(SearchError, match="valid steps"):
        SearchConfig(ptq=("nope",))
    cfg = SearchConfig(ptq=("cle",))
    assert SearchConfig.from_dict(cfg.to_dict()).ptq == ("cle",)


def test_a_ptq_model_packs_and_loads_to_the_same_outputs(ir_model, ir_data, tmp_path):
    from workbench.quant import load_packed, save_packed

    plan = QuantPlan.from_shorthand("uniform:w4a8:per_channel", ir_model)
    q = quantize_model(
        ir_model, plan, ir_data, ptq=["cle", "ranges", AdaRoundConfig(iterations=10), "bias_correction"]
    )
    save_packed(q, tmp_path / "m.wbq")
    back = load_packed(tmp_path / "m.wbq", ir_model)
    x = torch.cat([b[0] for b in ir_data])
    with torch.no_grad():
        assert torch.allclose(back(x), q(x), atol=1e-5)
