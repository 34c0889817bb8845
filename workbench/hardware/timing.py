"""This CPU's facts (name, VNNI) and side-by-side latency timing, shared by every deployment path."""

from __future__ import annotations

import ctypes
import functools
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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
KEEP_FREED_BYTES = 1 << 30


def keep_freed_memory(max_bytes: int = KEEP_FREED_BYTES) -> bool:
    """Make glibc's malloc keep freed blocks of up to ``max_bytes`` for reuse instead of handing them back to
    the OS (``mallopt`` M_MMAP_THRESHOLD and M_TRIM_THRESHOLD, what ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` set at start-up). Without it a CPU forward pass whose activations exceed the
    mmap threshold page-faults them in afresh on every call: on EfficientNet-Lite1 at batch 8 that was 20-30 %
    of the time and most of its run-to-run spread. Process-wide and for the rest of the process (resident
    memory stays at its peak, as under jemalloc / tcmalloc). Returns False (and changes nothing) where the C
    library is not glibc."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be an integer >= 1, got {max_bytes!r}")
    return _set_malloc_thresholds(max_bytes)


@functools.cache
def _set_malloc_thresholds(max_bytes: int) -> bool:
    """``mallopt`` once per process and size (every timing asks: no library lookup on each call)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: glibc's where it is the C library
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, max_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, max_bytes))


def time_side_by_side(
    fns: dict[str, Callable[..., Any]],
    x: Any,
    *,
    repeats: int = 7,
    warmup: int = 2,
    threads: int | None = None,
    keep_memory: bool = True,
) -> dict[str, LatencyStats]:
    """Latency of several callables on the same input, interleaved run by run (so drift hits all alike).

    ``x``: a tensor (``fn(x)``), a tuple (``fn(*x)``) or a dict of tensors (``fn(**x)``). ``keep_memory``:
    time with freed memory kept for reuse (:func:`keep_freed_memory`, process-wide), the steady state of a
    serving process, not the page faults of memory handed back and forth."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if keep_memory:
        keep_freed_memory()
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


def time_modules_in_model(
    run: Callable[[], Any],
    modules: dict[str, torch.nn.Module],
    *,
    repeats: int = 7,
    warmup: int = 2,
    threads: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Milliseconds each of ``modules`` (name -> a submodule of the model ``run()`` runs) takes inside whole
    runs of the model: forward pre- / post-hooks read ``clock`` around every call; a module called several times
    in a run counts the sum; the median over ``repeats`` runs after ``warmup``. The layers then run on the
    activations, caches and memory of the real pass, not on a captured input in a loop of their own. Modules
    never called are left out. ``clock`` is injectable (tests)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    started: dict[str, float] = {}
    spent: dict[str, float] = {}

    def pre(name: str) -> Callable[..., None]:
        return lambda *_: started.__setitem__(name, clock())

    def post(name: str) -> Callable[..., None]:
        return lambda *_: spent.__setitem__(name, spent.get(name, 0.0) + clock() - started.pop(name))

    handles = [h for n, m in modules.items() for h in (m.register_forward_pre_hook(pre(n)),
                                                       m.register_forward_hook(post(n)))]  # fmt: skip
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    runs: dict[str, list[float]] = {n: [] for n in modules}
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                spent.clear()
                run()
                if i >= warmup:
                    for n, s in spent.items():
                        runs[n].append(1000.0 * s)
    finally:
        torch.set_num_threads(previous)
        for h in handles:
            h.remove()
    return {n: statistics.median(v) for n, v in runs.items() if v}
