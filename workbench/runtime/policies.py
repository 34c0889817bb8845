"""Policies choosing a rung of the ladder per input, and the registry mapping policy names to them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from workbench.runtime.analysis import _needed_rung, _output_features
from workbench.runtime.config import POLICIES


class RuntimeView(Protocol):
    """What a policy reads of the runtime it serves in (an :class:`~workbench.runtime.AdaptiveRuntime`)."""

    analyzer: Callable[[torch.Tensor], np.ndarray]
    probe_rung: int


class Policy:
    """Chooses a rung per input. ``knob`` trades accuracy for cost (set by the resource manager)."""

    name = "policy"
    uses_probe_rung = False

    def fit(
        self, runtime: RuntimeView, x: torch.Tensor, logits: list[torch.Tensor], ref: torch.Tensor
    ) -> None:
        return None

    def scores(self, runtime: RuntimeView, x: torch.Tensor, probe_logits: torch.Tensor | None) -> np.ndarray:
        raise NotImplementedError

    def choose(self, scores: np.ndarray, knob: float, n_rungs: int) -> np.ndarray:
        raise NotImplementedError


class StaticPolicy(Policy):
    """The same rung for every input: ``knob`` is the rung index."""

    name = "static"

    def scores(self, runtime, x, probe_logits):
        return np.zeros(x.shape[0])

    def choose(self, scores, knob, n_rungs):
        return np.full(len(scores), int(round(knob)), dtype=int)


class RulePolicy(Policy):
    """Seed 004's granularity controller: inputs whose statistics say "harder" (calibrated direction of variance
    and entropy against the rung each calibration input needed) get more bits. Costs no extra forward pass."""

    name = "rule"

    def __init__(self) -> None:
        self.mean = self.std = self.weights = None

    def fit(self, runtime, x, logits, ref):
        feats = runtime.analyzer(x)
        self.mean, self.std = feats.mean(0), feats.std(0) + 1e-8
        z = (feats - self.mean) / self.std
        need = _needed_rung(logits, ref)
        # direction: correlation of each statistic with the rung the input needed
        w = np.array(
            [
                np.corrcoef(z[:, j], need)[0, 1] if z[:, j].std() > 0 and need.std() > 0 else 0.0
                for j in range(z.shape[1])
            ]
        )
        self.weights = np.nan_to_num(w)

    def scores(self, runtime, x, probe_logits):
        z = (runtime.analyzer(x) - self.mean) / self.std
        return z @ self.weights  # higher: needs more bits

    def choose(self, scores, knob, n_rungs):
        # knob in [0, n_rungs - 1]: the rung of an average input, shifted by the input's score
        return np.clip(np.round(knob + scores), 0, n_rungs - 1).astype(int)


class LearnedPolicy(Policy):
    """A small controller (per-rung logistic regressions on input statistics and the cheapest rung's output)
    predicting whether each rung keeps the FP32 prediction; the input runs the cheapest rung predicted to agree
    with probability >= ``knob``. Costs one extra pass of the cheapest rung (the probe)."""

    name = "learned"
    uses_probe_rung = True

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed
        self.weights = self.bias = self.mean = self.scale = None

    def _features(self, runtime, x, probe_logits):
        return np.concatenate([runtime.analyzer(x), _output_features(probe_logits)], 1)

    def fit(self, runtime, x, logits, ref):
        from sklearn.linear_model import LogisticRegression

        feats = self._features(runtime, x, logits[runtime.probe_rung])
        self.mean, self.scale = feats.mean(0), feats.std(0) + 1e-8
        z = (feats - self.mean) / self.scale
        target = ref.argmax(1)
        # one logistic regression per rung, kept as a weight matrix: serving is one matrix product
        weights = np.zeros((z.shape[1], len(logits)))
        bias = np.zeros(len(logits))
        for r, lg in enumerate(logits):
            y = (lg.argmax(1) == target).cpu().numpy().astype(int)
            if y.min() == y.max():
                bias[r] = 30.0 if y[0] == 1 else -30.0  # always / never agrees on calibration data
                continue
            clf = LogisticRegression(C=1.0, max_iter=500, random_state=self.seed).fit(z, y)
            weights[:, r], bias[r] = clf.coef_[0], clf.intercept_[0]
        self.weights, self.bias = weights, bias

    def scores(self, runtime, x, probe_logits):
        z = (self._features(runtime, x, probe_logits) - self.mean) / self.scale
        p = 1.0 / (1.0 + np.exp(-(z @ self.weights + self.bias)))
        return np.maximum.accumulate(p, axis=1)  # a more expensive rung is at least as safe

    def choose(self, scores, knob, n_rungs, low: int = 0):
        ok = scores[:, low:] >= knob
        return low + np.where(ok.any(1), ok.argmax(1), n_rungs - 1 - low)


class CascadePolicy(Policy):
    """Feedback through the output: every input runs the probe rung; an input whose top-1 softmax margin is below
    ``knob`` is run again on the escalation rung. Both runs are paid for. The (probe, escalation, threshold)
    triple is the one with the best calibration agreement with FP32 within the budget."""

    name = "cascade"
    uses_probe_rung = True

    def scores(self, runtime, x, probe_logits):
        return _output_features(probe_logits)[:, 1]

    def choose(self, scores, knob, n_rungs):  # not used: serve() escalates on the probe output
        raise NotImplementedError


def _policy(name: str | Policy, seed: int) -> Policy:
    """The registry: the policy named ``name`` (seeded with ``seed`` where it learns), or ``name`` itself."""
    if isinstance(name, Policy):
        return name
    table = {"static": StaticPolicy, "rule": RulePolicy, "cascade": CascadePolicy}
    if name == "learned":
        return LearnedPolicy(seed=seed)
    if name not in table:
        raise ValueError(f"policy={name!r} not valid; choose one of {POLICIES}")
    return table[name]()
