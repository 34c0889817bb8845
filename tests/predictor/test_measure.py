"""The FP32 reference outputs a plan is measured against (workbench.predictor.measure)."""

from __future__ import annotations

import torch
from torch import nn

from workbench.predictor.measure import _logits, _top1


def test_top1_counts_argmax_hits() -> None:
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert _top1(logits, torch.tensor([1, 0, 0])) == 2 / 3


def test_logits_concatenate_batches_restore_the_mode_and_hash_the_data() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    x = torch.randn(5, 3)
    y = torch.tensor([0, 1, 1, 0, 1])
    loader = [(x[:3], y[:3]), (x[3:], y[3:])]
    out, targets, fingerprint = _logits(model, loader)
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    torch.testing.assert_close(out, expected)  # eval mode: dropout off
    assert torch.equal(targets, y) and model.training and model[1].training
    _, _, same = _logits(model, loader)
    _, _, other_y = _logits(model, [(x[:3], y[:3]), (x[3:], 1 - y[3:])])
    _, _, other_x = _logits(model, [(x[:3], y[:3]), (x[3:] + 1, y[3:])])
    assert same == fingerprint and len({fingerprint, other_y, other_x}) == 3  # inputs and targets hashed
