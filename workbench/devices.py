"""Where a stage runs: ``cpu``, ``cuda`` or ``cuda:N`` (``mps`` where torch has it).

Every stage follows the device of the task's model: data batches are moved to it, quantizers create their
buffers on it. :func:`on_device` gives a task whose model is a copy on the requested device (the caller's
model is never moved); stage functions take ``device=`` and call it. Real int8 kernels (torch.ao) are CPU
kernels; the deploy stage says so when asked for another device.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Protocol, TypeVar

import torch
from torch import nn


class _HasModel(Protocol):
    """What :func:`on_device` needs of a task (workbench.tasks reads its model's device from this module)."""

    model: nn.Module
    info: dict


T = TypeVar("T", bound=_HasModel)

_PATTERN = re.compile(r"^(cpu|cuda|mps)(:\d+)?$")


class DeviceError(ValueError):
    """A device that is malformed or not present on this machine."""


def available_devices() -> list[str]:
    """The devices torch can use here: ``cpu``, then ``cuda:0..N-1`` and ``mps`` where present."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a :class:`torch.device` present on this machine (None: ``cpu``).

    A malformed name or a device this machine lacks raises :class:`DeviceError` naming the devices it has.
    """
    if device is None:
        return torch.device("cpu")
    name = str(device)
    if not _PATTERN.match(name):
        raise DeviceError(f"device {name!r} not understood; use one of {available_devices()} (or 'cuda')")
    dev = torch.device(name)
    if dev.type == "cpu":
        return torch.device("cpu")  # 'cpu:0' is the same device as the 'cpu' that CPU tensors report
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} asked for, but CUDA is not available here; use {available_devices()}"
            )
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} does not exist; this machine has {available_devices()}")
        return torch.device("cuda", index)
    if dev.type == "mps" and "mps" not in available_devices():
        raise DeviceError(
            f"device {name!r} asked for, but MPS is not available here; use {available_devices()}"
        )
    return dev


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); ``cpu`` for a model with neither."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def on_device(task: T, device: str | torch.device | None) -> T:
    """``task`` with its model on ``device``: the task itself when the model is there already (or ``device``
    is None), otherwise a copy of the task holding a copy of the model moved there."""
    if device is None:
        return task
    dev = resolve_device(device)
    if model_device(task.model) == dev:
        return task
    model = copy.deepcopy(task.model).to(dev)
    if dataclasses.is_dataclass(task):
        return dataclasses.replace(task, model=model, info={**task.info, "device": str(dev)})
    moved = copy.copy(task)
    moved.model = model
    return moved
