"""An unlabelled evaluation set of natural photos that needs no download: seeded random resized crops of the
photos shipped inside the scikit-image and scikit-learn wheels, split into calib / val / test.

The 23 source photos (:data:`PHOTO_SOURCES`: 21 from ``skimage.data``, grey ones stacked to three channels,
and scikit-learn's ``load_sample_images()``) are cropped at random (``min_area``..``max_area`` of the photo's
area, aspect ratio ``min_aspect``..``max_aspect``, horizontal flips), resized to ``image_size`` and normalised
with ImageNet mean / std. Every split draws from all the photos: **calib, val and test crops share source
photos** (different crops of the same pictures), so a figure on the test crops measures fidelity on these 23
scenes, not generalisation to new ones. Each split has its own generator seeded by ``(seed, split)``: a split's
crops depend only on the seed and its own size. The crops are built once per config and kept in memory (as
uint8, ~88 MB for the default 512 crops at 240 px); nothing is written to disk.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from workbench.real_models import IMAGENET_MEAN, IMAGENET_STD, require_modules

__all__ = ["PHOTO_SOURCES", "PhotoCropConfig", "PhotoCrops", "load_photos", "photo_crops"]

_SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "horse", "page", "text", "clock", "coins", "moon",
    "brick", "grass", "gravel", "colorwheel", "logo", "retina", "hubble_deep_field", "immunohistochemistry",
    "cell", "microaneurysms",
)  # fmt: skip
PHOTO_SOURCES: tuple[str, ...] = (
    *(f"skimage:{name}" for name in _SKIMAGE_PHOTOS),
    "sklearn:china",
    "sklearn:flower",
)
"""The photos the crops come from (those of ``skimage.data`` that need a download are left out)."""

CROP_SPLITS: tuple[str, ...] = ("calib", "val", "test")


@dataclass(frozen=True)
class PhotoCropConfig:
    """How the crops are drawn: ``image_size`` (square side; 240 for Lite1, 260 for Lite2), crops per split,
    the loaders' ``batch_size``, the ``seed``, the crop area and aspect ranges and whether to flip. The
    defaults (128 / 128 / 256 crops) run on two CPU cores. ``channels_last``: the loaders' batches are stored
    channels-last (the same values; CPU convolutions, depthwise ones above all, run about 1.4x faster on them)."""

    image_size: int = 240
    calib_size: int = 128
    val_size: int = 128
    test_size: int = 256
    batch_size: int = 32
    seed: int = 0
    min_area: float = 0.15
    max_area: float = 1.0
    min_aspect: float = 3 / 4
    max_aspect: float = 4 / 3
    flip: bool = True
    channels_last: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"PhotoCropConfig.channels_last must be a bool, got {self.channels_last!r}")
        for name in ("image_size", "calib_size", "val_size", "test_size", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PhotoCropConfig.{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"PhotoCropConfig.seed must be an int >= 0, got {self.seed!r}")
        if not 0 < self.min_area <= self.max_area <= 1:
            raise ValueError(
                f"PhotoCropConfig needs 0 < min_area <= max_area <= 1, got {self.min_area!r}, {self.max_area!r}"
            )
        if not 0 < self.min_aspect <= self.max_aspect:
            raise ValueError(
                "PhotoCropConfig needs 0 < min_aspect <= max_aspect, got "
                f"{self.min_aspect!r}, {self.max_aspect!r}"
            )

    def size(self, split: str) -> int:
        """Crops in ``split`` (``calib``, ``val`` or ``test``)."""
        if split not in CROP_SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(CROP_SPLITS)}")
        return getattr(self, f"{split}_size")


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """``image`` as HxWx3 uint8: grey stacked to three channels, bool scaled to 0/255, alpha composited on white."""
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.clip(np.asarray(image, dtype=np.float64) * 255.0, 0, 255).round().astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.shape[-1] == 4:
        alpha = image[..., 3:].astype(np.float64) / 255.0
        image = (image[..., :3] * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(image)


@functools.lru_cache(maxsize=1)
def load_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """``(source, HxWx3 uint8 array)`` of each photo of :data:`PHOTO_SOURCES` (read once; a photo that cannot be
    read is left out with a warning naming it). Needs scikit-image (MissingOptionalPackageError without it)."""
    (skdata,) = require_modules(("skimage.data",), needed_for="the photo crops")
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    sklearn_photos = {
        name.rsplit("/", 1)[-1].removesuffix(".jpg"): img
        for name, img in zip(sample.filenames, sample.images)
    }
    photos: list[tuple[str, np.ndarray]] = []
    for source in PHOTO_SOURCES:
        kind, name = source.split(":")
        try:
            image = getattr(skdata, name)() if kind == "skimage" else sklearn_photos[name]
        except Exception as err:  # a photo missing from this installation is named, never silently dropped
            warnings.warn(f"photo {source} cannot be read ({err}); the crops leave it out", stacklevel=2)
            continue
        photos.append((source, _as_rgb_uint8(image)))
    return tuple(photos)


def _crop_box(rng: np.random.Generator, h: int, w: int, config: PhotoCropConfig) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of one random resized crop of an ``h`` x ``w`` photo."""
    area = h * w * rng.uniform(config.min_area, config.max_area)
    aspect = float(np.exp(rng.uniform(np.log(config.min_aspect), np.log(config.max_aspect))))
    cw = int(min(w, max(1, round(np.sqrt(area * aspect)))))
    ch = int(min(h, max(1, round(np.sqrt(area / aspect)))))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return top, left, ch, cw


def _split_crops(
    photos: tuple[tuple[str, np.ndarray], ...], split: str, config: PhotoCropConfig
) -> tuple[torch.Tensor, list[int]]:
    """``(N x 3 x S x S uint8 crops, photo index of each)`` of ``split``; photos in seeded round-robin order."""
    rng = np.random.default_rng([config.seed, CROP_SPLITS.index(split)])
    n = config.size(split)
    order = np.concatenate([rng.permutation(len(photos)) for _ in range(-(-n // len(photos)))])[:n]
    crops = torch.empty(n, 3, config.image_size, config.image_size, dtype=torch.uint8)
    for i, p in enumerate(order):
        image = photos[p][1]
        top, left, ch, cw = _crop_box(rng, image.shape[0], image.shape[1], config)
        flip = config.flip and bool(rng.random() < 0.5)
        patch = torch.from_numpy(np.ascontiguousarray(image[top : top + ch, left : left + cw]))
        # uint8 in channels-last: torch's integer antialiased resize (exact ints, ~50x the float path's speed)
        patch = patch.permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
        size = (config.image_size, config.image_size)
        patch = F.interpolate(patch, size=size, mode="bilinear", align_corners=False, antialias=True)
        crops[i] = patch[0].flip(-1) if flip else patch[0]
    return crops, [int(p) for p in order]


class _Normalised(Dataset):
    """Crops stored as uint8, served as float tensors normalised with ImageNet mean / std (inputs only)."""

    def __init__(self, crops: torch.Tensor) -> None:
        self.crops = crops
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> torch.Tensor:
        return (self.crops[i].float() / 255.0 - self.mean) / self.std


def _stack_channels_last(items: list[torch.Tensor]) -> torch.Tensor:
    """A batch of crops in channels-last memory layout (values as ``torch.stack``)."""
    return torch.stack(items).contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class PhotoCrops:
    """The crops of each split (uint8, N x 3 x S x S), the photo index of every crop and the photo names."""

    config: PhotoCropConfig
    crops: dict[str, torch.Tensor]
    photo_index: dict[str, list[int]]
    sources: tuple[str, ...]

    def tensors(self, split: str) -> torch.Tensor:
        """The normalised float crops of ``split`` (N x 3 x S x S)."""
        self.config.size(split)
        return _Normalised(self.crops[split])[:]

    def loader(self, split: str) -> DataLoader:
        """Batches of ``config.batch_size`` normalised crops of ``split`` (inputs only, no labels), in order."""
        self.config.size(split)
        collate = _stack_channels_last if self.config.channels_last else None
        return DataLoader(
            _Normalised(self.crops[split]),
            batch_size=self.config.batch_size,
            shuffle=False,
            collate_fn=collate,
        )

    def info(self) -> dict[str, object]:
        """Provenance for a task's ``info``: the config, the sizes and the source photos."""
        return {
            "sizes": {s: len(self.crops[s]) for s in CROP_SPLITS},
            "sources": list(self.sources),
            "seed": self.config.seed,
            "image_size": self.config.image_size,
            "note": "calib / val / test are different crops of the same source photos",
        }


def photo_crops(config: PhotoCropConfig | None = None) -> PhotoCrops:
    """The seeded crops of ``config`` (default :class:`PhotoCropConfig`), built once and kept in memory (the two
    most recent configs). Deterministic for a given config on a given scikit-image / scikit-learn version."""
    config = PhotoCropConfig() if config is None else config
    if not isinstance(config, PhotoCropConfig):
        raise TypeError(f"config must be a PhotoCropConfig, got {type(config).__name__}")
    return _photo_crops(config)


@functools.lru_cache(maxsize=2)
def _photo_crops(config: PhotoCropConfig) -> PhotoCrops:
    photos = load_photos()
    crops: dict[str, torch.Tensor] = {}
    index: dict[str, list[int]] = {}
    for split in CROP_SPLITS:
        crops[split], index[split] = _split_crops(photos, split, config)
    return PhotoCrops(config, crops, index, tuple(name for name, _ in photos))
