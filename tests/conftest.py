from __future__ import annotations

import pytest
import torch
from hypothesis import settings

# Property tests explore a fixed, reproducible set of examples: CI is never red by chance.
settings.register_profile("workbench", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("workbench")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny autograd ops slow down 10-100x when two torch threads share a busy CPU: use one, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_cnn_task():
    """The trained digits_cnn task (from the data/models cache), shared read-only by the test modules."""
    from workbench.tasks import load_task

    return load_task("digits_cnn", progress=False)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Train (or load) the cached digits models once, before any test: a fresh clone trains them here, outside
    every test's timeout, instead of inside whichever test happens to need them first on a loaded machine."""
    if session.config.getoption("collectonly"):
        return
    from workbench.models import get_trained_model

    for name in ("digits_cnn", "digits_resnet"):
        get_trained_model(name, progress=False)
