"""The parameters :class:`~workbench.ui.explorer.BitWidthExplorer` shows: one value per ``(unit, knob)`` of a
search space, validated against the unit's choices; the views (map, dropdown grid) only display them."""

from __future__ import annotations

from typing import Any

from workbench.quant.spec import PlanError, QuantPlan
from workbench.search.space import SearchSpace
from workbench.ui.bitmap import FLOAT


class KnobState:
    """``values[(unit, knob)]``: the current value of each parameter of ``space`` (start: every first choice);
    ``choices[(unit, knob)]``: its choices. The ``assign*`` methods validate and set, nothing else."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        table = space.knob_table()
        self.choices: dict[tuple[str, str], tuple] = {(u, k): tuple(c) for u, k, c in table}
        self.values: dict[tuple[str, str], Any] = {(u, k): c[0] for u, k, c in table}

    def params(self) -> dict[str, Any]:
        """``"<unit>/<knob>" -> value``."""
        return {SearchSpace.param_name(u, k): v for (u, k), v in self.values.items()}

    def plan(self) -> QuantPlan:
        return self.space.plan_from_params(self.params())

    def assign(self, unit: str, knob: str, value: Any) -> None:
        """Set one parameter; raises naming the unit's knobs or the valid choices."""
        key = (unit, knob)
        if key not in self.choices:
            self.space.unit(unit)  # raises with the list of units
            knobs = [k for (u, k) in self.choices if u == unit]
            raise PlanError(f"unit {unit!r} has no knob {knob!r}; its knobs: {knobs}")
        choices = list(self.choices[key])
        if value not in choices:
            raise PlanError(f"{unit}/{knob}={value!r} is not a choice; valid: {choices}")
        self.values[key] = choices[choices.index(value)]

    def assign_choice(self, unit: str, column: Any) -> None:
        """A map column: ``unit`` to ``column`` weight bits (a float32 unit takes its first other method), or
        float32 for ``"float"`` (method ``none``)."""
        u = self.space.unit(unit)
        if column == FLOAT:
            self.assign(unit, "method", "none")
            return
        if self.values.get((unit, "method")) == "none":
            self.assign(unit, "method", next(m for m in u.choices.methods if m != "none"))
        self.assign(unit, "w_bits", column)

    def assign_all(self, knob: str, value: Any) -> None:
        """``knob`` to ``value`` on every unit that offers it; raises when none does."""
        hits = [key for key, choices in self.choices.items() if key[1] == knob and value in choices]
        if not hits:
            raise PlanError(f"no unit offers {knob}={value!r}")
        for unit, _ in hits:
            self.assign(unit, knob, value)

    def assign_plan(self, plan: QuantPlan) -> None:
        """Every parameter from ``plan`` (raises when the plan leaves the space)."""
        for name, value in self.space.params_from_plan(plan).items():
            unit, _, knob = name.rpartition("/")
            self.assign(unit, knob, value)


__all__ = ["KnobState"]
