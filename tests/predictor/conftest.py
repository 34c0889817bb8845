"""Fixtures of the predictor tests: digits_cnn (4 layers), small plan datasets, a hand-made sensitivity."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.predictor.helpers import SMALL, fake_sensitivity
from workbench.predictor import PlanDataset, PlanFeaturizer, build_plan_dataset
from workbench.sensitivity import SensitivityResult
from workbench.tasks import Task


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Tiny models: one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def task(digits_cnn_task: Task) -> Task:
    return digits_cnn_task


@pytest.fixture(scope="module")
def sens(task: Task) -> SensitivityResult:
    return fake_sensitivity(task)


@pytest.fixture(scope="package")
def plans_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache file for the ``built`` dataset of every test module: the first measures, the rest read back."""
    return tmp_path_factory.mktemp("plans") / "plans.jsonl"


@pytest.fixture(scope="module")
def built(task: Task, sens: SensitivityResult, plans_path: Path) -> PlanDataset:
    return build_plan_dataset(task, sens, SMALL, path=plans_path, progress=False)


@pytest.fixture(scope="module")
def featurizer(task: Task, sens: SensitivityResult) -> PlanFeaturizer:
    return PlanFeaturizer.fit(task, sens)
