"""Torchvision tasks: a torchvision classification model on CIFAR-10 or an image folder that is already on
disk (this module never downloads anything). Named ``vision`` so that it never shadows the real ``torchvision``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from workbench.data import _loader
from workbench.models import build_model
from workbench.tasks.task import Task

__all__ = ["DATASETS", "torchvision_task"]

DATASETS: tuple[str, ...] = ("cifar10", "imagefolder")
"""Datasets :func:`torchvision_task` reads from local folders."""

_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


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
    try:  # weights_only: a file that would run code (a pickled object) is refused, never executed
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, a truncated zip, not a torch file at all ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"weights {path} cannot be loaded as a plain state_dict (tensors only; files that would run code "
            f"are refused): {first}"
        ) from err
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"weights in {path} do not fit the model: {err}") from err


def _check_sizes(**sizes: Any) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _transform(dataset: str, image_size: int) -> Any:
    """Resize (and centre-crop image folders) to ``image_size``, then normalise with the dataset's statistics."""
    from torchvision import transforms

    if dataset == "cifar10":
        steps: list[Any] = [] if image_size == 32 else [transforms.Resize(image_size)]
        mean, std = _CIFAR_MEAN, _CIFAR_STD
    else:
        steps = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


def _split_sets(
    train_set: Dataset, held_out: Dataset, *, calib_size: int, seed: int
) -> tuple[Subset, Subset, Subset]:
    """``(val, test, calib)``: the held-out set halved by a seeded permutation, and a seeded random subset of
    ``calib_size`` training samples (one generator, in that order)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(held_out), generator=generator).tolist()
    half = len(order) // 2
    val_set, test_set = Subset(held_out, order[:half]), Subset(held_out, order[half:])
    calib_idx = torch.randperm(len(train_set), generator=generator)[:calib_size].tolist()
    return val_set, test_set, Subset(train_set, calib_idx)


def _build_model(model_name: str, num_classes: int, weights_path: str | Path | None) -> nn.Module:
    model = build_model(model_name, num_classes=num_classes)
    if weights_path is not None:
        _load_weights(model, weights_path)
    return model.eval()


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
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    _check_sizes(image_size=image_size, batch_size=batch_size, calib_size=calib_size)
    root = Path(root).expanduser()
    transform = _transform(dataset, image_size)
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

    val_set, test_set, calib_set = _split_sets(train_set, held_out, calib_size=calib_size, seed=seed)
    model = _build_model(model_name, num_classes, weights_path)
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
