"""Fixtures of the sensitivity tests: the digits_cnn task and its default analysis (computed once for the
package)."""

from __future__ import annotations

import pytest

from tests.sensitivity.helpers import QUIET
from workbench.sensitivity import SensitivityConfig, SensitivityResult, analyze_sensitivity
from workbench.tasks import Task


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Tiny models: one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="package")
def cnn_task(digits_cnn_task: Task) -> Task:
    return digits_cnn_task


@pytest.fixture(scope="package")
def cnn_result(cnn_task: Task) -> SensitivityResult:
    """The default analysis of digits_cnn (every metric, both granularities, activations)."""
    return analyze_sensitivity(cnn_task, SensitivityConfig(**QUIET), cache=False)
