"""The embedded digits data: scikit-learn's 1797 8x8 handwritten digits (bundled, nothing downloaded).

:func:`digits_data` builds the tensors of every split for a :class:`DigitsConfig`; :meth:`DigitsData.loaders`
wraps them in DataLoaders that yield ``(x, y)`` tuples. This is the bottom of the task / model stack: it imports
nothing of the workbench, so both :mod:`workbench.models` (training the zoo) and :mod:`workbench.tasks` use it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

__all__ = [
    "DIGITS_IMAGE_SIZES",
    "SPLITS",
    "DigitsConfig",
    "DigitsData",
    "DigitsLoaders",
    "digits_data",
]

SPLITS: tuple[str, ...] = ("calib", "val", "test", "train")
"""Split names :meth:`DigitsData.split` and :meth:`workbench.tasks.Task.evaluate` accept."""

DIGITS_IMAGE_SIZES: tuple[int, ...] = (8, 16, 32)


def _tuple_collate(batch: list[Any]) -> tuple[torch.Tensor, ...]:
    """``default_collate`` but batches come out as tuples (``default_collate`` turns tuples into lists)."""
    return tuple(default_collate(batch))


def _loader(dataset: Dataset, *, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=_tuple_collate
    )


@dataclass(frozen=True)
class DigitsConfig:
    """The embedded digits task (scikit-learn's 1797 8x8 handwritten digits, 10 classes).

    Pixels (0..16) are scaled to [0, 1], upsampled bilinearly to ``image_size`` (8, 16 or 32; done once when
    the tensors are built), then normalised as ``(x - mean) / std`` (defaults map [0, 1] to [-1, 1]).
    Splits are stratified by label with ``random_state=seed``: ``train_fraction`` / ``val_fraction`` /
    ``test_fraction`` of the samples (60 / 15 / 25 % -> 1077 / 270 / 450). The calibration set is the first
    ``calib_size`` samples of the train split. ``batch_size`` is the batch size of the calib / val / test
    loaders (and of the train loader unless :meth:`DigitsData.loaders` is told otherwise).
    """

    image_size: int = 8
    seed: int = 0
    batch_size: int = 64
    calib_size: int = 256
    train_fraction: float = 0.6
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    mean: float = 0.5
    std: float = 0.5

    def __post_init__(self) -> None:
        if self.image_size not in DIGITS_IMAGE_SIZES:
            raise ValueError(
                f"DigitsConfig.image_size must be one of {list(DIGITS_IMAGE_SIZES)}, got {self.image_size!r}"
            )
        for name in ("batch_size", "calib_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DigitsConfig.{name} must be an int >= 1, got {value!r}")
        fractions = (self.train_fraction, self.val_fraction, self.test_fraction)
        if any(not 0 < f < 1 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
            raise ValueError(
                "DigitsConfig fractions must each lie in (0, 1) and sum to 1, got "
                f"train={self.train_fraction!r}, val={self.val_fraction!r}, test={self.test_fraction!r}"
            )
        if not self.std > 0:
            raise ValueError(f"DigitsConfig.std must be > 0, got {self.std!r}")

    def training_fields(self) -> dict[str, Any]:
        """The fields that change the training data (all but ``batch_size`` and ``calib_size``)."""
        fields = asdict(self)
        del fields["batch_size"], fields["calib_size"]
        return fields


@dataclass(frozen=True)
class DigitsLoaders:
    """The four DataLoaders of the digits task; train is shuffled with a seeded generator, others are not."""

    train: DataLoader
    calib: DataLoader
    val: DataLoader
    test: DataLoader


@dataclass(frozen=True)
class DigitsData:
    """Tensors of every split of the digits task: ``x_*`` is ``(N, 1, S, S)`` float32, ``y_*`` int64."""

    config: DigitsConfig
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_val: torch.Tensor = field(repr=False)
    y_val: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)

    num_classes: int = 10

    @property
    def x_calib(self) -> torch.Tensor:
        """The first ``config.calib_size`` training images."""
        return self.x_train[: self.config.calib_size]

    @property
    def y_calib(self) -> torch.Tensor:
        """Labels of :attr:`x_calib`."""
        return self.y_train[: self.config.calib_size]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def sizes(self) -> dict[str, int]:
        """Number of samples per split."""
        return {split: int(self.split(split)[1].numel()) for split in SPLITS}

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of one split: ``calib``, ``val``, ``test`` or ``train``."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {list(SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def loaders(self, *, train_batch_size: int | None = None) -> DigitsLoaders:
        """DataLoaders over the splits; the train loader's shuffle order is seeded by ``config.seed``."""
        bs = self.config.batch_size
        return DigitsLoaders(
            train=_loader(
                TensorDataset(self.x_train, self.y_train),
                batch_size=train_batch_size or bs,
                shuffle=True,
                seed=self.config.seed,
            ),
            calib=_loader(TensorDataset(self.x_calib, self.y_calib), batch_size=bs),
            val=_loader(TensorDataset(self.x_val, self.y_val), batch_size=bs),
            test=_loader(TensorDataset(self.x_test, self.y_test), batch_size=bs),
        )


def _digits_tensor(images: np.ndarray, config: DigitsConfig) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    if config.image_size != 8:
        size = (config.image_size, config.image_size)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return ((x - config.mean) / config.std).contiguous()


def digits_data(config: DigitsConfig | None = None) -> DigitsData:
    """Build the digits task's tensors for ``config`` (default ``DigitsConfig()``); deterministic per seed."""
    config = config if config is not None else DigitsConfig()
    bunch = load_digits()
    images, labels = np.asarray(bunch.images), np.asarray(bunch.target)
    index = np.arange(len(labels))
    rest, test = train_test_split(
        index, test_size=config.test_fraction, stratify=labels, random_state=config.seed
    )
    val_share = config.val_fraction / (config.train_fraction + config.val_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=config.seed)
    if config.calib_size > len(train):
        raise ValueError(
            f"DigitsConfig.calib_size={config.calib_size} exceeds the {len(train)} training samples"
        )
    x = _digits_tensor(images, config)
    y = torch.from_numpy(labels.astype(np.int64))

    def take(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return x[t].contiguous(), y[t].contiguous()

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = take(train), take(val), take(test)
    return DigitsData(config, x_tr, y_tr, x_va, y_va, x_te, y_te)
