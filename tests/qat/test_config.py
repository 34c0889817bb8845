"""QATConfig: bad values are refused, naming the field, value and valid range."""

from __future__ import annotations

import pytest

from workbench.qat import QATConfig, QATError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr", 0.0, "lr=0.0 must be a number in \\(0, 1\\]"),
        ("lr", 3.0, "lr=3.0"),
        ("epochs", 0, "epochs=0 must be an int in \\[1, 1000\\]"),
        ("epochs", 5000, "epochs=5000"),
        ("scale_mode", "learned", "scale_mode='learned' is not valid; choose one of 'frozen', 'lsq'"),
        ("bn", "train", "bn='train'.*'fold', 'freeze'"),
        ("distill_weight", 1.5, "distill_weight=1.5"),
        ("temperature", 0, "temperature=0"),
        ("bit_candidates", (4,), "bit_candidates=\\(4,\\)"),
        ("bit_candidates", (2, 7), "bit_candidates"),
        ("patience", 0, "patience=0"),
        ("max_steps", -1, "max_steps=-1"),
    ],
)
def test_bad_config_values_are_named(field, value, message):
    with pytest.raises(QATError, match=message):
        QATConfig(**{field: value})
