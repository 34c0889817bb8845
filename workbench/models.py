"""Model zoo, training and evaluation (the training loop and accuracy live in :mod:`workbench.training`,
re-exported here).

Three small models are trained on the embedded digits task (:mod:`workbench.data`) in well under a minute on a
laptop CPU: ``digits_cnn`` (8x8 inputs), ``digits_resnet`` (16x16 inputs, BatchNorm, residual adds) and
``digits_mobilenet`` (8x8 inputs, MobileNetV2-style inverted residuals: depthwise 3x3, ReLU6, BatchNorm).
Every torchvision classification model is available by name too (untrained, ``weights=None``); bring their
weights and data through :func:`workbench.tasks.torchvision_task`.

Trained digits models are cached under ``data/models/<name>-<hash>.pt`` with a JSON sidecar; the hash covers
the model name, the training config and the data fields that change the training data, so a changed config
retrains and an unchanged one loads.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from workbench._common.io import atomic_write_with
from workbench.data import DigitsConfig, digits_data
from workbench.paths import data_dir
from workbench.real_models import REAL_MODELS, build_real_model
from workbench.training import TrainConfig, TrainResult, evaluate_accuracy, train_model

__all__ = [
    "MODEL_INPUT_SIZE",
    "ZOO_MODELS",
    "BasicBlock",
    "DigitsCNN",
    "DigitsMobileNet",
    "DigitsResNet",
    "InvertedResidual",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "evaluate_accuracy",
    "get_trained_model",
    "list_model_names",
    "model_cache_path",
    "train_model",
]

ZOO_MODELS: tuple[str, ...] = ("digits_cnn", "digits_resnet", "digits_mobilenet")
"""Models of the embedded zoo: built, trained and cached by this module."""

MODEL_INPUT_SIZE: dict[str, int] = {"digits_cnn": 8, "digits_resnet": 16, "digits_mobilenet": 8}
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


def _conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, groups: int = 1
):
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion conv-bn-relu6 (left out when ``expand == 1``), depthwise 3x3
    conv-bn-relu6, linear 1x1 projection conv-bn; the input is added back when the shape allows it (stride 1 and
    ``in_channels == out_channels``)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, expand: int = 4) -> None:
        super().__init__()
        hidden = in_channels * expand
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn_relu6(in_channels, hidden, 1)]
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class DigitsMobileNet(nn.Module):
    """MobileNetV2-style net for 1x8x8 digits (any side >= 4 works thanks to the adaptive pool).

    Stem 3x3 conv-bn-relu6 (16 channels), five :class:`InvertedResidual` blocks (16 -> 16 without expansion,
    16 -> 24 stride 2, 24 -> 24, 24 -> 32 stride 2, 32 -> 32; expansion 4; three residual adds), a 1x1
    conv-bn-relu6 to 64 channels, adaptive average pool and a linear classifier: 16 Conv2d layers (5 of them
    depthwise) and one Linear, every ReLU6 its own module. Names follow torchvision's MobileNetV2
    (``features.2.conv.1.0`` is a depthwise conv, ``classifier``).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu6(1, 16, 3),
            InvertedResidual(16, 16, expand=1),
            InvertedResidual(16, 24, stride=2),
            InvertedResidual(24, 24),
            InvertedResidual(24, 32, stride=2),
            InvertedResidual(32, 32),
            _conv_bn_relu6(32, 64, 1),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


# --------------------------------------------------------------------------------------------- building


def _torchvision_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_model_names() -> list[str]:
    """Every name :func:`build_model` accepts: the zoo first, then the real pretrained models
    (``efficientnet_lite1``, ``efficientnet_lite2``), then torchvision classification models."""
    return [*ZOO_MODELS, *REAL_MODELS, *_torchvision_names()]


def build_model(name: str, *, num_classes: int = 10) -> nn.Module:
    """A fresh, untrained model by name.

    ``name`` is a zoo model (``digits_cnn``, ``digits_resnet``, ``digits_mobilenet``) or any torchvision classification model
    (``resnet18``, ``mobilenet_v2``, ...; built with ``weights=None``), or a real model's architecture
    (``efficientnet_lite1`` / ``efficientnet_lite2``, random weights; needs the ``[real]`` extra; pretrained
    weights and their photo task: :func:`workbench.tasks.real_task`). Initialisation uses the global torch
    RNG: seed it (or use :func:`get_trained_model`) for reproducible weights.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if name == "digits_cnn":
        return DigitsCNN(num_classes)
    if name == "digits_resnet":
        return DigitsResNet(num_classes)
    if name == "digits_mobilenet":
        return DigitsMobileNet(num_classes)
    if name in REAL_MODELS:
        return build_real_model(name, pretrained=False, num_classes=num_classes)
    if isinstance(name, str) and name in _torchvision_names():
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    raise ValueError(
        f"unknown model name {name!r}: valid zoo models are {list(ZOO_MODELS)}, real pretrained models "
        f"{list(REAL_MODELS)}; any torchvision "
        "classification model name also works (e.g. 'resnet18', 'mobilenet_v2', 'resnet50', "
        "'mobilenet_v3_small'; see torchvision.models.list_models(module=torchvision.models))"
    )


# --------------------------------------------------------------------------------------------- cache


def _default_data_config(name: str) -> DigitsConfig:
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
    atomic_write_with(path, lambda tmp: torch.save(trained.state_dict(), tmp))
    atomic_write_with(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2, sort_keys=True)))
    info["source"] = "trained"
    return trained, info
