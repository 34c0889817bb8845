"""The embedded digits data (workbench.data): split sizes, stratification, normalisation, loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from workbench.data import DigitsConfig, digits_data

N_DIGITS = 1797


@pytest.fixture(scope="module")
def data():
    return digits_data(DigitsConfig())


# --------------------------------------------------------------------------------------------- digits data


def test_split_sizes_add_up(data) -> None:
    sizes = data.sizes()
    assert sizes["train"] + sizes["val"] + sizes["test"] == N_DIGITS
    assert (sizes["train"], sizes["val"], sizes["test"], sizes["calib"]) == (1077, 270, 450, 256)
    assert data.x_train.shape == (1077, 1, 8, 8) and data.x_train.dtype == torch.float32
    assert data.y_train.dtype == torch.int64
    assert torch.equal(data.x_calib, data.x_train[:256]) and torch.equal(data.y_calib, data.y_train[:256])


def test_splits_are_stratified(data) -> None:
    overall = np.bincount(load_digits().target, minlength=10) / N_DIGITS
    for split in ("train", "val", "test"):
        _, y = data.split(split)
        share = np.bincount(y.numpy(), minlength=10) / len(y)
        assert np.abs(share - overall).max() < 0.01, split


def test_splits_are_disjoint_and_cover_the_data(data) -> None:
    raw = load_digits()
    pixels = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)
    expected = sorted(map(bytes, ((pixels - 0.5) / 0.5).reshape(N_DIGITS, -1).numpy()))
    got = torch.cat([data.x_train, data.x_val, data.x_test]).reshape(N_DIGITS, -1).numpy()
    assert sorted(map(bytes, got)) == expected


def test_pixels_are_normalised(data) -> None:
    assert data.x_test.min().item() == pytest.approx(-1.0)
    assert data.x_test.max().item() == pytest.approx(1.0)


def test_same_seed_same_tensors_other_seed_other_split(data) -> None:
    again = digits_data(DigitsConfig())
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)
    other = digits_data(DigitsConfig(seed=1))
    assert other.sizes() == data.sizes()
    assert not torch.equal(other.x_test, data.x_test)


def test_image_size_16_and_32() -> None:
    d16 = digits_data(DigitsConfig(image_size=16))
    assert d16.x_train.shape == (1077, 1, 16, 16)
    assert d16.x_test.shape == (450, 1, 16, 16)
    assert d16.input_shape == (1, 16, 16)
    assert d16.x_test.min() >= -1.0 and d16.x_test.max() <= 1.0
    d8 = digits_data(DigitsConfig())
    # bilinear upsampling keeps the per-image mean close to the original's
    assert torch.allclose(d16.x_test.mean(dim=(2, 3)), d8.x_test.mean(dim=(2, 3)), atol=0.05)
    assert digits_data(DigitsConfig(image_size=32)).x_val.shape == (270, 1, 32, 32)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match=r"\[8, 16, 32\]"):
        DigitsConfig(image_size=12)
    with pytest.raises(ValueError, match="sum to 1"):
        DigitsConfig(train_fraction=0.7)
    with pytest.raises(ValueError, match="calib_size"):
        DigitsConfig(calib_size=0)
    with pytest.raises(ValueError, match="exceeds"):
        digits_data(DigitsConfig(calib_size=5000))


def test_loaders(data) -> None:
    loaders = data.loaders()
    x, y = next(iter(loaders.test))
    assert isinstance(next(iter(loaders.test)), tuple)
    assert x.shape == (64, 1, 8, 8) and y.shape == (64,)
    assert torch.equal(torch.cat([b[0] for b in loaders.val]), data.x_val)  # not shuffled
    assert sum(len(b[1]) for b in loaders.calib) == 256
    first = next(iter(loaders.train))[1]
    assert not torch.equal(first, data.y_train[:64])  # shuffled
    assert torch.equal(first, next(iter(data.loaders().train))[1])  # ... with a seeded generator
    assert len(next(iter(data.loaders(train_batch_size=32).train))[1]) == 32
