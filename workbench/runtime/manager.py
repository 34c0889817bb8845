"""The resource manager: the global budget over a stream of inputs."""

from __future__ import annotations

import numpy as np

from workbench.runtime.config import RuntimeBudgetError


class ResourceManager:
    """Global budget over the stream: picks the policy knob meeting ``budget`` on calibration data, then, while
    serving, overrides decisions that would lift the running average cost over the budget."""

    def __init__(self, budget: float, rung_costs: np.ndarray, *, slack: float = 0.0) -> None:
        self.budget = float(budget)
        self.rung_costs = np.asarray(rung_costs, dtype=float)
        if self.budget < self.rung_costs.min() * (1 - 1e-9):
            raise RuntimeBudgetError(
                f"budget {budget:.6g} is below the cheapest precision map's cost {self.rung_costs.min():.6g}; "
                f"feasible budgets are >= {self.rung_costs.min():.6g} (the cheapest precision map)"
            )
        self.slack = slack
        self.spent = 0.0
        self.served = 0
        self.overrides = 0

    def reset(self) -> None:
        self.spent, self.served, self.overrides = 0.0, 0, 0

    def admit(self, wanted: int, extra_cost: float = 0.0) -> int:
        """The rung an input may run: ``wanted`` or the most expensive cheaper rung keeping the running average
        within budget (never below the cheapest)."""
        limit = self.budget * (1 + self.slack) * (self.served + 1) - self.spent - extra_cost
        r = wanted
        while r > 0 and self.rung_costs[r] > limit:
            r -= 1
        if r != wanted:
            self.overrides += 1
        return r

    def charge(self, cost: float) -> None:
        self.spent += cost
        self.served += 1
