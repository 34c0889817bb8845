"""Batches as the analysis sees them: the first n of a loader, (inputs, targets) pairs, sample counts."""

from __future__ import annotations

import pytest
import torch

from workbench.sensitivity.batches import _inputs_batches, _labelled, _n_samples, _take, _tensor_bytes


def test_take_stops_after_n_batches():
    loader = [(torch.zeros(3, 2), torch.arange(3)) for _ in range(4)]
    assert len(_take(loader, 2)) == 2 and len(_take(loader, None)) == 4 and _take(loader, 0) == []


def test_inputs_batches_with_and_without_targets():
    unlabelled = _inputs_batches([torch.zeros(3, 2), torch.zeros(1, 2)], "x")
    assert [y for _, y in unlabelled] == [None, None] and _n_samples(unlabelled) == 4
    labelled = _labelled([(torch.zeros(2, 2), torch.tensor([1, 0]))], "x")
    assert labelled[0][1].tolist() == [1, 0]
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        _inputs_batches([torch.zeros(1, 2)], "x")
    with pytest.raises(ValueError, match="needs \\(inputs, targets\\) batches"):
        _labelled([torch.zeros(3, 2)], "x")


def test_tensor_bytes_are_the_raw_little_endian_values():
    assert _tensor_bytes(torch.tensor([1, 256], dtype=torch.int32)) == b"\x01\x00\x00\x00\x00\x01\x00\x00"
    assert _tensor_bytes(torch.zeros(0)) == b""
