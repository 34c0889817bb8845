"""A reinforcement-learning search: an LSTM controller that emits every unit's choices one after another,
trained with REINFORCE, wrapped as an Optuna sampler.

* :func:`feature_map_stats`: per-layer mean, variance and entropy of the output feature maps (the controller's
  per-unit input features).
* :class:`LSTMController`: the policy. One step per decision (a ``"<unit>/<knob>"`` parameter with more than
  one choice); the step input is ``[embedding of the previous action, the unit's normalised feature-map stats
  (mean, log variance, entropy), one-hot of the knob type]``; one ``LSTMCell``; one linear head per knob type,
  sized to that knob's largest choice count and masked to the step's choice count.
* :class:`RLControllerSampler`: an ``optuna.samplers.BaseSampler``. Each trial's whole plan is sampled jointly
  from the controller; after each complete trial one REINFORCE step updates it (see the class docstring for the
  reward, the baseline and the advantage normalisation).
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
import torch.nn.functional as F
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from workbench._common.threads import torch_threads
from workbench.search.rl_features import STAT_COLUMNS, feature_map_stats, unit_features
from workbench.search.rl_policy import _START, LSTMController
from workbench.search.space import SearchSpace

# ============================================================================================ sampler


class RLControllerSampler(optuna.samplers.BaseSampler):
    """REINFORCE-trained LSTM controller (:class:`LSTMController`) as an Optuna sampler over a SearchSpace.

    *Sampling*: the relative search space is ``space.distributions()``; each trial samples the whole joint
    choice from the controller with a ``torch.Generator`` seeded by ``seed + trial.number`` (reproducible).
    Parameters with one choice are not decisions of the controller (they always take that choice). Parameters
    outside the space are sampled uniformly (a seeded ``RandomSampler``).

    *Reward* of a COMPLETE trial (PRUNED / FAIL trials and non-finite rewards do not update the controller):

    * ``reward(trial)`` when given (None skips the trial; ``trial`` has its final state and values);
    * single objective: the value, negated when the study minimizes;
    * multi-objective: ``sum_i w_i * s_i * v_i / scale_i`` with ``s_i = +1`` (maximize) / ``-1`` (minimize),
      ``scale_0 = 1`` and ``scale_i`` (i >= 1) the running max of ``|v_i|`` over the trials seen, so costs
      count in [0, 1]. Default weights ``(1, cost_weight / (k - 1), ...)``: the (accuracy-like) first
      objective minus ``cost_weight`` (0.5) times the mean normalised cost; ``directions_weights`` replaces them
      (one non-negative weight per objective).
    * infeasible trials (``trial.user_attrs["constraint_violation"] > 0``, or any Optuna constraint value
      ``> 0``, i.e. ``trial.set_constraint`` / the ``"constraints"`` system attrs) get
      ``min(reward, lowest feasible reward seen) - scale * (1 + log1p(violation))``, ``scale`` the running reward std
      (1 before there is one), ``violation`` the sum of the positive violations. This applies to a custom
      ``reward`` too.

    *Update* (one REINFORCE step per rewarded trial, Adam with ``lr``, grad norm clipped to 5): the actions are
    recovered from the trial's params (a value outside the choices: the action the sampler drew for that trial
    if any, else unobserved), so enqueued trials, trials added with ``study.add_trial`` and trials of a resumed
    study (replayed on the next sample when ``learn_from_existing``) all train it. ``advantage = (reward -
    baseline) / std``, ``std`` the running (Welford) standard deviation of all rewards so far including this one
    (no scaling while it is 0), clipped to [-5, 5]; ``loss = -advantage * log_prob(actions) - entropy_weight *
    entropy``; then ``baseline <- baseline_decay * baseline + (1 - baseline_decay) * reward`` (the baseline
    starts at the first reward, so the first trial only trains the entropy term). Torch runs on one thread
    inside sampling and updates (the previous thread count is restored).

    Tuning (measured on a 4-unit x 3-width lookup objective, 150 trials, 20 seeds): the defaults
    (``lr=0.005, entropy_weight=0.05``) reach the optimum in 20/20 runs (last-30 mean 3.91 of 4); ``lr=0.01,
    entropy_weight=1e-3`` starts faster but reaches it in only 13/20 (a unit locks onto a wrong choice early).
    """

    def __init__(
        self,
        space: SearchSpace,
        unit_stats: np.ndarray | pd.DataFrame | None = None,
        *,
        seed: int = 0,
        lr: float = 0.005,
        hidden: int = 64,
        baseline_decay: float = 0.9,
        entropy_weight: float = 0.05,
        reward: Callable[[FrozenTrial], float | None] | None = None,
        directions_weights: Sequence[float] | None = None,
        cost_weight: float = 0.5,
        learn_from_existing: bool = True,
    ) -> None:
        if not (0.0 <= baseline_decay < 1.0):
            raise ValueError(f"baseline_decay must lie in [0, 1), got {baseline_decay}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if directions_weights is not None:
            directions_weights = tuple(float(w) for w in directions_weights)
            if not directions_weights or any(not math.isfinite(w) or w < 0 for w in directions_weights):
                raise ValueError(
                    f"directions_weights must be finite and >= 0, got {list(directions_weights)}"
                )
        self.space = space
        self.seed = int(seed)
        self.lr = float(lr)
        self.baseline_decay = float(baseline_decay)
        self.entropy_weight = float(entropy_weight)
        self.reward_fn = reward
        self.directions_weights = directions_weights
        self.cost_weight = float(cost_weight)
        self.learn_from_existing = bool(learn_from_existing)
        self._distributions: dict[str, CategoricalDistribution] = space.distributions()
        # every parameter: (name, knob, choices, step index or None when it has one choice)
        self._params: list[tuple[str, str, tuple, int | None]] = []
        decisions: list[tuple[str, int]] = []
        step_units: list[int] = []
        unit_index = {u.name: i for i, u in enumerate(space.units)}
        for unit, knob, choices in space.knob_table():
            step = None
            if len(choices) > 1:
                step = len(decisions)
                decisions.append((knob, len(choices)))
                step_units.append(unit_index[unit])
            self._params.append((space.param_name(unit, knob), knob, tuple(choices), step))
        feats = unit_features(space, unit_stats)
        step_feats = feats[step_units] if step_units else np.zeros((0, 3))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.controller = LSTMController(decisions, step_feats, hidden=hidden)
        self._optimizer = torch.optim.Adam(self.controller.parameters(), lr=self.lr)
        self._random = optuna.samplers.RandomSampler(seed=self.seed)
        self._lock = threading.RLock()
        self._sampled: dict[int, list[int]] = {}
        self._done: set[int] = set()
        self._baseline: float | None = None
        self._n_rewards = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._min_reward = math.inf
        self._obj_scale: dict[int, float] = {}
        self._history: list[dict[str, Any]] = []

    # -- pickling (the lock is not picklable) --------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- BaseSampler ---------------------------------------------------------------------------------------
    def reseed_rng(self) -> None:
        self._random.reseed_rng()
        self.seed = int(np.random.SeedSequence().generate_state(1)[0])

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._distributions)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        with self._lock, torch_threads(1):
            if self.learn_from_existing:
                self._catch_up(study, trial.number)
            gen = torch.Generator().manual_seed((self.seed + trial.number) % (2**63))
            with torch.no_grad():
                actions, _, _ = self.controller.sample(gen)
            self._sampled[trial.number] = actions
        out: dict[str, Any] = {}
        for name, _knob, choices, step in self._params:
            dist = search_space.get(name)
            if dist is None:
                continue
            value = choices[actions[step]] if step is not None else choices[0]
            if isinstance(dist, CategoricalDistribution) and value in dist.choices:
                out[name] = value
        return out

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        with self._lock:
            if trial.number in self._done:
                return
            self._done.add(trial.number)
            if state != TrialState.COMPLETE or values is None:
                self._sampled.pop(trial.number, None)
                return
            finished = copy.copy(trial)  # Optuna passes the still-RUNNING trial: give `reward` its outcome
            finished.state = state
            finished.values = list(values)
            with torch_threads(1):
                self._learn(study, finished, list(values))

    # -- learning ------------------------------------------------------------------------------------------
    def _catch_up(self, study: Study, before: int) -> None:
        """Train on COMPLETE trials this sampler has not seen (a resumed study, other workers, add_trial)."""
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for t in sorted(trials, key=lambda t: t.number):
            if t.number >= before or t.number in self._done or t.values is None:
                continue
            self._done.add(t.number)
            self._learn(study, t, list(t.values))

    def actions_of(self, params: Mapping[str, Any], fallback: Sequence[int] | None = None) -> list[int]:
        """Controller actions of a parameter dict (-1 where a decision's value is missing or not a choice and
        ``fallback`` has none)."""
        actions = [-1] * len(self.controller.decisions)
        for name, _knob, choices, step in self._params:
            if step is None:
                continue
            value = params.get(name, _MISSING)
            if value is not _MISSING and value in choices:
                actions[step] = choices.index(value)
            elif fallback is not None and 0 <= fallback[step] < len(choices):
                actions[step] = int(fallback[step])
        return actions

    def _violation(self, trial: FrozenTrial) -> float:
        total = 0.0
        with contextlib.suppress(TypeError, ValueError):
            total += max(float(trial.user_attrs.get("constraint_violation", 0) or 0), 0.0)
        try:
            constraints = trial.constraints
        except Exception:  # noqa: BLE001 - optional, version dependent
            constraints = {}
        for v in constraints.values():
            with contextlib.suppress(TypeError, ValueError):
                v = float(v)
                if math.isfinite(v):
                    total += max(v, 0.0)
                elif v > 0:
                    total += 1e6
        return total

    def _raw_reward(self, study: Study, trial: FrozenTrial, values: list[float]) -> float | None:
        if self.reward_fn is not None:
            r = self.reward_fn(trial)
            return None if r is None else float(r)
        directions = study.directions
        signs = [1.0 if d == StudyDirection.MAXIMIZE else -1.0 for d in directions]
        if len(values) == 1:
            return signs[0] * float(values[0])
        k = len(values)
        if self.directions_weights is not None:
            if len(self.directions_weights) != k:
                raise ValueError(
                    f"directions_weights has {len(self.directions_weights)} weights; the study has {k}"
                )
            weights = self.directions_weights
        else:
            weights = (1.0,) + (self.cost_weight / (k - 1),) * (k - 1)
        r = 0.0
        for i, (v, s, w) in enumerate(zip(values, signs, weights)):
            v = float(v)
            if i == 0:
                r += w * s * v
                continue
            if math.isfinite(v):
                self._obj_scale[i] = max(self._obj_scale.get(i, 0.0), abs(v))
            scale = self._obj_scale.get(i, 0.0)
            r += w * s * (v / scale if scale > 0 else v)
        return r

    def _learn(self, study: Study, trial: FrozenTrial, values: list[float]) -> None:
        sampled = self._sampled.pop(trial.number, None)
        raw = self._raw_reward(study, trial, values)
        if raw is None or not math.isfinite(raw):
            return
        std_before = math.sqrt(self._m2 / self._n_rewards) if self._n_rewards > 1 else 0.0
        violation = self._violation(trial)
        reward = raw
        if violation > 0:
            scale = std_before if std_before > 0 else 1.0
            reward = min(raw, self._min_reward) - scale * (1.0 + math.log1p(violation))
        else:
            self._min_reward = min(self._min_reward, raw)
        actions = self.actions_of(trial.params, sampled)
        if not self.controller.decisions or all(a < 0 for a in actions):
            return
        # running mean / std (Welford), including this reward
        self._n_rewards += 1
        delta = reward - self._mean
        self._mean += delta / self._n_rewards
        self._m2 += delta * (reward - self._mean)
        std = math.sqrt(self._m2 / self._n_rewards) if self._n_rewards > 1 else 0.0
        baseline = reward if self._baseline is None else self._baseline
        advantage = reward - baseline
        if std > 1e-12:
            advantage /= std
        advantage = float(np.clip(advantage, -5.0, 5.0))
        self.controller.train()
        log_prob, entropy = self.controller.log_prob(actions)
        loss = -advantage * log_prob - self.entropy_weight * entropy
        self._optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.controller.parameters(), 5.0)
        self._optimizer.step()
        self._baseline = self.baseline_decay * baseline + (1.0 - self.baseline_decay) * reward
        self._history.append(
            {
                "trial": trial.number,
                "reward": reward,
                "baseline": baseline,
                "advantage": advantage,
                "loss": float(loss.detach()),
            }
        )

    # -- reporting -----------------------------------------------------------------------------------------
    def history(self) -> pd.DataFrame:
        """One row per update: trial, reward (after any constraint penalty), baseline (the one the advantage
        used), advantage (normalised, clipped), loss."""
        with self._lock:
            return pd.DataFrame(self._history, columns=["trial", "reward", "baseline", "advantage", "loss"])

    def policy_probabilities(self) -> dict[str, dict[Any, float]]:
        """The greedy-path marginal choice probabilities: per parameter, each choice's probability when every
        earlier decision takes its most likely choice (for inspection)."""
        out: dict[str, dict[Any, float]] = {}
        with self._lock, torch_threads(1), torch.no_grad():
            ctrl = self.controller
            h = torch.zeros(1, ctrl.hidden)
            c = torch.zeros(1, ctrl.hidden)
            prev = torch.tensor([_START])
            probs_by_step: list[list[float]] = []
            for i, (knob, _n) in enumerate(ctrl.decisions):
                logits, h, c = ctrl.step(i, prev, h, c)
                p = F.softmax(logits, dim=-1)
                probs_by_step.append([float(v) for v in p])
                prev = torch.tensor([ctrl.offsets[knob] + int(p.argmax())])
        for name, _knob, choices, step in self._params:
            out[name] = {choices[0]: 1.0} if step is None else dict(zip(choices, probs_by_step[step]))
        return out


_MISSING = object()


__all__ = ["STAT_COLUMNS", "LSTMController", "RLControllerSampler", "feature_map_stats", "unit_features"]
