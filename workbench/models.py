"""Model zoo, training and evaluation.

Two small models are trained on the embedded digits task (``workbench.tasks``) in well under a minute on a
laptop CPU: ``digits_cnn`` (8x8 inputs) and ``digits_resnet`` (16x16 inputs, BatchNorm, residual adds).
Every torchvision classification model is available by name too (untrained, ``weights=None``); bring their
weights and data through :func:`workbench.tasks.torchvision_task`.

Trained digits models are cached under ``data/models/<name>-<hash>.pt`` with a JSON sidecar; the hash covers
the model name, the training config and the data fields that change the training data, so a changed config
retrains and an unchanged one loads.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from workbench.paths import data_dir
from workbench.quant.inputs import call_model, move_inputs, primary_output, split_batch

if TYPE_CHECKING:
    from workbench.tasks import DigitsConfig

__all__ = [
    "MODEL_INPUT_SIZE",
    "ZOO_MODELS",
    "BasicBlock",
    "DigitsCNN",
    "DigitsResNet",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "evaluate_accuracy",
    "get_trained_model",
    "list_model_names",
    "model_cache_path",
    "train_model",
]

ZOO_MODELS: tuple[str, ...] = ("digits_cnn", "digits_resnet")
"""Models of the embedded zoo: built, trained and cached by this module."""

MODEL_INPUT_SIZE: dict[str, int] = {"digits_cnn": 8, "digits_resnet": 16}
"""Image side (pixels) each zoo model expects; inputs are ``(N, 1, side, side)``."""

ARCH_VERSION = 1
"""Bumped whenever a zoo architecture changes, so cached weights of the old one are not loaded."""


# --------------------------------------------------------------------------------------------- architectures


class DigitsCNN(nn.Module):
    """Small conv net for 1x8x8 digits: two 3x3 convs, one max-pool, two linear layers (~75k parameters).

    Every layer is a named submodule (``conv1``, ``relu1``, ... ``fc2``) and each ReLU is its own module, so
    per-layer profiling and quantization see every op.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 128)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.pool(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        return self.fc2(x)


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn, plus identity (or 1x1 conv + bn downsample), then relu."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class DigitsResNet(nn.Module):
    """Residual net for 1x16x16 digits (works for any side >= 4 thanks to the adaptive pool).

    Stem conv-bn-relu (16 channels), three stages of two :class:`BasicBlock` each (16/32/64 channels, stride 2
    at the start of stages 2 and 3 with a 1x1 downsample), adaptive average pool, linear classifier: 15 Conv2d
    layers and one Linear. Names follow torchvision's ResNet (``conv1``, ``layer2.0.downsample.0``, ``fc``).
    """

    def __init__(self, num_classes: int = 10, *, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._stage(widths[0], widths[0], stride=1)
        self.layer2 = self._stage(widths[0], widths[1], stride=2)
        self.layer3 = self._stage(widths[1], widths[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_channels: int, out_channels: int, *, stride: int) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(in_channels, out_channels, stride=stride),
            BasicBlock(out_channels, out_channels, stride=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


# --------------------------------------------------------------------------------------------- building


def _torchvision_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_model_names() -> list[str]:
    """Every name :func:`build_model` accepts: the zoo first, then torchvision classification models."""
    return [*ZOO_MODELS, *_torchvision_names()]


def build_model(name: str, *, num_classes: int = 10) -> nn.Module:
    """A fresh, untrained model by name.

    ``name`` is a zoo model (``digits_cnn``, ``digits_resnet``) or any torchvision classification model
    (``resnet18``, ``mobilenet_v2``, ...; built with ``weights=None``). Initialisation uses the global torch
    RNG: seed it (or use :func:`get_trained_model`) for reproducible weights.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if name == "digits_cnn":
        return DigitsCNN(num_classes)
    if name == "digits_resnet":
        return DigitsResNet(num_classes)
    if isinstance(name, str) and name in _torchvision_names():
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    raise ValueError(
        f"unknown model name {name!r}: valid zoo models are {list(ZOO_MODELS)}; any torchvision "
        "classification model name also works (e.g. 'resnet18', 'mobilenet_v2', 'resnet50', "
        "'mobilenet_v3_small'; see torchvision.models.list_models(module=torchvision.models))"
    )


# --------------------------------------------------------------------------------------------- train / eval


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs for the zoo models (AdamW, cosine learning-rate decay per step, cross-entropy).

    The defaults reach >= 97 % test accuracy on the digits task for both zoo models in a few seconds each on
    two CPU cores.
    """

    epochs: int = 15
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"TrainConfig.epochs must be an int >= 1, got {self.epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size must be an int >= 1, got {self.batch_size!r}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_model`: the trained copy, a per-epoch history and the wall time."""

    model: nn.Module = field(repr=False)
    history: pd.DataFrame = field(repr=False)
    seconds: float


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(f"loader batches must be (x, y) tuples, got {type(batch).__name__}")
    return batch[0], batch[1]


def evaluate_accuracy(model: nn.Module, loader: Iterable, *, output_key: str | int | None = None) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``model`` over ``loader``'s ``(x, y)`` batches.

    ``x`` may be a tensor, a tuple or a dict of tensors (passed as ``model(x)``, ``model(*x)``,
    ``model(**x)``); a structured output is scored on its :func:`~workbench.quant.inputs.primary_output`
    (``logits`` or the first tensor; ``output_key`` picks a key, attribute or tuple index). Runs in eval mode
    under ``torch.no_grad``; every module's training flag is restored afterwards. Batches without targets raise
    ValueError.
    """
    device = _model_device(model)
    flags = {m: m.training for m in model.modules()}
    model.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for batch in loader:
                x, y = split_batch(batch)
                if y is None:
                    raise ValueError(
                        f"evaluate_accuracy needs (x, y) batches with targets, got {type(batch).__name__} "
                        "batches without them; for data without labels use workbench.tasks.fidelity_metric"
                    )
                out = primary_output(call_model(model, move_inputs(x, device)), key=output_key)
                pred = out.argmax(dim=1)
                correct += int((pred.cpu() == y.cpu()).sum())
                total += int(y.numel())
    finally:
        for m, flag in flags.items():
            m.training = flag
    if total == 0:
        raise ValueError("evaluate_accuracy got an empty loader (no samples)")
    return correct / total


def train_model(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    config: TrainConfig,
    val_loader: DataLoader | None = None,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train a deep copy of ``model`` with cross-entropy; the caller's model is never modified.

    AdamW with a per-step cosine learning-rate decay to zero. Randomness inside the loop (dropout, loaders
    without their own generator) is seeded from ``config.seed`` in a forked RNG, so the global torch RNG is
    left as it was. The history has one row per epoch: ``epoch``, ``loss`` (mean training loss), ``lr`` (at
    the end of the epoch) and ``val_accuracy`` (NaN without ``val_loader``). ``desc`` labels the progress bar.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("train_loader is empty")
    trained = copy.deepcopy(model)
    device = _model_device(trained)
    rows: list[dict[str, float]] = []
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        optimizer = torch.optim.AdamW(trained.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        total_steps = config.epochs * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
        loss_fn = nn.CrossEntropyLoss()
        bar = tqdm(range(1, config.epochs + 1), desc=desc, disable=not progress, leave=False)
        for epoch in bar:
            trained.train()
            loss_sum, seen = 0.0, 0
            for batch in train_loader:
                x, y = _split_batch(batch)
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(trained(x), y)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += float(loss.detach()) * y.numel()
                seen += int(y.numel())
            val_acc = evaluate_accuracy(trained, val_loader) if val_loader is not None else float("nan")
            rows.append(
                {
                    "epoch": epoch,
                    "loss": loss_sum / seen,
                    "lr": optimizer.param_groups[0]["lr"],
                    "val_accuracy": val_acc,
                }
            )
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", val_acc=f"{val_acc:.4f}")
    trained.eval()
    trained.zero_grad(set_to_none=True)  # a freshly trained model looks like a loaded one (no stale .grad)
    seconds = time.perf_counter() - start
    history = pd.DataFrame(rows, columns=["epoch", "loss", "lr", "val_accuracy"])
    return TrainResult(model=trained, history=history, seconds=seconds)


# --------------------------------------------------------------------------------------------- cache


def _default_data_config(name: str) -> DigitsConfig:
    from workbench.tasks import DigitsConfig

    return DigitsConfig(image_size=MODEL_INPUT_SIZE[name])


def _check_zoo_name(name: str) -> None:
    if name not in ZOO_MODELS:
        raise ValueError(
            f"get_trained_model trains only the digits zoo models {list(ZOO_MODELS)}, got {name!r}; "
            "torchvision models need your own data and weights: use workbench.tasks.torchvision_task(..., "
            "weights_path=...) or workbench.tasks.task_from_model(...)"
        )


def _check_input_size(name: str, image_size: int) -> None:
    if name == "digits_cnn" and image_size != MODEL_INPUT_SIZE[name]:
        raise ValueError(
            f"digits_cnn expects {MODEL_INPUT_SIZE[name]}x{MODEL_INPUT_SIZE[name]} inputs, got "
            f"DigitsConfig(image_size={image_size}); use image_size={MODEL_INPUT_SIZE[name]} or digits_resnet"
        )


def _cache_payload(name: str, config: TrainConfig, data_config: DigitsConfig) -> dict[str, Any]:
    return {
        "name": name,
        "arch_version": ARCH_VERSION,
        "num_classes": 10,
        "train_config": asdict(config),
        "data_config": data_config.training_fields(),
    }


def model_cache_path(
    name: str,
    *,
    config: TrainConfig | None = None,
    data_config: DigitsConfig | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Where :func:`get_trained_model` keeps ``name`` trained with these configs: ``<dir>/<name>-<hash>.pt``.

    The 12-hex-digit hash is a sha256 of the JSON of the model name, architecture version, ``config`` and the
    data fields that change the training data (:meth:`DigitsConfig.training_fields`: not the evaluation batch
    size or the calibration size). ``cache_dir`` defaults to ``data_dir()/models``.
    """
    _check_zoo_name(name)
    config = config if config is not None else TrainConfig()
    data_config = data_config if data_config is not None else _default_data_config(name)
    payload = json.dumps(_cache_payload(name, config, data_config), sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else data_dir() / "models"
    return root / f"{name}-{digest}.pt"


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_cached(name: str, path: Path, sidecar: Path) -> tuple[nn.Module, dict[str, Any]] | None:
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        info = json.loads(sidecar.read_text())
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(name)
        model.load_state_dict(state)
    except (
        Exception
    ) as err:  # unreadable, truncated or stale entry (any unpickling error): retrain, overwrite it
        import warnings

        from workbench.paths import StaleCacheWarning

        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        warnings.warn(
            f"cached model {path} (with {sidecar.name}) cannot be used ({reason}); retraining {name!r} and "
            "replacing it",
            StaleCacheWarning,
            stacklevel=3,
        )
        return None
    info["source"] = "cache"
    return model.eval(), info


def get_trained_model(
    name: str,
    *,
    config: TrainConfig | None = None,
    data_config: DigitsConfig | None = None,
    cache_dir: str | Path | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """A zoo model trained on the digits task's train split, loaded from the cache when present.

    Returns ``(model, info)``: the model is in eval mode on the CPU; ``info`` holds the name, cache path,
    configs, ``test_accuracy``, ``val_accuracy``, ``train_seconds`` and ``source`` (``"trained"`` or
    ``"cache"``). ``data_config`` defaults to ``DigitsConfig(image_size=MODEL_INPUT_SIZE[name])``;
    ``retrain=True`` trains again and overwrites the cache entry for these configs.
    """
    from workbench.tasks import digits_data

    _check_zoo_name(name)
    config = config if config is not None else TrainConfig()
    data_config = data_config if data_config is not None else _default_data_config(name)
    _check_input_size(name, data_config.image_size)
    path = model_cache_path(name, config=config, data_config=data_config, cache_dir=cache_dir)
    sidecar = path.with_suffix(".json")
    if not retrain:
        cached = _load_cached(name, path, sidecar)
        if cached is not None:
            return cached

    data = digits_data(data_config)
    loaders = data.loaders(train_batch_size=config.batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(name)
    result = train_model(
        model, loaders.train, config=config, val_loader=loaders.val, progress=progress, desc=f"train {name}"
    )
    trained = result.model.eval()
    info: dict[str, Any] = {
        "name": name,
        "path": str(path),
        "train_config": asdict(config),
        "data_config": asdict(data_config),
        "arch_version": ARCH_VERSION,
        "test_accuracy": evaluate_accuracy(trained, loaders.test),
        "val_accuracy": evaluate_accuracy(trained, loaders.val),
        "train_seconds": round(result.seconds, 3),
        "history": result.history.to_dict(orient="records"),
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_write(path, lambda tmp: torch.save(trained.state_dict(), tmp))
    _atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2, sort_keys=True)))
    info["source"] = "trained"
    return trained, info
