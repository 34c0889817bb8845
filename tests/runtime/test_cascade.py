"""The confidence cascade: scores, the threshold calibrated to a target agreement with the top rung, escalation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.runtime.fakes import fake_ladder
from workbench.runtime import ConfidenceCascade, ManagedRuntime, confidence, idle_machine
from workbench.runtime.cascade import _threshold


def test_scores_rank_a_sure_row_above_an_unsure_one():
    logits = torch.tensor([[4.0, 0.0, 0.0], [1.0, 0.9, 0.0]])
    for score in ("margin", "confidence", "entropy"):
        c = confidence(logits, score)
        assert c[0] > c[1], score
    p = torch.softmax(logits, 1)
    assert confidence(logits, "margin")[1] == pytest.approx(float(p[1, 0] - p[1, 1]))
    with pytest.raises(ValueError, match="score='gap'.*margin"):
        confidence(logits, "gap")


def test_threshold_escalates_the_fewest_least_confident_inputs():
    conf = np.array([0.9, 0.1, 0.3, 0.2])
    ok_cheap = np.array([1, 0, 1, 0])
    ok_exp = np.array([1, 1, 1, 1])
    assert _threshold(conf, ok_cheap, ok_exp, 1.0) == (pytest.approx(0.25), 1.0, 2)
    assert _threshold(conf, ok_cheap, ok_exp, 0.5) == (-math.inf, 0.5, 0)
    assert _threshold(conf, ok_cheap, ok_exp, 0.5, 0.25) == (
        pytest.approx(0.15),
        0.75,
        1,
    )  # a floor of 1 in 4
    thr, agree, k = _threshold(conf, ok_cheap, np.array([1, 0, 1, 1]), 1.0)  # never reached: escalate all
    assert (thr, agree, k) == (math.inf, 0.75, 4)
    thr, agree, k = _threshold(np.array([0.1, 0.1, 0.5]), np.array([0, 1, 1]), np.array([1, 1, 1]), 1.0)
    assert k == 2 and agree == 1.0 and 0.1 < thr < 0.5  # ties with the last escalated escalate too


def test_calibrated_cascade_meets_its_target_and_counts_its_time(clock):
    ladder, _ = fake_ladder(clock)
    x_cal = torch.randn(256, 8, generator=torch.Generator().manual_seed(3))
    cas = ConfidenceCascade.calibrate(ladder, x_cal, target_agreement=0.97, clock=clock)
    assert cas.reached and cas.calib_agreement >= 0.97 and 0 < cas.calib_escalation < 1
    assert (cas.cheap, cas.expensive) == (0, 2)
    assert cas.calibration_s == pytest.approx(0.002 + 0.004 + 0.008)  # one pass of each rung, fake seconds
    outs = ladder.outputs(x_cal)
    esc = cas.escalate(outs[0])
    final = torch.where(torch.from_numpy(esc)[:, None], outs[2], outs[0]).argmax(1)
    assert (final == outs[2].argmax(1)).float().mean().item() == pytest.approx(cas.calib_agreement)
    with pytest.raises(ValueError, match="need 0 <= cheap < expensive <= 2"):
        ConfidenceCascade.calibrate(ladder, x_cal, cheap=2)
    with pytest.raises(ValueError, match="min_escalation=2"):
        ConfidenceCascade.calibrate(ladder, x_cal, min_escalation=2)
    with pytest.raises(ValueError, match="target_agreement=0"):
        ConfidenceCascade.calibrate(ladder, x_cal, target_agreement=0)


def test_stream_runs_the_cheap_rung_and_escalates_the_unsure_items(clock):
    ladder, _ = fake_ladder(clock)
    gen = torch.Generator().manual_seed(4)
    cas = ConfidenceCascade.calibrate(
        ladder, torch.randn(256, 8, generator=gen), target_agreement=0.97, clock=clock
    )
    rt = ManagedRuntime(ladder, cascade=cas, machine=idle_machine, clock=clock)
    xs = torch.randn(40, 8, generator=gen)
    items = list(rt.serve(xs))
    esc = cas.escalate(ladder.run(xs, 0))
    assert [it.runs for it in items] == [(0, 2) if e else (0,) for e in esc]
    assert [it.seconds for it in items] == pytest.approx([0.010 if e else 0.002 for e in esc])
    assert 0 < esc.sum() < 40
    top = ladder.run(xs, 2).argmax(1)
    agree = np.mean([int(it.output.argmax()) == int(t) for it, t in zip(items, top, strict=True)])
    assert agree >= 0.9
    capped = ManagedRuntime(ladder, cascade=cas, start=1, machine=idle_machine, clock=clock)
    assert {it.runs for it in capped.serve(xs)} <= {(0,), (0, 1)}  # escalation under the manager's ceiling
