"""Constants, errors and the configuration of runtime adaptation (the bottom of :mod:`workbench.runtime`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

BUDGET_KINDS: tuple[str, ...] = ("bops", "avg_bits", "latency")
SHIFTS: tuple[str, ...] = ("clean", "noise", "contrast", "blur")
POLICIES: tuple[str, ...] = ("static", "rule", "learned", "cascade")


class RuntimeBudgetError(ValueError):
    """No precision map meets the budget; the message names the cheapest feasible budget."""


class RuntimeInputError(ValueError):
    """An input the runtime cannot serve (wrong shape or dtype); the message names what was expected."""


@dataclass(frozen=True)
class RuntimeConfig:
    """Knobs of :class:`AdaptiveRuntime` (defaults work on digits)."""

    w_bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    a_bits: int = 8
    groups: str | Mapping[str, Sequence[str]] = "stage"
    budget_kind: str = "bops"
    probe_samples: int = 128
    probe_agreement: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("probe_agreement",):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ValueError(f"{name}={v!r} must lie in (0, 1]")
        bad = [b for b in self.w_bits if b not in (2, 3, 4, 5, 6, 8)]
        if bad or not self.w_bits:
            raise ValueError(
                f"w_bits {list(self.w_bits)} not valid; choose integer bits from 2, 3, 4, 5, 6, 8"
            )
        if self.a_bits not in (4, 6, 8, 16, 32):
            raise ValueError(f"a_bits={self.a_bits!r} not valid; choose 4, 6, 8, 16 or 32")
        if self.budget_kind not in BUDGET_KINDS:
            raise ValueError(f"budget_kind={self.budget_kind!r} not valid; choose one of {BUDGET_KINDS}")
        if self.probe_samples < 8:
            raise ValueError(f"probe_samples must be >= 8, got {self.probe_samples}")
