"""Serving a stream on a deployed ladder under a latency target and a cost budget: :class:`ManagedRuntime`.

Each item of the stream (one input, or a micro-batch ``[N, *input_shape]``) is checked, run on the rung the
:class:`~workbench.runtime.machine.LatencyManager` holds (capped by the average-cost budget of
:class:`~workbench.runtime.manager.ResourceManager`, in BOPs or average weight bits; with a
:class:`~workbench.runtime.cascade.ConfidenceCascade`, the cheap rung first and the unsure rows escalated), and its
measured seconds fed back to the manager with a reading of the machine. A bad item (not a float tensor, wrong
shape, NaN / Inf) is answered with a reason and the stream goes on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from workbench.hardware.timing import keep_freed_memory
from workbench.runtime.cascade import ConfidenceCascade
from workbench.runtime.deployed import DeployedLadder
from workbench.runtime.machine import (
    LatencyManager,
    Machine,
    MachineReading,
    PsutilMachine,
    RungMove,
    SLOConfig,
)
from workbench.runtime.manager import ResourceManager


@dataclass(frozen=True)
class StreamItem:
    """One answered item: ``output`` (None when rejected), ``rung`` that produced it (-1: rejected; the highest
    rung run for a cascade), ``runs`` (every rung run), measured ``seconds`` (checks, selection and inference) of
    which ``inference_s`` in forward passes, ``cost`` in budget units (summed over its rows), ``reason`` for a
    rejection, the machine ``reading`` after it and the manager's ``move`` it caused."""

    index: int
    output: torch.Tensor | None
    rung: int
    runs: tuple[int, ...]
    seconds: float
    inference_s: float
    cost: float
    reason: str | None = None
    reading: MachineReading | None = None
    move: RungMove | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


class ManagedRuntime:
    """A :class:`DeployedLadder` served item by item. ``slo``: the latency target (None: no latency management,
    the rung stays at ``start``); ``budget``: average cost per input in ``budget_kind`` units (``"bops"`` or
    ``"avg_bits"``; None: no cost budget); ``cascade``: escalate from its cheap rung on low confidence;
    ``start``: the first rung (default the top); ``machine`` (default psutil) is read every ``read_every`` served
    items (a psutil reading costs ~0.15-0.5 ms, a third of digits_resnet's pass; the last reading is reused in
    between) and counted in the item's seconds; ``machine`` and ``clock`` (default ``time.perf_counter``) are
    injectable so that a stream can be replayed exactly. ``keep_memory``: keep freed memory for reuse
    (:func:`~workbench.hardware.timing.keep_freed_memory`, process-wide), as the deployments are timed."""

    def __init__(
        self,
        ladder: DeployedLadder,
        *,
        slo: SLOConfig | None = None,
        budget: float | None = None,
        budget_kind: str = "bops",
        cascade: ConfidenceCascade | None = None,
        start: int | None = None,
        machine: Machine | None = None,
        clock: Callable[[], float] = time.perf_counter,
        read_every: int = 64,
        keep_memory: bool = True,
    ) -> None:
        if isinstance(read_every, bool) or not isinstance(read_every, int) or read_every < 1:
            raise ValueError(f"read_every={read_every!r} must be an integer >= 1")
        self.ladder = ladder
        self.costs = ladder.costs(budget_kind)
        self.manager = LatencyManager(len(ladder), slo or SLOConfig(), start=start)
        self.managed = slo is not None
        self.budget = None if budget is None else ResourceManager(budget, self.costs)
        if cascade is not None and cascade.expensive >= len(ladder):
            raise ValueError(
                f"cascade escalates to rung {cascade.expensive}; the ladder has {len(ladder)} rungs"
            )
        self.cascade = cascade
        self.machine = machine or PsutilMachine()
        self.clock = clock
        self.read_every = read_every
        self._served = 0
        self._reading = MachineReading()
        if keep_memory:  # serve in the steady state: activations reused, not page-faulted in per item
            keep_freed_memory()

    def _read(self) -> MachineReading:
        """The machine reading for this item: a fresh one every :attr:`read_every` served items."""
        if self._served % self.read_every == 0:
            self._reading = self.machine()
        self._served += 1
        return self._reading

    def check(self, item: Any) -> tuple[torch.Tensor | None, str | None]:
        """``(batch, None)`` for a servable item (one input gets a batch axis), else ``(None, reason)``."""
        shape = self.ladder.input_shape
        if not isinstance(item, torch.Tensor):
            return None, f"not a torch.Tensor (got {type(item).__name__})"
        if not torch.is_floating_point(item):
            return None, f"dtype {item.dtype} is not floating point"
        x = item.unsqueeze(0) if item.dim() == len(shape) else item
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            want = ", ".join(map(str, shape))
            return None, f"shape {tuple(item.shape)} does not match [{want}] or [N, {want}]"
        if x.shape[0] == 0:
            return None, "empty micro-batch (N = 0)"
        if not math.isfinite(
            float(x.sum())
        ):  # one reduction for the clean case; a sum may overflow: rows checked
            bad = torch.nonzero(~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)).flatten().tolist()
            if bad:
                return None, f"contains NaN or Inf values (rows {bad})"
        return (x if x.dtype == torch.float32 else x.float()), None

    def serve(self, items: Iterable[Any]) -> Iterator[StreamItem]:
        """Answer each item of ``items`` in order (lazily: the stream may be endless)."""
        for index, item in enumerate(items):
            yield self.serve_one(index, item)

    def serve_one(self, index: int, item: Any) -> StreamItem:
        t0 = self.clock()
        x, reason = self.check(item)
        if reason is not None:
            return StreamItem(index, None, -1, (), self.clock() - t0, 0.0, 0.0, reason)
        level = self.manager.level
        if self.budget is not None and (self.cascade is None or level <= self.cascade.cheap):
            level = self.budget.admit(level)
        if self.cascade is not None and level > self.cascade.cheap:
            out, runs, cost, infer = self._cascade(x, level)
        else:
            ti = self.clock()
            out = self.ladder.run(x, level)
            runs, cost, infer = (level,), float(self.costs[level]) * x.shape[0], self.clock() - ti
            if self.budget is not None:
                for _ in range(x.shape[0]):
                    self.budget.charge(float(self.costs[level]))
        reading = self._read()
        seconds = self.clock() - t0
        move = self.manager.record(index, seconds, reading) if self.managed else None
        out = out[0] if item.dim() == len(self.ladder.input_shape) else out
        return StreamItem(index, out, max(runs), runs, seconds, infer, cost, None, reading, move)

    def _cascade(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, tuple[int, ...], float, float]:
        """Outputs of ``x`` through the cascade under the ceiling ``level``: the cheap rung, then the unsure rows
        on ``min(level, cascade.expensive)`` where the budget admits it; (outputs, runs, cost, inference s)."""
        cas, c = self.cascade, self.costs
        ti = self.clock()
        out = self.ladder.run(x, cas.cheap)
        infer = self.clock() - ti
        esc = np.nonzero(cas.escalate(out))[0]
        high = min(level, cas.expensive)
        if len(esc) and self.budget is not None:
            high = self.budget.admit(high, extra_cost=float(c[cas.cheap]))
        runs: tuple[int, ...] = (cas.cheap,)
        if len(esc) and high > cas.cheap:
            ti = self.clock()
            sel = torch.from_numpy(esc)
            out = out.clone()
            out[sel] = self.ladder.run(x[sel], high)
            infer += self.clock() - ti
            runs = (cas.cheap, high)
        per_row = np.full(x.shape[0], c[cas.cheap])
        if len(runs) > 1:
            per_row[esc] += c[high]
        if self.budget is not None:
            for v in per_row:
                self.budget.charge(float(v))
        return out, runs, float(per_row.sum()), infer


def stream_table(items: Iterable[StreamItem]) -> pd.DataFrame:
    """One row per item: index, rung, runs, seconds, inference_s, cost, reason, CPU and memory readings, move."""
    rows = []
    for it in items:
        r = it.reading or MachineReading(float("nan"), float("nan"), float("nan"))
        rows.append(
            {
                "index": it.index,
                "rung": it.rung,
                "runs": len(it.runs),
                "seconds": it.seconds,
                "inference_s": it.inference_s,
                "cost": it.cost,
                "reason": it.reason or "",
                "cpu_percent": r.cpu_percent,
                "others_cpu_percent": r.others_cpu_percent,
                "memory_percent": r.memory_percent,
                "move": ""
                if it.move is None
                else f"{it.move.from_rung}->{it.move.to_rung}: {it.move.reason}",
            }
        )
    return pd.DataFrame(rows)


def stream_summary(table: pd.DataFrame, *, quantile: float = 0.95) -> dict[str, Any]:
    """Served and rejected counts, mean and quantile seconds of the served items, the rung histogram and the
    number of rung moves of a :func:`stream_table`."""
    ok = table[table["rung"] >= 0]
    return {
        "served": int(len(ok)),
        "rejected": int((table["rung"] < 0).sum()),
        "mean_s": float(ok["seconds"].mean()) if len(ok) else float("nan"),
        f"p{round(100 * quantile)}_s": float(ok["seconds"].quantile(quantile)) if len(ok) else float("nan"),
        "rungs": {int(k): int(v) for k, v in ok["rung"].value_counts().sort_index().items()},
        "moves": int((table["move"] != "").sum()),
    }
