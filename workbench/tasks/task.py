"""Tasks: a model together with its calibration / validation / test data and a metric.

Three ways to get one:

* :func:`load_task` — the embedded digits task (``sklearn.datasets.load_digits``, 1797 8x8 grey images,
  bundled with scikit-learn, nothing downloaded) with a zoo model trained on it or loaded from the cache.
* :func:`torchvision_task` — a torchvision classification model on CIFAR-10 or an image folder that is
  already on disk (this module never downloads anything).
* :func:`task_from_model` — any ``nn.Module`` with your own loaders, scored by top-1 accuracy, your own
  ``metric(model, loader)``, ``eval_fn(model)``, or a :func:`fidelity_metric` against the FP32 model.
* :func:`load_task_file` — the Task a function in a Python file returns (the CLI's ``--task FILE.py:FUNC``).

The built-in loaders yield ``(x, y)`` tuples (the calibration loader is a deterministic subset of the training
data). Your own may yield ``(inputs, targets)`` or the inputs alone, the inputs a tensor, a tuple or a dict of
tensors (see :mod:`workbench.quant.inputs`).
"""

from __future__ import annotations

import functools
import hashlib
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
from workbench.quant.inputs import (
    OutputError,
    batch_size,
    call_model,
    concat_inputs,
    describe_inputs,
    first_tensor,
    input_tensors,
    move_inputs,
    primary_output,
    split_batch,
    take_inputs,
)

__all__ = [
    "DATASETS",
    "FIDELITY_KINDS",
    "SPLITS",
    "DigitsConfig",
    "DigitsData",
    "DigitsLoaders",
    "EvalFnMetric",
    "FidelityMetric",
    "Task",
    "TaskFileError",
    "digits_data",
    "fidelity_metric",
    "load_task",
    "load_task_file",
    "metric_name",
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

    ``input_shape`` is the shape of one sample (``(C, H, W)`` for images; of the first input tensor for
    structured inputs). ``train_loader`` may be None (then QAT and
    ``evaluate(split="train")`` are unavailable). ``info`` holds provenance: configs, cache path, accuracy
    measured at training time, dataset sizes.

    ``output_key`` chooses the output tensor every stage looks at when the model's output is structured (a key
    of a dict output, an attribute of an output object, or an index into a tuple output); None takes
    :func:`~workbench.quant.inputs.primary_output`'s default (``logits``, ``last_hidden_state`` or the first
    tensor). It reaches the default accuracy metric, sensitivity probes and losses, the predictor's logits, the
    QAT loss and distillation, and the fidelity of deployments. A metric of your own reads the output itself.

    Stages report *metric loss*: the FP32 metric minus the quantized model's metric (accuracy drop for
    labelled accuracy; columns and fields keep their historical ``acc_drop`` / ``accuracy`` names).
    :attr:`metric_name` says which metric that is.
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
    output_key: str | int | None = None

    @property
    def metric_name(self) -> str:
        """What :attr:`metric` measures: ``"accuracy"`` (the default labelled top-1), the kind of a
        :func:`fidelity_metric` (``"cosine"``, ...), the name of an ``eval_fn``, else the metric callable's name."""
        return metric_name(self.metric)

    def loader(self, split: str) -> DataLoader:
        """The loader of ``split``: ``calib``, ``val``, ``test`` or ``train``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        loader = getattr(self, f"{split}_loader")
        if loader is None:
            raise ValueError(f"task {self.name!r} has no {split} loader")
        return loader

    def evaluate(self, model: nn.Module | None = None, split: str = "test") -> float:
        """``metric`` of ``model`` (default the task's own model) on ``split``; a metric returning NaN or
        something that is not a number raises ValueError naming the value."""
        model = self.model if model is None else model
        if self.metric is evaluate_accuracy and self.output_key is not None:
            value = evaluate_accuracy(model, self.loader(split), output_key=self.output_key)
        else:
            value = self.metric(model, self.loader(split))
        return _check_score(value, f"the metric {self.metric_name!r} of task {self.name!r}")

    def example_input(self, batch: int = 1) -> Any:
        """The first ``batch`` real inputs of the calibration loader (concatenating batches if needed), in the
        structure the loader yields them: a tensor, a tuple or a dict of tensors (targets are dropped)."""
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        parts: list[Any] = []
        have = 0
        for item in self.calib_loader:
            x = split_batch(item)[0]
            parts.append(x)
            have += batch_size(x)
            if have >= batch:
                break
        if have < batch:
            raise ValueError(f"calibration loader holds only {have} samples, asked for batch={batch}")
        return take_inputs(concat_inputs(parts), batch)

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


def _check_score(value: Any, what: str) -> float:
    """``value`` as a float; NaN or something that is not a number raises ValueError naming the value."""
    if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ValueError(
            f"{what} returned {shown} (a {type(value).__name__}); it must return a number (a float, higher "
            "is better)"
        )
    if math.isnan(value):
        raise ValueError(f"{what} returned NaN; it must return a number (a float, higher is better)")
    return float(value)


class EvalFnMetric:
    """A :data:`Metric` from ``eval_fn(model) -> float`` (higher is better): the loader is ignored (the function
    scores the model on data of its own). NaN or a non-number raises ValueError naming the value."""

    def __init__(self, eval_fn: Callable[[nn.Module], float]) -> None:
        if not callable(eval_fn):
            raise TypeError(f"eval_fn must be callable (model) -> float, got {type(eval_fn).__name__}")
        self.eval_fn = eval_fn
        fn = getattr(eval_fn, "__qualname__", type(eval_fn).__name__)
        self.__qualname__ = f"eval_fn:{getattr(eval_fn, '__module__', '?')}.{fn}"  # names it in cache keys

    def __call__(self, model: nn.Module, loader: Any = None) -> float:
        return _check_score(self.eval_fn(model), f"eval_fn {self.__qualname__.removeprefix('eval_fn:')}")

    def __repr__(self) -> str:
        return f"EvalFnMetric({self.__qualname__.removeprefix('eval_fn:')})"


FIDELITY_KINDS: tuple[str, ...] = ("cosine", "min_cosine", "neg_rel_mse", "topk_agreement")
"""Kinds of :func:`fidelity_metric`."""


def _batch_digest(inputs: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(describe_inputs(inputs).encode())
    for path, t in input_tensors(inputs):
        h.update(path.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def _primary_outputs(model: nn.Module, batches: Iterable[Any], key: str | int | None) -> list[torch.Tensor]:
    """``primary_output`` of ``model`` on each inputs batch (eval mode, every module's flag restored)."""
    from workbench.devices import model_device

    device = model_device(model)
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return [primary_output(call_model(model, move_inputs(x, device)), key=key).detach() for x in batches]
    finally:
        for m, flag in flags.items():
            m.training = flag


class FidelityMetric:
    """How closely a model's outputs follow the FP32 reference model's on the same data (higher is better).

    Built by :func:`fidelity_metric`; called as ``metric(model, loader) -> float`` like any :data:`Metric`.
    Targets in the loader's batches are ignored, so loaders may yield inputs only (tensors or dicts).
    """

    def __init__(
        self,
        reference_model: nn.Module,
        kind: str = "cosine",
        *,
        output_key: str | int | None = None,
        k: int = 5,
    ) -> None:
        if not isinstance(reference_model, nn.Module):
            raise TypeError(
                f"reference_model must be a torch.nn.Module, got {type(reference_model).__name__}"
            )
        if kind not in FIDELITY_KINDS:
            raise ValueError(f"unknown fidelity kind {kind!r}; choose one of {list(FIDELITY_KINDS)}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        self.reference_model = reference_model
        self.kind = kind
        self.output_key = output_key
        self.k = k
        self.__qualname__ = f"fidelity_metric({kind}, output_key={output_key!r}, k={k})"  # cache-key name
        self._cache: dict[int, tuple[Any, list[tuple[str, torch.Tensor]]]] = {}

    def __repr__(self) -> str:
        return f"FidelityMetric(kind={self.kind!r}, output_key={self.output_key!r}, k={self.k})"

    def reference(self, loader: Iterable) -> list[torch.Tensor]:
        """The reference model's outputs on ``loader`` (one CPU tensor per batch), computed once per loader
        object and kept (a batch whose inputs changed since, e.g. a shuffled loader, is recomputed)."""
        return [r for _, r in self._reference(loader, [split_batch(b)[0] for b in loader])]

    def _reference(self, loader: Iterable, batches: list[Any]) -> list[tuple[str, torch.Tensor]]:
        digests = [_batch_digest(x) for x in batches]
        hit = self._cache.get(id(loader))
        cached = hit[1] if hit is not None and hit[0] is loader else []
        out: list[tuple[str, torch.Tensor] | None] = [
            cached[i] if i < len(cached) and cached[i][0] == d else None for i, d in enumerate(digests)
        ]
        missing = [i for i, o in enumerate(out) if o is None]
        if missing:
            refs = _primary_outputs(self.reference_model, [batches[i] for i in missing], self.output_key)
            for i, r in zip(missing, refs):
                r = r.float().cpu()
                if not torch.isfinite(r).all():
                    raise ValueError(
                        f"the reference model's output has NaN/Inf values on batch {i} "
                        f"({describe_inputs(batches[i])}); fidelity needs a finite FP32 reference"
                    )
                out[i] = (digests[i], r)
        result = [o for o in out if o is not None]
        if hit is None or hit[0] is not loader or missing:
            self._cache[id(loader)] = (loader, result)  # the loader is held, so its id is not reused
        return result

    def __call__(self, model: nn.Module, loader: Iterable) -> float:
        batches = [split_batch(b)[0] for b in loader]
        if not batches:
            raise ValueError("fidelity_metric got an empty loader (no batches)")
        refs = [r for _, r in self._reference(loader, batches)]
        outs = _primary_outputs(model, batches, self.output_key)
        cos: list[torch.Tensor] = []
        err = ref_sq = agree = rows = 0.0
        for i, (y, r) in enumerate(zip(outs, refs)):
            if tuple(y.shape) != tuple(r.shape):
                raise ValueError(
                    f"model output shape {tuple(y.shape)} differs from the reference's {tuple(r.shape)} on batch {i}"
                )
            # a broken (e.g. overflowing) quantized model gets a poor but finite score
            y = torch.nan_to_num(y.double().cpu(), nan=0.0, posinf=3.4e38, neginf=-3.4e38)
            r = r.double()
            if self.kind in ("cosine", "min_cosine"):
                y2, r2 = y.reshape(y.shape[0], -1), r.reshape(r.shape[0], -1)
                num = (y2 * r2).sum(dim=1)
                den = y2.norm(dim=1) * r2.norm(dim=1)
                cos.append(torch.where(den > 0, num / den.clamp_min(1e-300), (y2 == r2).all(dim=1).double()))
            elif self.kind == "neg_rel_mse":
                err += float((y - r).pow(2).sum())
                ref_sq += float(r.pow(2).sum())
            else:
                width = r.shape[-1] if r.dim() > 1 else 1
                k = min(self.k, width)
                y2, r2 = y.reshape(-1, width), r.reshape(-1, width)
                iy, ir = y2.topk(k, dim=1).indices, r2.topk(k, dim=1).indices
                agree += float((iy.unsqueeze(2) == ir.unsqueeze(1)).any(dim=2).sum()) / k
                rows += y2.shape[0]
        if self.kind == "cosine":
            return float(torch.cat(cos).mean())
        if self.kind == "min_cosine":
            return float(torch.cat(cos).min())
        if self.kind == "neg_rel_mse":
            return -err / ref_sq if ref_sq > 0 else (0.0 if err == 0 else -math.inf)
        return agree / rows


def metric_name(metric: Any) -> str:
    """The name of what ``metric`` measures: ``"accuracy"`` for the default labelled top-1
    (:func:`~workbench.models.evaluate_accuracy`), the kind of a :class:`FidelityMetric` (``"cosine"``, ...), the
    ``__name__`` of an :class:`EvalFnMetric`'s ``eval_fn``, else the callable's ``__name__`` (through
    ``functools.partial``), else its type's name."""
    if isinstance(metric, FidelityMetric):
        return metric.kind
    fn = metric.eval_fn if isinstance(metric, EvalFnMetric) else metric
    while isinstance(fn, functools.partial):
        fn = fn.func
    if fn is evaluate_accuracy:
        return "accuracy"
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name else type(fn).__name__


def fidelity_metric(
    reference_model: nn.Module, kind: str = "cosine", *, output_key: str | int | None = None, k: int = 5
) -> FidelityMetric:
    """A :data:`Metric` ``(model, loader) -> float`` (higher is better) comparing a model's outputs with the
    FP32 ``reference_model``'s outputs on the same batches (no labels needed).

    The compared output is :func:`workbench.quant.inputs.primary_output` of the model's output (``logits``,
    ``last_hidden_state`` or the first tensor; ``output_key`` picks a key, attribute or tuple index). ``kind``:

    * ``"cosine"`` — mean over samples of the cosine similarity of the output, flattened per sample (all dims
      but dim 0); 1 is a perfect match.
    * ``"min_cosine"`` — the worst sample's cosine.
    * ``"neg_rel_mse"`` — minus the relative squared error over the whole loader,
      ``-sum ||y - y_ref||^2 / sum ||y_ref||^2``: 0 is a perfect match, -1 is as far off as outputting zeros.
    * ``"topk_agreement"`` — mean over rows of the last dimension (samples, or tokens of a sequence output) of
      the share of the reference's top-``k`` entries that are also in the model's top-``k`` (1 is a perfect
      match; ``k`` is capped at the last dimension's size).

    The reference outputs are computed once per loader object and cached (with a digest of each batch's inputs:
    a batch that changed is recomputed). The reference model is used as it is (not copied, never modified).
    Non-finite values in a quantized model's output are replaced as ``torch.nan_to_num`` does before scoring.
    """
    return FidelityMetric(reference_model, kind, output_key=output_key, k=k)


def _first_batch(loader: Iterable, name: str, *, need_targets: bool = True) -> tuple[Any, Any]:
    """``(inputs, targets)`` of the first batch of ``loader`` (targets None when the batches have none)."""
    shape = (
        "(x, y) batches" if need_targets else "(x, y) batches or inputs alone (tensors / dicts of tensors)"
    )
    if loader is None:
        raise ValueError(f"{name} is None; pass a DataLoader that yields {shape}")
    try:
        length = len(loader)  # type: ignore[arg-type]
    except TypeError:
        length = None
    if length == 0:
        raise ValueError(f"{name} is empty (len 0); it must yield at least one batch")
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise ValueError(f"{name} is empty; it must yield at least one batch") from None
    except TypeError as err:
        raise ValueError(f"{name} is not iterable ({type(loader).__name__}): {err}") from err
    try:
        x, y = split_batch(batch)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if first_tensor(x) is None:
        raise ValueError(f"{name} yields inputs without any tensor: {describe_inputs(x)}")
    if need_targets and y is None:
        raise ValueError(
            f"{name} must yield (x, y) tuples of tensors for the default accuracy metric, got "
            f"{type(batch).__name__} batches without targets; for data without labels pass "
            "metric=fidelity_metric(model) or eval_fn=..."
        )
    return x, y


def task_from_model(
    model: nn.Module,
    *,
    calib_loader: DataLoader,
    val_loader: DataLoader | None = None,
    test_loader: DataLoader | None = None,
    metric: Metric | str | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    name: str = "custom",
    train_loader: DataLoader | None = None,
    num_classes: int | None = None,
    output_key: str | int | None = None,
) -> Task:
    """Wrap your own model and loaders as a :class:`Task`.

    Batches pass to the model as they come: a loader may yield ``(inputs, targets)`` tuples or the inputs alone
    (a tensor or a dict of tensors such as ``{"input_ids": ..., "attention_mask": ...}``); inputs are a tensor
    (``model(x)``), a tuple (``model(*x)``) or a dict (``model(**x)``). The output may be a tensor, a tuple, a
    dict or a dataclass-like object; stages use its :func:`~workbench.quant.inputs.primary_output`.

    The score (higher is better) is one of:

    * ``metric(model, loader) -> float``, e.g. :func:`fidelity_metric` against the FP32 model (no labels needed);
    * ``metric="cosine"`` (any of :data:`FIDELITY_KINDS`): that :func:`fidelity_metric` against ``model`` itself,
      comparing the ``output_key`` output; ``metric="accuracy"`` is the default;
    * ``eval_fn(model) -> float`` scoring the model on data of its own (``val_loader`` / ``test_loader`` then
      default to ``calib_loader``; stages that need data beyond the score use them);
    * neither: top-1 accuracy, which needs ``(x, y)`` batches.

    ``output_key`` (a dict key, an attribute name or a tuple index) chooses the output tensor that every stage
    scores, for models whose output holds several (see :attr:`Task.output_key`); a key the output lacks raises
    ValueError naming the keys / fields it has. A metric callable you pass reads the output itself (give a
    :func:`fidelity_metric` you build its own ``output_key``, or pass ``metric="cosine"``).

    Every loader must be non-empty. The model must run on the first calibration sample and give an output with a
    tensor in it; otherwise ValueError names the exception and the input structure (keys, shapes, dtypes).
    ``input_shape`` is the per-sample shape of the first input tensor; ``num_classes`` (if not given) the last
    dimension of the chosen output on one calibration sample. The model is not modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if output_key is not None and (isinstance(output_key, bool) or not isinstance(output_key, (str, int))):
        raise TypeError(
            f"output_key must be a str (a key or attribute of the output), an int (an index into a tuple "
            f"output) or None, got {output_key!r}"
        )
    if metric is not None and eval_fn is not None:
        raise ValueError("pass metric=(model, loader) -> float or eval_fn=(model) -> float, not both")
    if isinstance(metric, str):
        if metric == "accuracy":
            metric = None
        elif metric in FIDELITY_KINDS:
            metric = fidelity_metric(model, metric, output_key=output_key)
        else:
            raise ValueError(
                f"unknown metric {metric!r}; pass a callable (model, loader) -> float, 'accuracy' or a fidelity "
                f"kind {list(FIDELITY_KINDS)}"
            )
    if metric is not None and not callable(metric):
        raise TypeError(f"metric must be callable (model, loader) -> float, got {type(metric).__name__}")
    if eval_fn is not None:
        metric = EvalFnMetric(eval_fn)
        val_loader = calib_loader if val_loader is None else val_loader
        test_loader = calib_loader if test_loader is None else test_loader
    need_targets = metric is None
    x, y = _first_batch(calib_loader, "calib_loader", need_targets=need_targets)
    _first_batch(val_loader, "val_loader", need_targets=need_targets)  # type: ignore[arg-type]
    _first_batch(test_loader, "test_loader", need_targets=need_targets)  # type: ignore[arg-type]
    if train_loader is not None:
        _first_batch(train_loader, "train_loader")
    out = _check_forward(model, take_inputs(x, 1), output_key)
    if num_classes is None:
        num_classes = int(out.shape[-1]) if out.dim() >= 2 else None
    return Task(
        name=name,
        model=model,
        train_loader=train_loader,
        calib_loader=calib_loader,
        val_loader=val_loader,  # type: ignore[arg-type]
        test_loader=test_loader,  # type: ignore[arg-type]
        metric=metric if metric is not None else evaluate_accuracy,
        input_shape=tuple(first_tensor(x).shape[1:]),  # type: ignore[union-attr]
        num_classes=num_classes,
        output_key=output_key,
        info={
            "dataset": "custom",
            "inputs": describe_inputs(take_inputs(x, 1)),
            "labels": y is not None,
            "metric": getattr(metric, "__qualname__", type(metric).__name__) if metric else "accuracy",
        },
    )


def _check_forward(model: nn.Module, x: Any, output_key: str | int | None = None) -> torch.Tensor:
    """The chosen (``output_key``) or primary output of ``model`` on calibration sample ``x``; ValueError naming
    the input structure and the exception when the forward fails, or naming the output when it holds no usable
    tensor (or lacks ``output_key``)."""
    from workbench.devices import model_device

    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = call_model(model, move_inputs(x, model_device(model)))
    except Exception as err:
        raise ValueError(
            f"model failed on the first calibration sample ({describe_inputs(x)}): {type(err).__name__}: {err}"
        ) from err
    finally:
        for m, flag in flags.items():
            m.training = flag
    try:
        return primary_output(out, key=output_key)
    except OutputError as err:
        raise ValueError(f"model output on the first calibration sample is unusable: {err}") from err


# --------------------------------------------------------------------------------------------- task files


class TaskFileError(ValueError):
    """A task file that is missing, fails to import, lacks the function or returns something not a Task."""


def load_task_file(spec: str | Path) -> Task:
    """The :class:`Task` returned by a function in a Python file: ``"path/to/task.py:make_task"``.

    The function name defaults to ``make_task`` (``"path/to/task.py"``); it is called without arguments. The
    file is imported as a module of its own (registered in ``sys.modules`` under a name derived from its path,
    so dataclasses and pickling work); its folder is appended to ``sys.path`` (if absent) so that it can import
    modules next to it. A missing file, an import error, a missing function, or a function that fails or
    returns something other than a Task raises :class:`TaskFileError` (a ValueError) saying which.
    """
    import importlib.util
    import sys

    text = str(spec)
    path_text, sep, func = text.rpartition(":")
    if not sep or not func.isidentifier() or not path_text:
        path_text, func = text, "make_task"
    path = Path(path_text).expanduser()
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise TaskFileError(
            f"task file {path} {where}; --task expects path/to/task.py:make_task (a Python file defining a "
            "function that returns a workbench.tasks.Task)"
        )
    path = path.resolve()
    module_name = "workbench_task_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise TaskFileError(f"task file {path} cannot be imported as Python (use a .py file)")
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # modules next to the task file stay importable
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise TaskFileError(f"task file {path} failed to import: {type(err).__name__}: {err}") from err
    factory = getattr(module, func, None)
    if factory is None:
        defined = sorted(
            n for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module_name
        )  # fmt: skip
        raise TaskFileError(f"task file {path} defines no {func!r}; functions it defines: {defined}")
    if not callable(factory):
        raise TaskFileError(f"{func!r} in task file {path} is a {type(factory).__name__}, not a function")
    try:
        task = factory()
    except TaskFileError:
        raise
    except Exception as err:
        raise TaskFileError(f"{func}() in task file {path} failed: {type(err).__name__}: {err}") from err
    if not isinstance(task, Task):
        raise TaskFileError(
            f"{func}() in task file {path} returned a {type(task).__name__}, not a workbench.tasks.Task; "
            "build one with workbench.tasks.task_from_model(model, calib_loader=..., metric=...)"
        )
    return task
