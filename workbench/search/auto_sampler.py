""":class:`AutoSampler`: the Optuna sampler of the ``auto`` strategy. The allocated front is enqueued when the study
is created (:func:`workbench.search.auto.initial_candidates`); every other trial gets the next local move of
:func:`workbench.search.auto.propose`, from the tables stored with the study and the trials measured so far (by any
worker). When no move is left the study is marked exhausted and the workers stop."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from workbench.search.auto import EXHAUSTED_ATTR, TABLES_ATTR, AllocationTables, Measured, propose
from workbench.search.candidates import _plan
from workbench.search.space import SearchSpace

MOVE_LABEL = "auto move"


class AutoSampler(BaseSampler):
    """Proposes the ``auto`` strategy's local moves (see :mod:`workbench.search.auto`); parameters it does not set
    (a study without tables) are drawn at random with ``seed``."""

    def __init__(self, space: SearchSpace, *, seed: int = 0) -> None:
        self._space = space
        self._dists = space.distributions()
        self._random = RandomSampler(seed=seed)
        self._tables: AllocationTables | None = None

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._dists)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if trial.system_attrs.get("fixed_params") or not search_space:
            return {}  # an enqueued plan of the front
        tables = self._load(study)
        if tables is None:
            return {}
        trials = study.get_trials(deepcopy=False)
        measured, seen = _history(tables, self._space, trials)
        step = sum(1 for t in trials if str(t.user_attrs.get("label", "")).startswith(MOVE_LABEL))
        choice = propose(tables, measured, seen, step)
        if choice is None:
            study.set_user_attr(EXHAUSTED_ATTR, True)
            best = max(measured, key=lambda m: m.score, default=None)
            if best is None:
                return {}
            choice = np.array(best.choice)  # a measured plan again: a cache hit, no evaluation
        label = f"{MOVE_LABEL} {step + 1} (predicted error {tables.error(choice):.4g})"
        # a sampler sees a FrozenTrial: its label goes through the storage (Optuna has no public setter here)
        study._storage.set_trial_user_attr(trial._trial_id, "label", label)
        return self._space.params_from_plan(_plan(self._space, tables.bits_of(choice)))

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def _load(self, study: Study) -> AllocationTables | None:
        if self._tables is None:
            text = study.user_attrs.get(TABLES_ATTR)
            self._tables = AllocationTables.from_json(text) if text else None
        return self._tables


def _bits(space: SearchSpace, params: dict[str, Any]) -> dict[str, int] | None:
    """Weight bits per unit of a trial's parameters (None: a plan ``auto`` does not describe)."""
    out = {}
    for u in space.units:
        method = params.get(SearchSpace.param_name(u.name, "method"), "quantize")
        w = params.get(SearchSpace.param_name(u.name, "w_bits"), u.choices.w_bits[0])
        if method != "quantize":
            return None
        out[u.name] = int(w)
    return out


def _history(
    tables: AllocationTables, space: SearchSpace, trials: list[FrozenTrial]
) -> tuple[list[Measured], set[tuple[int, ...]]]:
    """(measured feasible plans with their scores, the choices of every trial proposed so far)."""
    measured: list[Measured] = []
    seen: set[tuple[int, ...]] = set()
    for t in trials:
        params = t.params or t.system_attrs.get("fixed_params") or {}
        bits = _bits(space, params)
        if bits is None or any(b not in tables.bits for b in bits.values()):
            continue
        choice = tuple(int(j) for j in tables.choice_of(bits))
        seen.add(choice)
        a = t.user_attrs
        if t.state != TrialState.COMPLETE or not a.get("feasible", False):
            continue
        if a.get("accuracy_source") not in ("measured", "predicted"):
            continue
        sec = a.get("secondary")
        sec = float(sec) if isinstance(sec, int | float) and math.isfinite(sec) else -math.inf
        measured.append(Measured(choice, (float(a["accuracy"]), sec)))
    return measured, seen


def is_exhausted(study: optuna.Study) -> bool:
    return bool(study.user_attrs.get(EXHAUSTED_ATTR, False))


__all__ = ["MOVE_LABEL", "AutoSampler", "is_exhausted"]
