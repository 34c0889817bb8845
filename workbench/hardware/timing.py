"""This CPU's facts (name, VNNI) and side-by-side latency timing, shared by every deployment path."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from workbench.quant.inputs import (
    call_model,
    first_tensor,
)


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX512-VNNI or AVX-VNNI (int8 dot products without 16-bit saturation)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
    except OSError:
        pass
    return False


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock latency of one batch, over ``len(times_ms)`` timed runs after warm-up."""

    median_ms: float
    min_ms: float
    max_ms: float
    times_ms: tuple[float, ...]

    @classmethod
    def from_times(cls, seconds: list[float]) -> LatencyStats:
        ms = [1000.0 * s for s in seconds]
        return cls(statistics.median(ms), min(ms), max(ms), tuple(ms))

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_ms": self.median_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "times_ms": list(self.times_ms),
        }


def time_side_by_side(
    fns: dict[str, Callable[..., Any]],
    x: Any,
    *,
    repeats: int = 7,
    warmup: int = 2,
    threads: int | None = None,
) -> dict[str, LatencyStats]:
    """Latency of several callables on the same input, interleaved run by run (so drift hits all alike).

    ``x``: a tensor (``fn(x)``), a tuple (``fn(*x)``) or a dict of tensors (``fn(**x)``)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    # CUDA runs asynchronously: synchronise around each timed call so the time is the kernels', not the launch's
    lead = first_tensor(x)
    on_cuda = lead is not None and lead.device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(lead.device)) if on_cuda else (lambda: None)
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    times: dict[str, list[float]] = {k: [] for k in fns}
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                for fn in fns.values():
                    call_model(fn, x)
            for _ in range(repeats):
                for k, fn in fns.items():
                    sync()
                    t0 = time.perf_counter()
                    call_model(fn, x)
                    sync()
                    times[k].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    return {k: LatencyStats.from_times(v) for k, v in times.items()}
