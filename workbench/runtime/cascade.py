"""A cascade on the cheap rung's own confidence: run the cheap rung, escalate the inputs it is unsure of.

The threshold is calibrated on calibration data to a target agreement with the ladder's top rung: the fewest
escalations (least confident first) whose cascade output agrees with the top rung on at least the target share of
the calibration inputs. The time the calibration takes is measured (:attr:`ConfidenceCascade.calibration_s`); the
time scoring takes while serving is counted by the stream (:mod:`workbench.runtime.stream`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from workbench.runtime.deployed import DeployedLadder

SCORES: tuple[str, ...] = ("margin", "confidence", "entropy")


def confidence(logits: torch.Tensor, score: str = "margin") -> np.ndarray:
    """Per row of ``logits``, higher = surer: the top-1 minus top-2 softmax probability (``margin``), the top-1
    probability (``confidence``), or minus the softmax entropy (``entropy``). In numpy: for the one or few rows
    of a served item, a few numpy calls cost less than torch's per-op dispatch (this is serving time)."""
    if score not in SCORES:
        raise ValueError(f"score={score!r} is not valid; choose one of {SCORES}")
    z = logits.detach().float().numpy().astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    if score == "entropy":
        return (p * np.log(np.maximum(p, 1e-12))).sum(1)
    if score == "confidence" or p.shape[1] < 2:
        return p.max(1)
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


@dataclass(frozen=True)
class ConfidenceCascade:
    """Run rung ``cheap``; an input whose ``score`` is below ``threshold`` runs again on the escalation rung.

    Calibration figures: ``calib_agreement`` (share of calibration inputs whose cascade output agrees with the top
    rung), ``calib_escalation`` (share escalated), ``reached`` (whether the target agreement was met: when not,
    every input escalates), ``calibration_s`` (seconds the calibration took, forward passes included)."""

    cheap: int
    expensive: int
    score: str
    threshold: float
    target_agreement: float
    calib_agreement: float
    calib_escalation: float
    reached: bool
    calibration_s: float

    def escalate(self, logits: torch.Tensor) -> np.ndarray:
        """Which rows of the cheap rung's ``logits`` escalate (boolean mask)."""
        return confidence(logits, self.score) < self.threshold

    @classmethod
    def calibrate(
        cls,
        ladder: DeployedLadder,
        x_cal: torch.Tensor,
        *,
        cheap: int = 0,
        expensive: int | None = None,
        score: str = "margin",
        target_agreement: float = 0.99,
        min_escalation: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> ConfidenceCascade:
        """The cascade from rung ``cheap`` to rung ``expensive`` (default the top) whose threshold meets
        ``target_agreement`` with the top rung on ``x_cal`` with the fewest escalations, and at least the
        ``min_escalation`` share of the least confident inputs (a margin for disagreements a small calibration set
        does not show)."""
        t0 = clock()
        top = len(ladder) - 1
        expensive = top if expensive is None else expensive
        if not 0 <= cheap < expensive <= top:
            raise ValueError(
                f"need 0 <= cheap < expensive <= {top}; got cheap={cheap}, expensive={expensive}"
            )
        if score not in SCORES:
            raise ValueError(f"score={score!r} is not valid; choose one of {SCORES}")
        if not 0 < target_agreement <= 1:
            raise ValueError(f"target_agreement={target_agreement!r} must lie in (0, 1]")
        if not 0 <= min_escalation <= 1:
            raise ValueError(f"min_escalation={min_escalation!r} must lie in [0, 1]")
        outs = ladder.outputs(x_cal)
        ref = outs[top].argmax(1)
        ok_cheap = (outs[cheap].argmax(1) == ref).numpy()
        ok_exp = (outs[expensive].argmax(1) == ref).numpy()
        conf = confidence(outs[cheap], score)
        threshold, agree, k = _threshold(conf, ok_cheap, ok_exp, target_agreement, min_escalation)
        n = len(conf)
        return cls(
            cheap,
            expensive,
            score,
            threshold,
            target_agreement,
            agree,
            k / n,
            agree >= target_agreement,
            clock() - t0,
        )


def _threshold(
    conf: np.ndarray, ok_cheap: np.ndarray, ok_exp: np.ndarray, target: float, min_escalation: float = 0.0
) -> tuple[float, float, int]:
    """(threshold, agreement, escalated count): escalating the ``k`` least confident inputs (``conf`` below the
    threshold), the smallest ``k`` whose agreement reaches ``target``; every input when none does."""
    n = len(conf)
    order = np.argsort(conf, kind="stable")
    gain = np.concatenate([[0], np.cumsum(ok_exp[order].astype(int) - ok_cheap[order].astype(int))])
    agree = (ok_cheap.sum() + gain) / n  # agree[k]: the k least confident escalated
    hit = np.nonzero(agree >= target - 1e-12)[0]
    k = max(int(hit[0]) if len(hit) else n, math.ceil(min_escalation * n - 1e-9))
    s = conf[order]
    if k == 0:
        return -math.inf, float(agree[0]), 0
    if k == n:
        return math.inf, float(agree[n]), n
    # between the last escalated and the first kept; ties with the last escalated escalate too
    thr = float(np.nextafter(s[k - 1], np.inf)) if s[k] == s[k - 1] else float((s[k - 1] + s[k]) / 2)
    esc = conf < thr
    return thr, float(np.where(esc, ok_exp, ok_cheap).mean()), int(esc.sum())
