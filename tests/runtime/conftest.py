"""Fixtures of the runtime tests (the fake-kernel ladder itself is in :mod:`tests.runtime.fakes`)."""

from __future__ import annotations

import pytest

from tests.runtime.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
