"""Magnitude pruning masks: exact counts, lowest-magnitude choice, deterministic ties, validation."""

from __future__ import annotations

import pytest
import torch

from workbench.compress import PRUNE_STRUCTURES, kept_channels, num_pruned, prune_mask


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.25, 0.5, 0.77, 0.99])
@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (10, 37), (1, 5)])
def test_unstructured_zeroes_exactly_round_s_n_smallest(sparsity, shape):
    torch.manual_seed(0)
    w = torch.randn(shape)
    mask = prune_mask(w, sparsity)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    n = w.numel()
    k = round(sparsity * n)
    assert int((~mask).sum()) == k == num_pruned(shape, sparsity)
    if 0 < k < n:  # every pruned magnitude <= every kept magnitude
        assert w.abs()[~mask].max() <= w.abs()[mask].min()


def test_unstructured_ties_broken_by_index():
    w = torch.tensor([[1.0, -1.0, 1.0, 2.0], [1.0, 3.0, -1.0, 0.5]])
    mask = prune_mask(w, 0.5)  # 4 pruned: 0.5, then the first three of the five |w| == 1 in index order
    expected = torch.tensor([[False, False, False, True], [True, True, True, False]])
    assert torch.equal(mask, expected)
    assert torch.equal(prune_mask(w, 0.5), mask)


def test_channel_pruning_zeroes_lowest_norm_rows():
    torch.manual_seed(1)
    w = torch.randn(6, 4, 3, 3)
    scale = torch.tensor([3.0, 0.1, 2.0, 0.5, 0.2, 1.0]).reshape(-1, 1, 1, 1)
    w = w / w.reshape(6, -1).norm(dim=1).reshape(-1, 1, 1, 1) * scale  # row norms exactly ``scale``
    mask = prune_mask(w, 0.5, "channel")
    rows = mask.reshape(6, -1)
    assert (rows.all(dim=1) | (~rows).all(dim=1)).all()  # whole rows
    assert torch.equal(kept_channels(mask), torch.tensor([0, 2, 5]))
    assert torch.equal(
        prune_mask(w, 0.34, "channel").reshape(6, -1).all(dim=1), torch.tensor([1, 0, 1, 1, 0, 1]).bool()
    )


def test_channel_pruning_keeps_one_channel():
    w = torch.randn(3, 5)
    assert num_pruned(w.shape, 0.9, "channel") == 2  # round(2.7) = 3 would remove every channel
    assert int(prune_mask(w, 0.9, "channel").reshape(3, -1).all(dim=1).sum()) == 1
    assert num_pruned((1, 5), 0.6, "channel") == 0


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, True, "0.5", float("nan")])
def test_bad_sparsity_named(bad):
    with pytest.raises(ValueError, match=r"sparsity=.*\[0, 1\)"):
        prune_mask(torch.randn(4, 4), bad)


def test_bad_structure_named():
    assert PRUNE_STRUCTURES == ("unstructured", "channel")
    with pytest.raises(ValueError, match=r"'rows'.*'unstructured', 'channel'"):
        prune_mask(torch.randn(4, 4), 0.5, "rows")
