"""Data parallelism on torch.distributed: the process group a ``torchrun`` launch sets up, and its helpers.

``torchrun --nproc_per_node N -m workbench qat ...`` (or ``--nnodes M --rdzv-endpoint host:port`` across
machines) starts N processes; :func:`init_from_env` joins them into one process group (``gloo`` on the CPU,
``nccl`` on CUDA). :func:`workbench.qat.train_qat` then trains one DistributedDataParallel replica per process:
every process walks the same seeded batches and takes its own slice of each (:func:`shard`), so N processes
train on exactly the global batches one process would, and gradients are averaged by DDP. Rank 0 alone logs to
MLflow and writes checkpoints and packed files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from workbench.devices import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the process group (``world_size`` 1 when there is none)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def current() -> DistInfo:
    """The initialised process group, or a single-process :class:`DistInfo`."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        backend=dist.get_backend(),
    )


def init_from_env(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

    Without that environment (a plain ``python`` launch) nothing happens and a single-process info is returned.
    The backend is ``nccl`` when ``device`` is CUDA (each process then uses ``cuda:LOCAL_RANK``), else ``gloo``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return current()
    if dist.is_initialized():
        return current()
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return current()


def process_device(device: str | torch.device | None) -> torch.device:
    """The device this process trains on: ``cuda:LOCAL_RANK`` for a CUDA run in a process group, else
    ``device`` as given (None: cpu)."""
    info = current()
    dev = resolve_device(device)
    if info.active and dev.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return dev


def shard(x: Any, y: torch.Tensor, info: DistInfo) -> tuple[Any, torch.Tensor]:
    """This rank's contiguous slice of a global batch (sizes differ by at most one; a slice may be empty).
    ``x`` may be a tensor, a tuple or a dict of tensors (each is sliced along its first dimension)."""
    if not info.active:
        return x, y
    from workbench.quant.inputs import map_inputs

    n, r = info.world_size, info.rank
    return map_inputs(x, lambda t: torch.tensor_split(t, n)[r]), torch.tensor_split(y, n)[r]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over all ranks (``values`` itself outside a process group)."""
    if current().active:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if current().active:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
