"""QAT loss terms: distillation and the quantization loss."""

from __future__ import annotations

import pytest
import torch

from workbench.qat import QATConfig, distillation_loss, quantization_loss, train_steps
from workbench.quant import QuantPlan, quantize_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_distillation_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 10, generator=g)
    assert float(distillation_loss(logits, logits.clone(), 4.0)) == 0.0
    other = logits + torch.randn(8, 10, generator=g)
    student = logits.clone().requires_grad_(True)
    loss = distillation_loss(student, other, 2.0)
    assert float(loss.detach()) > 0.01
    loss.backward()
    assert student.grad.abs().sum() > 0


def test_quant_loss_decreases(tiny_task):
    plan = QuantPlan.from_shorthand("uniform:w4a8:per_channel", tiny_task.model)
    ptq = quantize_model(tiny_task.model, plan, tiny_task.calib_loader)
    q0 = float(quantization_loss(ptq).detach())
    config = QATConfig(scale_mode="frozen", quant_loss_weight=100.0, lr=2e-3, schedule="constant")
    r = train_steps(tiny_task, plan, config, max_steps=8)
    q1 = float(quantization_loss(r.model).detach())
    assert 0 < q1 < 0.7 * q0, (q0, q1)
    assert r.history["quant_loss"][0] > 0
