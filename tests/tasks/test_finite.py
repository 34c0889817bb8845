"""A model whose outputs are NaN / Inf is refused wherever it is evaluated (FP32 and quantized: task evaluation,
the quantize CLI, sensitivity, the search evaluator, the predictor's measurements), naming the model and the
split, before any figure is printed (before: ``quantize`` printed "accuracy 0.2188, drop 0 pp", the argmax of
NaN)."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench.cli import main
from workbench.quant import QuantPlan, QuantSpec, quantize_model
from workbench.tasks import NonFiniteOutputError, task_from_model
from workbench.tasks.finite import check_finite_output

NAN_MODEL = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench.tasks import task_from_model


class Poison(nn.Module):
    """Multiplies by ``value`` (NaN or Inf): a model broken after its last layer."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x):
        return x * self.value


def make_task(value: float = float("nan")):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4), Poison(value)).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 4, 4, generator=g), torch.randint(0, 4, (32,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    return task_from_model(model, calib_loader=loader, val_loader=loader, test_loader=loader, name="nan_task")


def make_inf_task():
    return make_task(float("inf"))
'''


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "nan_task.py"
    path.write_text(textwrap.dedent(NAN_MODEL))
    return path


def _task(task_file, func: str = "make_task"):
    from workbench.tasks import load_task_file

    return load_task_file(f"{task_file}:{func}")


def _w4(model: nn.Module) -> QuantPlan:
    return QuantPlan({"1": QuantSpec(w_bits=4, a_bits=8), "3": QuantSpec(w_bits=4, a_bits=8)})


def test_check_finite_output_names_model_split_batch_and_counts() -> None:
    ok = torch.ones(3)
    assert check_finite_output(ok, model="m", split="val") is ok
    assert check_finite_output(torch.arange(3), model="m", split="val") is not None  # integers pass
    bad = torch.tensor([1.0, float("nan"), float("inf"), 2.0])
    with pytest.raises(
        NonFiniteOutputError, match=r"model m gave .* the test split \(batch 2\): 2 of 4 .*\(1 NaN\)"
    ):
        check_finite_output(bad, model="model m", split="test", batch=2)


@pytest.mark.parametrize("func", ["make_task", "make_inf_task"])
def test_task_evaluate_refuses_nan_or_inf_outputs_of_fp32_and_quantized_models(task_file, func) -> None:
    task = _task(task_file, func)
    with pytest.raises(
        NonFiniteOutputError, match=r"FP32 model Sequential of task 'nan_task' .* test split \(batch 0\)"
    ):
        task.evaluate()
    with pytest.raises(NonFiniteOutputError, match=r"the val split"):
        task.evaluate(split="val")
    qmodel = quantize_model(task.model, _w4(task.model), task.calib_loader)
    with pytest.raises(
        NonFiniteOutputError, match=r"evaluated \(quantized or deployed\) model .* 'nan_task'"
    ):
        task.evaluate(qmodel, "test")
    assert not task.model._forward_hooks and not qmodel._forward_hooks  # the check leaves no hook behind


def test_a_finite_model_scores_as_before_and_keeps_no_hook() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()
    x, y = torch.randn(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    task = task_from_model(model, calib_loader=loader, val_loader=loader, test_loader=loader)
    expected = float((model(x).argmax(1) == y).double().mean())
    assert task.evaluate() == pytest.approx(expected) and not model._forward_hooks


def test_quantize_cli_on_a_nan_model_fails_before_printing_a_figure(task_file, capsys) -> None:
    rc = main(["quantize", "--task", f"{task_file}:make_task", "--plan", "uniform:w4a8", "--no-track"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "FP32 model Sequential of task 'nan_task'" in err and "test split" in err and "NaN" in err
    assert "accuracy" not in out and "drop" not in out


def test_sensitivity_search_and_predictor_refuse_a_nan_fp32_model(task_file) -> None:
    from workbench.predictor.measure import _reference
    from workbench.search.evaluator import PlanEvaluator
    from workbench.sensitivity import SensitivityConfig, analyze_sensitivity

    task = _task(task_file)
    cfg = SensitivityConfig(metrics=("output_mse",), w_bits=(4,), a_bits=())
    with pytest.raises(NonFiniteOutputError, match=r"FP32 model .* 'nan_task' .* the calib split"):
        analyze_sensitivity(task, cfg, track=False)
    with pytest.raises(NonFiniteOutputError, match=r"FP32 model .* the val split"):
        _ = PlanEvaluator(task, split="val").fp32_accuracy
    with pytest.raises(NonFiniteOutputError, match=r"FP32 model .* the val split"):
        _reference(task, "val")
