"""Tasks: a model together with its calibration / validation / test data and a metric.

Three ways to get one:

* :func:`load_task` — the embedded digits task (``sklearn.datasets.load_digits``, 1797 8x8 grey images,
  bundled with scikit-learn, nothing downloaded) with a zoo model trained on it or loaded from the cache.
* :func:`torchvision_task` — a torchvision classification model on CIFAR-10 or an image folder that is
  already on disk (this module never downloads anything).
* :func:`task_from_model` — any ``nn.Module`` with your own loaders.

Every loader yields ``(x, y)`` tuples. The calibration loader is a deterministic subset of the training data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from workbench.models import (
    MODEL_INPUT_SIZE,
    ZOO_MODELS,
    TrainConfig,
    build_model,
    evaluate_accuracy,
    get_trained_model,
)

__all__ = [
    "DATASETS",
    "SPLITS",
    "DigitsConfig",
    "DigitsData",
    "DigitsLoaders",
    "Task",
    "digits_data",
    "load_task",
    "task_from_model",
    "torchvision_task",
]

SPLITS: tuple[str, ...] = ("calib", "val", "test", "train")
"""Split names :meth:`Task.evaluate` accepts."""

DATASETS: tuple[str, ...] = ("cifar10", "imagefolder")
"""Datasets :func:`torchvision_task` reads from local folders."""

DIGITS_IMAGE_SIZES: tuple[int, ...] = (8, 16, 32)

_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _tuple_collate(batch: list[Any]) -> tuple[torch.Tensor, ...]:
    """``default_collate`` but batches come out as tuples (``default_collate`` turns tuples into lists)."""
    return tuple(default_collate(batch))


def _loader(dataset: Dataset, *, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=_tuple_collate
    )


# --------------------------------------------------------------------------------------------- digits data


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


# --------------------------------------------------------------------------------------------- Task


Metric = Callable[[nn.Module, DataLoader], float]


@dataclass(kw_only=True)
class Task:
    """A model, its data and the metric that scores it (higher is better; default top-1 accuracy).

    ``input_shape`` is ``(C, H, W)`` of one sample. ``train_loader`` may be None (then QAT and
    ``evaluate(split="train")`` are unavailable). ``info`` holds provenance: configs, cache path, accuracy
    measured at training time, dataset sizes.
    """

    name: str
    model: nn.Module = field(repr=False)
    calib_loader: DataLoader = field(repr=False)
    val_loader: DataLoader = field(repr=False)
    test_loader: DataLoader = field(repr=False)
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    train_loader: DataLoader | None = field(default=None, repr=False)
    metric: Metric = field(default=evaluate_accuracy, repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)

    def loader(self, split: str) -> DataLoader:
        """The loader of ``split``: ``calib``, ``val``, ``test`` or ``train``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        loader = getattr(self, f"{split}_loader")
        if loader is None:
            raise ValueError(f"task {self.name!r} has no {split} loader")
        return loader

    def evaluate(self, model: nn.Module | None = None, split: str = "test") -> float:
        """``metric`` of ``model`` (default the task's own model) on ``split``."""
        return float(self.metric(self.model if model is None else model, self.loader(split)))

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """The first ``batch`` real inputs of the calibration loader (concatenating batches if needed)."""
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        parts: list[torch.Tensor] = []
        have = 0
        for item in self.calib_loader:
            x = item[0]
            parts.append(x)
            have += x.shape[0]
            if have >= batch:
                break
        if have < batch:
            raise ValueError(f"calibration loader holds only {have} samples, asked for batch={batch}")
        return torch.cat(parts)[:batch]

    @property
    def device(self) -> torch.device:
        """Where the task's model (and so every stage run on this task) lives."""
        from workbench.devices import model_device

        return model_device(self.model)

    def to(self, device: str | torch.device) -> Task:
        """This task with its model on ``device`` (a copy; this task's model is not moved)."""
        from workbench.devices import on_device

        return on_device(self, device)


# --------------------------------------------------------------------------------------------- digits task


def load_task(
    model_name: str = "digits_resnet",
    *,
    data_config: DigitsConfig | None = None,
    train_config: TrainConfig | None = None,
    retrain: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> Task:
    """The digits task with a zoo model, trained (or loaded from ``data/models``) via ``get_trained_model``.

    ``data_config`` defaults to ``DigitsConfig(image_size=MODEL_INPUT_SIZE[model_name])``. For torchvision
    models use :func:`torchvision_task`; for your own model :func:`task_from_model`.
    """
    if model_name not in ZOO_MODELS:
        raise ValueError(
            f"load_task knows the digits zoo models {list(ZOO_MODELS)}, got {model_name!r}; for torchvision "
            "models use torchvision_task(name, dataset=..., root=...), for your own model task_from_model(...)"
        )
    if data_config is None:
        data_config = DigitsConfig(image_size=MODEL_INPUT_SIZE[model_name])
    train_config = train_config if train_config is not None else TrainConfig()
    model, model_info = get_trained_model(
        model_name,
        config=train_config,
        data_config=data_config,
        cache_dir=cache_dir,
        retrain=retrain,
        progress=progress,
    )
    data = digits_data(data_config)
    loaders = data.loaders(train_batch_size=train_config.batch_size)
    info = {**model_info, "dataset": "digits", "sizes": data.sizes()}
    return Task(
        name=model_name,
        model=model,
        train_loader=loaders.train,
        calib_loader=loaders.calib,
        val_loader=loaders.val,
        test_loader=loaders.test,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        info=info,
    )


# --------------------------------------------------------------------------------------------- torchvision


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES for p in folder.rglob("*"))


def _imagefolder_layout_error(root: Path, problem: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"image folder dataset not usable under {root}: {problem}. Put training images in "
        f"{root}/train/<class_name>/*.png and held-out images in {root}/val/<class_name>/*.png (one "
        f"sub-folder per class, the same class names in both; {', '.join(_IMAGE_SUFFIXES)} files)"
    )


def _cifar_datasets(root: Path, transform: Any) -> tuple[Dataset, Dataset, list[str]]:
    from torchvision.datasets import CIFAR10

    batches = root / "cifar-10-batches-py"
    needed = [batches / f"data_batch_{i}" for i in range(1, 6)] + [batches / "test_batch"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found under {root} (missing {', '.join(missing)} in {batches}): download "
            "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html on a machine with "
            f"internet and extract it into {root} so that {batches / 'data_batch_1'} exists; nothing is "
            "downloaded here"
        )
    try:
        train = CIFAR10(str(root), train=True, download=False, transform=transform)
        held_out = CIFAR10(str(root), train=False, download=False, transform=transform)
    except RuntimeError as err:
        raise FileNotFoundError(
            f"CIFAR-10 under {batches} is incomplete or corrupted ({err}); extract cifar-10-python.tar.gz "
            f"into {root} again"
        ) from err
    return train, held_out, list(train.classes)


def _imagefolder_datasets(root: Path, transform: Any) -> tuple[Dataset, Dataset, list[str]]:
    from torchvision.datasets import ImageFolder

    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise _imagefolder_layout_error(root, f"{folder} does not exist")
        classes = [d for d in folder.iterdir() if d.is_dir()]
        if not classes:
            raise _imagefolder_layout_error(root, f"{folder} has no class sub-folders")
        if not any(_has_images(d) for d in classes):
            raise _imagefolder_layout_error(root, f"no image files in the class folders of {folder}")
    try:
        train = ImageFolder(str(root / "train"), transform=transform)
        held_out = ImageFolder(str(root / "val"), transform=transform)
    except FileNotFoundError as err:
        raise _imagefolder_layout_error(root, str(err)) from err
    if train.class_to_idx != held_out.class_to_idx:
        raise ValueError(
            f"class folders differ between {root / 'train'} ({train.classes}) and {root / 'val'} "
            f"({held_out.classes}); use the same class names in both"
        )
    return train, held_out, list(train.classes)


def _load_weights(model: nn.Module, weights_path: str | Path) -> None:
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights_path {path} does not exist (expected a state_dict saved by torch.save)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"weights in {path} do not fit the model: {err}") from err


def torchvision_task(
    model_name: str,
    *,
    dataset: str,
    root: str | Path,
    num_classes: int | None = None,
    image_size: int = 32,
    batch_size: int = 64,
    calib_size: int = 256,
    weights_path: str | Path | None = None,
    seed: int = 0,
) -> Task:
    """A torchvision classification model on a dataset already on disk (never downloads).

    ``dataset``:

    * ``"cifar10"`` — ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}`` (the extracted
      ``cifar-10-python.tar.gz``); train = the 50k training images, held-out = the 10k test images.
    * ``"imagefolder"`` — ``<root>/train/<class>/*.png`` and ``<root>/val/<class>/*.png`` (any common image
      format; the same class folders in both); images are resized and centre-cropped to ``image_size``.

    Inputs are normalised with the CIFAR-10 / ImageNet channel statistics. The held-out split is divided by
    a seeded permutation into two halves: ``val_loader`` and ``test_loader``. The calibration loader is a
    seeded random subset of ``calib_size`` training images; the train loader is shuffled with a seeded
    generator and has no augmentation. ``num_classes`` defaults to the dataset's class count.
    ``weights_path`` loads a state_dict (``torch.save(model.state_dict(), path)``); without it the model is
    untrained (``info["pretrained"]`` is False).
    """
    from torchvision import transforms

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    for name, value in (("image_size", image_size), ("batch_size", batch_size), ("calib_size", calib_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    root = Path(root).expanduser()
    if dataset == "cifar10":
        steps: list[Any] = [] if image_size == 32 else [transforms.Resize(image_size)]
        mean, std = _CIFAR_MEAN, _CIFAR_STD
    else:
        steps = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])
    reader = _cifar_datasets if dataset == "cifar10" else _imagefolder_datasets
    train_set, held_out, classes = reader(root, transform)

    if num_classes is None:
        num_classes = len(classes)
    elif num_classes < len(classes):
        raise ValueError(
            f"num_classes={num_classes} is smaller than the {len(classes)} classes found in {root}"
        )
    if len(held_out) < 2:
        raise ValueError(f"the held-out split under {root} needs at least 2 images, found {len(held_out)}")

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(held_out), generator=generator).tolist()
    half = len(order) // 2
    val_set, test_set = Subset(held_out, order[:half]), Subset(held_out, order[half:])
    calib_idx = torch.randperm(len(train_set), generator=generator)[:calib_size].tolist()
    calib_set = Subset(train_set, calib_idx)

    model = build_model(model_name, num_classes=num_classes)
    if weights_path is not None:
        _load_weights(model, weights_path)
    model.eval()
    info = {
        "dataset": dataset,
        "root": str(root),
        "classes": classes,
        "weights_path": None if weights_path is None else str(weights_path),
        "pretrained": weights_path is not None,
        "image_size": image_size,
        "seed": seed,
        "sizes": {
            "train": len(train_set),
            "calib": len(calib_set),
            "val": len(val_set),
            "test": len(test_set),
        },
    }
    return Task(
        name=model_name,
        model=model,
        train_loader=_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed),
        calib_loader=_loader(calib_set, batch_size=batch_size),
        val_loader=_loader(val_set, batch_size=batch_size),
        test_loader=_loader(test_set, batch_size=batch_size),
        input_shape=(3, image_size, image_size),
        num_classes=num_classes,
        info=info,
    )


# --------------------------------------------------------------------------------------------- custom


def _first_batch(loader: Iterable, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if loader is None:
        raise ValueError(f"{name} is None; pass a DataLoader that yields (x, y) batches")
    try:
        length = len(loader)  # type: ignore[arg-type]
    except TypeError:
        length = None
    if length == 0:
        raise ValueError(f"{name} is empty (len 0); it must yield at least one (x, y) batch")
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise ValueError(f"{name} is empty; it must yield at least one (x, y) batch") from None
    except TypeError as err:
        raise ValueError(f"{name} is not iterable ({type(loader).__name__}): {err}") from err
    if not isinstance(batch, (tuple, list)) or len(batch) < 2 or not isinstance(batch[0], torch.Tensor):
        raise ValueError(f"{name} must yield (x, y) tuples of tensors, got a {type(batch).__name__} batch")
    return batch[0], batch[1]


def task_from_model(
    model: nn.Module,
    *,
    calib_loader: DataLoader,
    val_loader: DataLoader,
    test_loader: DataLoader,
    metric: Metric | None = None,
    name: str = "custom",
    train_loader: DataLoader | None = None,
    num_classes: int | None = None,
) -> Task:
    """Wrap your own model and loaders (each yielding ``(x, y)`` tuples) as a :class:`Task`.

    The loaders must be non-empty; ``metric(model, loader) -> float`` (higher is better) defaults to top-1
    accuracy. ``input_shape`` comes from the first calibration batch; ``num_classes`` (if not given) from the
    last dimension of the model's output on one calibration sample. The model is not modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if metric is not None and not callable(metric):
        raise TypeError(f"metric must be callable (model, loader) -> float, got {type(metric).__name__}")
    x, _ = _first_batch(calib_loader, "calib_loader")
    _first_batch(val_loader, "val_loader")
    _first_batch(test_loader, "test_loader")
    if train_loader is not None:
        _first_batch(train_loader, "train_loader")
    if num_classes is None:
        num_classes = _infer_num_classes(model, x[:1])
    return Task(
        name=name,
        model=model,
        train_loader=train_loader,
        calib_loader=calib_loader,
        val_loader=val_loader,
        test_loader=test_loader,
        metric=metric if metric is not None else evaluate_accuracy,
        input_shape=tuple(x.shape[1:]),
        num_classes=num_classes,
        info={"dataset": "custom"},
    )


def _infer_num_classes(model: nn.Module, x: torch.Tensor) -> int | None:
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    try:
        with torch.no_grad():
            out = model(x.to(param.device) if param is not None else x)
    except Exception as err:
        raise ValueError(
            f"model failed on a calibration sample of shape {tuple(x.shape)}: {type(err).__name__}: {err}"
        ) from err
    finally:
        model.train(was_training)
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() >= 2 else None
