"""QAT checkpoints: resume equals an uninterrupted run; mismatch, overwrite and refusal rules."""

from __future__ import annotations

import pytest
import torch

from tests.qat.helpers import _same_state, _state
from workbench.qat import QATConfig, QATError, train_qat
from workbench.quant import QuantPlan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_checkpoint_resume_matches_uninterrupted_run(tiny_task, tmp_path):
    plan = QuantPlan.from_shorthand("uniform:w3a8:per_channel", tiny_task.model)
    base = QATConfig(
        epochs=4, bit_penalty=0.02, relax_fraction=0.5, distill_weight=0.3, quant_loss_weight=0.1
    )
    full = train_qat(
        tiny_task, plan, base.with_(checkpoint=str(tmp_path / "a.pt")), track=False, progress=False
    )
    ck = str(tmp_path / "b.pt")
    part = train_qat(tiny_task, plan, base.with_(checkpoint=ck, max_steps=3), track=False, progress=False)
    assert part.interrupted and part.steps == 3
    part2 = train_qat(  # resumed in the relaxed phase, stopped again in the discrete one
        tiny_task, plan, base.with_(checkpoint=ck, resume=True, max_steps=13), track=False, progress=False
    )
    assert part2.resumed_at_step == 3 and part2.steps == 13
    done = train_qat(tiny_task, plan, base.with_(checkpoint=ck, resume=True), track=False, progress=False)
    assert done.resumed_at_step == 13 and done.steps == full.steps == 16
    assert _same_state(_state(done.model), _state(full.model))
    assert done.final_plan == full.final_plan
    assert done.accuracy_after == full.accuracy_after
    cols = ["epoch", "phase", "loss", "val_accuracy", "expected_bits"]
    assert done.history[cols].equals(full.history[cols])


def test_checkpoint_mismatch_and_overwrite_rules(tiny_task, digits_cnn_task, tmp_path):
    plan = QuantPlan.from_shorthand("uniform:w4a8:per_channel", tiny_task.model)
    path = tmp_path / "ck.pt"
    config = QATConfig(epochs=1, checkpoint=str(path))
    first = train_qat(tiny_task, plan, config, track=False, progress=False)
    data = path.read_bytes()
    again = train_qat(tiny_task, plan, config.with_(resume=True), track=False, progress=False)
    assert again.resumed_at_step == 4 and again.step_ms is None  # a finished run resumes to its end
    assert again.accuracy_after == first.accuracy_after and again.final_plan == first.final_plan
    with pytest.raises(FileExistsError, match="resume=True"):
        train_qat(tiny_task, plan, config, track=False, progress=False)
    with pytest.raises(QATError, match=r"different QAT config.*lr: checkpoint 0.0005 != now 0.001"):
        train_qat(tiny_task, plan, config.with_(lr=1e-3, resume=True), track=False, progress=False)
    plan8 = QuantPlan.from_shorthand("uniform:w8a8:per_channel", tiny_task.model)
    with pytest.raises(QATError, match="different QAT config or plan.*w_bits"):
        train_qat(tiny_task, plan8, config.with_(resume=True), track=False, progress=False)
    cnn_plan = QuantPlan.from_shorthand("uniform:w4a8:per_channel", digits_cnn_task.model)
    with pytest.raises(QATError, match="another model"):
        train_qat(digits_cnn_task, cnn_plan, config.with_(resume=True), track=False, progress=False)
    assert path.read_bytes() == data  # refused runs never touch the checkpoint
    junk = tmp_path / "junk.pt"
    torch.save({"weight": torch.zeros(2)}, junk)
    with pytest.raises(QATError, match="not a QAT checkpoint"):
        train_qat(
            tiny_task, plan, config.with_(checkpoint=str(junk), resume=True), track=False, progress=False
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_qat(
            tiny_task, plan, config.with_(checkpoint=str(tmp_path / "none.pt"), resume=True), track=False
        )
    r = train_qat(tiny_task, plan, config.with_(lr=1e-3, overwrite=True), track=False, progress=False)
    assert r.steps == 4 and path.read_bytes() != data
