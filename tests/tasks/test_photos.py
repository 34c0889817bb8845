"""The photo-crop evaluation set: seeded crops of the scikit-image / scikit-learn photos, split calib/val/test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")

from workbench.real_models import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from workbench.tasks.photos import (  # noqa: E402
    PHOTO_SOURCES,
    PhotoCropConfig,
    _as_rgb_uint8,
    _split_crops,
    load_photos,
    photo_crops,
)

SMALL = PhotoCropConfig(image_size=32, calib_size=6, val_size=5, test_size=30, batch_size=4)


def test_every_shipped_photo_is_read_as_rgb_uint8() -> None:
    photos = load_photos()
    assert [name for name, _ in photos] == list(PHOTO_SOURCES)
    assert len(photos) == 23
    for name, image in photos:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        assert min(image.shape[:2]) >= 64, name


def test_split_sizes_shapes_and_loaders() -> None:
    crops = photo_crops(SMALL)
    for split, n in (("calib", 6), ("val", 5), ("test", 30)):
        assert crops.crops[split].shape == (n, 3, 32, 32) and crops.crops[split].dtype == torch.uint8
        batches = list(crops.loader(split))
        assert [len(b) for b in batches] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
        assert isinstance(batches[0], torch.Tensor)  # inputs only: there are no labels
        torch.testing.assert_close(torch.cat(batches), crops.tensors(split))
        assert all(b.is_contiguous(memory_format=torch.channels_last) for b in batches)  # default layout
    plain = photo_crops(PhotoCropConfig(**{**SMALL.__dict__, "channels_last": False}))
    for a, b in zip(plain.loader("val"), crops.loader("val")):
        assert a.is_contiguous() and torch.equal(a, b)  # the same values in either layout
    with pytest.raises(ValueError, match="channels_last must be a bool"):
        PhotoCropConfig(channels_last=1)
    assert crops.info()["sizes"] == {"calib": 6, "val": 5, "test": 30}
    assert "same source photos" in crops.info()["note"]
    # 30 test crops go round-robin over the 23 photos: every photo is used, none more than twice
    assert sorted(set(crops.photo_index["test"])) == list(range(23))
    assert max(np.bincount(crops.photo_index["test"])) == 2


def test_values_are_imagenet_normalised_pixels() -> None:
    x = photo_crops(SMALL).tensors("test")
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = x * std + mean
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert 0.2 < float(pixels.mean()) < 0.8 and float(pixels.std()) > 0.1  # real images, not blank
    assert not torch.equal(x[0], x[1])


def test_crops_are_deterministic_for_a_seed_and_change_with_it() -> None:
    photos = load_photos()
    a, ia = _split_crops(photos, "val", SMALL)
    b, ib = _split_crops(photos, "val", SMALL)
    assert torch.equal(a, b) and ia == ib
    c, _ = _split_crops(photos, "val", PhotoCropConfig(**{**SMALL.__dict__, "seed": 1}))
    assert not torch.equal(a, c)
    # each split has its own generator: the calibration crops do not depend on the test split's size
    bigger = PhotoCropConfig(**{**SMALL.__dict__, "test_size": 7})
    assert torch.equal(_split_crops(photos, "calib", bigger)[0], _split_crops(photos, "calib", SMALL)[0])
    # the splits are different crops
    assert not torch.equal(_split_crops(photos, "calib", SMALL)[0][:5], a)


def test_crop_boxes_follow_the_area_and_aspect_ranges() -> None:
    from workbench.tasks.photos import _crop_box

    rng = np.random.default_rng(0)
    cfg = PhotoCropConfig()
    for _ in range(200):
        top, left, h, w = _crop_box(rng, 400, 600, cfg)
        assert top >= 0 and top + h <= 400 and left >= 0 and left + w <= 600
        assert 0.14 <= h * w / (400 * 600) <= 1.0
        assert 0.7 <= w / h <= 1.4 or h == 400 or w == 600  # clipped to the photo at large areas


def test_grey_bool_and_rgba_images_become_rgb() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert _as_rgb_uint8(grey).shape == (3, 4, 3) and (_as_rgb_uint8(grey)[..., 1] == grey).all()
    mask = np.array([[True, False]])
    assert _as_rgb_uint8(mask).tolist() == [[[255] * 3, [0] * 3]]
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque stays, transparent becomes white
    assert _as_rgb_uint8(rgba).tolist() == [[[10, 20, 30], [255, 255, 255]]]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("test_size", 0, "test_size must be an int >= 1"),
        ("image_size", 2.5, "image_size must be an int"),
        ("min_area", 0.0, "min_area"),
        ("max_aspect", 0.5, "min_aspect <= max_aspect"),
        ("seed", -1, "seed must be an int >= 0"),
    ],
)
def test_bad_configs_are_refused(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PhotoCropConfig(**{field: value})


def test_unknown_split_and_config_type_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown split 'train'"):
        photo_crops(SMALL).loader("train")
    with pytest.raises(TypeError, match="PhotoCropConfig"):
        photo_crops({"image_size": 32})  # type: ignore[arg-type]
