"""torch_threads sets the intra-op thread count for a block and restores it, exceptions included."""

from __future__ import annotations

import pytest
import torch


def test_torch_threads_sets_and_restores() -> None:
    from workbench._common.threads import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
