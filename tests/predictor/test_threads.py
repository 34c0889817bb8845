"""Torch threads for the length of a block (workbench.predictor.threads)."""

from __future__ import annotations

import pytest
import torch

from workbench.predictor.threads import _torch_threads


def test_torch_threads_are_set_for_the_block_and_restored() -> None:
    before = torch.get_num_threads()
    target = 2 if before == 1 else 1
    with _torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), _torch_threads(target):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with _torch_threads(None):
        assert torch.get_num_threads() == before
