"""The adaptive runtime: per-input dynamic precision under a budget, served batch by batch."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.quant.spec import QuantPlan
from workbench.runtime.analysis import InputAnalyzer, _output_features
from workbench.runtime.config import RuntimeBudgetError, RuntimeConfig, RuntimeInputError
from workbench.runtime.costs import MapCoster
from workbench.runtime.data import _inputs
from workbench.runtime.manager import ResourceManager
from workbench.runtime.policies import CascadePolicy, LearnedPolicy, Policy, StaticPolicy, _policy
from workbench.runtime.probe import ProbeEngine, ProbeResult
from workbench.runtime.result import ServeResult
from workbench.runtime.switchable import SwitchableModel


@dataclass
class _Batch:
    """The running state of one :meth:`AdaptiveRuntime.serve` call: the valid inputs' positions in the batch, and
    per input of the batch its rung, cost and the rungs it ran; ``infer`` accumulates forward-pass seconds."""

    idx: np.ndarray
    rung: np.ndarray
    cost: np.ndarray
    runs: list[list[int]]
    infer: float = 0.0


class AdaptiveRuntime:
    """Per-input dynamic precision under a budget. See :mod:`workbench.runtime`.

    ``model``: a float model (never modified). ``policy``: ``static``, ``rule``, ``learned``, ``cascade`` or a
    :class:`Policy`. ``budget``: average cost per input in ``config.budget_kind`` units (BOPs, bits, or ms on
    ``profile``). ``calib``: calibration inputs (tensor or loader) for the probe engine, the policy and the
    resource manager. ``plans``: the ladder as QuantPlans, cheapest rung first (each validated against ``model``;
    the switchable model is then built from them, one group per layer, and the probe engine only measures each
    rung's KL divergence); by default the probe engine builds the ladder from ``config``. The ladder's plans are
    :attr:`ladder_plans`.
    """

    def __init__(
        self,
        model: nn.Module,
        policy: str | Policy,
        budget: float,
        profile: Any = None,
        *,
        calib: Any,
        config: RuntimeConfig | None = None,
        smodel: SwitchableModel | None = None,
        probe: ProbeResult | None = None,
        calib_logits: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
        plans: Sequence[QuantPlan] | None = None,
    ) -> None:
        self.config = cfg = config or RuntimeConfig()
        if cfg.budget_kind == "latency" and profile is None:
            raise ValueError("budget_kind='latency' needs a hardware profile (profile=...)")
        x_cal = _inputs(calib)
        self.input_shape = tuple(x_cal.shape[1:])
        self._setup_ladder(model, calib, x_cal, profile, smodel, probe, plans)
        self.analyzer = InputAnalyzer()
        self.ladder = self.probe.ladder
        self.ladder_plans: list[QuantPlan] = [self.smodel.plan(m) for m in self.ladder]
        self.rung_costs = np.array([self.coster.value(m, cfg.budget_kind) for m in self.ladder])
        self.policy = _policy(policy, cfg.seed)
        self.budget = float(budget)
        # calibration: per-rung logits of the calibration inputs, agreement with FP32, the probe and escalation
        # rungs, the policy's fit, and the knob that meets the budget
        if calib_logits is None:
            calib_logits = self.calibration_logits(x_cal)
        ref, logits = calib_logits
        self.num_classes = int(ref.shape[1])
        target = ref.argmax(1)
        self.agreement = np.array([float((lg.argmax(1) == target).float().mean()) for lg in logits])
        k = len(self.ladder)
        good = np.nonzero(self.agreement >= cfg.probe_agreement)[0]
        self.probe_rung = int(good[0]) if len(good) else k - 1
        self.escalation_rung = self.probe_rung  # the cascade calibrates both below
        floor = (
            self.rung_costs[self.probe_rung]
            if isinstance(self.policy, LearnedPolicy)
            else float(self.rung_costs.min())
        )
        if self.budget < floor * (1 - 1e-9):
            raise RuntimeBudgetError(
                f"budget {budget:.6g} ({cfg.budget_kind}) is below the cheapest cost policy "
                f"{self.policy.name!r} can run, {floor:.6g}; feasible budgets are >= {floor:.6g}"
            )
        self.manager = ResourceManager(budget, self.rung_costs)
        self.policy.fit(self, x_cal, logits, ref)
        if isinstance(self.policy, CascadePolicy):
            self.probe_rung, self.escalation_rung, self.knob = self._calibrate_cascade(logits, target)
        else:
            self.knob = self._calibrate_knob(x_cal, logits)

    def _setup_ladder(
        self,
        model: nn.Module,
        calib: Any,
        x_cal: torch.Tensor,
        profile: Any,
        smodel: SwitchableModel | None,
        probe: ProbeResult | None,
        plans: Sequence[QuantPlan] | None,
    ) -> None:
        """Set :attr:`smodel`, :attr:`coster` and :attr:`probe`: the given ones, else built from ``plans`` or from
        the config (the probe engine runs on ``config.probe_samples`` calibration inputs drawn with its seed)."""
        cfg = self.config
        if plans is not None and probe is not None:
            raise ValueError(
                "pass either plans (the ladder) or probe (a probe result with its ladder), not both"
            )
        if smodel is None and plans is not None:
            smodel = SwitchableModel.from_plans(model, plans, calib)
        elif smodel is None:
            smodel = SwitchableModel(model, w_bits=cfg.w_bits, a_bits=cfg.a_bits, groups=cfg.groups)
        self.smodel = smodel
        self.coster = MapCoster(model, smodel, x_cal[:1], profile)
        gen = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(x_cal.shape[0], generator=gen)[: cfg.probe_samples]
        engine = ProbeEngine(smodel, self.coster)
        if probe is None and plans is not None:
            maps = [smodel.map_of(p) for p in plans]
            probe = engine.given_ladder(x_cal[idx], maps, kind=cfg.budget_kind)
        self.probe = probe or engine.run(x_cal[idx], kind=cfg.budget_kind)

    def calibration_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """FP32 logits and each rung's logits of ``x`` (shareable between runtimes with the same ladder)."""
        ref = self.smodel.run(x, {g: 32 for g in self.smodel.group_names})
        return ref, [self.smodel.run(x, m) for m in self.ladder]

    @property
    def min_cost(self) -> float:
        return float(self.rung_costs[self.probe_rung] if self.policy.uses_probe_rung else self.rung_costs[0])

    # -- selection -----------------------------------------------------------------------------------------
    def _simulate(
        self, scores: np.ndarray, logits: list[torch.Tensor], knob: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(final rung, cost) per input for ``knob`` without the stream override (calibration)."""
        k = len(self.ladder)
        c = self.rung_costs
        p, h = self.probe_rung, self.escalation_rung
        if isinstance(self.policy, CascadePolicy):
            esc = scores < knob
            rung = np.where(esc, h, p)
            cost = c[p] + np.where(esc, c[h], 0.0)
            return rung, cost
        if isinstance(self.policy, LearnedPolicy):
            rung = self.policy.choose(scores, knob, k, low=p)
            return rung, c[p] + np.where(rung != p, c[rung], 0.0)
        rung = self.policy.choose(scores, knob, k)
        return rung, c[rung]

    def _calibrate_cascade(self, logits: list[torch.Tensor], target: torch.Tensor) -> tuple[int, int, float]:
        """(probe rung, escalation rung, margin threshold) with the best calibration agreement with FP32 whose
        expected cost per input stays within the budget."""
        c = self.rung_costs
        k = len(self.ladder)
        preds = [lg.argmax(1) for lg in logits]
        margins = [_output_features(lg)[:, 1] for lg in logits]
        best = None
        for p in range(k):
            if c[p] > self.budget * (1 + 1e-9):
                break
            ok_p = (preds[p] == target).cpu().numpy()
            # ties (common on a small calibration set) go to the triple that uses more of the budget
            use = 1e-3 * c[p] / self.budget
            if best is None or ok_p.mean() + use > best[0]:
                best = (ok_p.mean() + use, p, p, 0.0)  # no escalation at all
            order = np.argsort(margins[p], kind="stable")
            for h in range(p + 1, k):
                room = (self.budget - c[p]) / c[h]
                n_esc = int(np.floor(min(1.0, room) * len(order) + 1e-9))
                if n_esc <= 0:
                    continue
                ok_h = (preds[h] == target).cpu().numpy()
                # escalating the n least confident inputs; the threshold is the margin of the last one escalated
                gain = np.cumsum(ok_h[order][:n_esc].astype(int) - ok_p[order][:n_esc].astype(int))
                j = int(np.argmax(gain))
                agree = (
                    ok_p.mean()
                    + gain[j] / len(order)
                    + 1e-3 * (c[p] + (j + 1) / len(order) * c[h]) / self.budget
                )
                if agree > best[0] + 1e-12:
                    tau = float(margins[p][order][j]) + 1e-7
                    best = (agree, p, h, tau)
        if best is None:
            raise RuntimeBudgetError(
                f"budget {self.budget:.6g} is below every rung's cost (min {c.min():.6g})"
            )
        return best[1], best[2], best[3]

    def _calibrate_knob(self, x: torch.Tensor, logits: list[torch.Tensor]) -> float:
        k = len(self.ladder)
        probe = logits[self.probe_rung] if self.policy.uses_probe_rung else None
        scores = self.policy.scores(self, x, probe)
        if isinstance(self.policy, StaticPolicy):
            ok = [r for r in range(k) if self.rung_costs[r] <= self.budget * (1 + 1e-9)]
            return float(max(ok))
        if isinstance(self.policy, (LearnedPolicy, CascadePolicy)):
            lo, hi = 0.0, 1.0  # higher threshold -> more expensive
        else:
            lo, hi = -2.0 * k, 2.0 * k
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            _, cost = self._simulate(scores, logits, mid)
            if cost.mean() <= self.budget:
                lo = mid
            else:
                hi = mid
        return lo

    # -- serving ---------------------------------------------------------------------------------------------
    def _validate(self, x: Any) -> tuple[torch.Tensor, dict[int, str]]:
        if not isinstance(x, torch.Tensor):
            raise RuntimeInputError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
        if not torch.is_floating_point(x):
            raise RuntimeInputError(f"inputs must be floating point, got dtype {x.dtype}")
        if x.dim() == len(self.input_shape):
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != self.input_shape:
            raise RuntimeInputError(
                f"inputs of shape {tuple(x.shape)} do not match the model's input shape "
                f"[N, {', '.join(map(str, self.input_shape))}]"
            )
        x = x.float()
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
        errors = {int(i): "input contains NaN or Inf values" for i in torch.nonzero(bad).flatten()}
        return x, errors

    def serve(self, x: Any) -> ServeResult:
        """Run a batch: each valid input gets the rung its policy chose, capped by the resource manager.
        Inputs with NaN / Inf values are rejected (NaN logits, rung -1, a reason in ``errors``); the others are
        served. A batch of the wrong shape or dtype raises :class:`RuntimeInputError`."""
        t0 = time.perf_counter()
        x, errors = self._validate(x)
        n = x.shape[0]
        idx = np.array([i for i in range(n) if i not in errors], dtype=int)
        batch = _Batch(idx, np.full(n, -1), np.zeros(n), [[] for _ in range(n)])
        logits = None
        if len(idx):
            logits = self._serve_valid(x[torch.from_numpy(idx)], batch)
        out_logits = torch.full((n, self.num_classes), math.nan)
        if logits is not None:
            out_logits[torch.from_numpy(idx)] = logits
        total_s = time.perf_counter() - t0
        return ServeResult(
            out_logits, batch.rung, batch.cost, batch.runs, errors, batch.infer, total_s - batch.infer
        )

    def _timed_run(self, x: torch.Tensor, rung: int, batch: _Batch) -> torch.Tensor:
        """Logits of ``x`` on ``rung``, the forward pass's time added to ``batch.infer``."""
        ti = time.perf_counter()
        out = self.smodel.run(x, self.ladder[rung])
        batch.infer += time.perf_counter() - ti
        return out

    def _serve_valid(self, xs: torch.Tensor, batch: _Batch) -> torch.Tensor:
        """Logits of the valid inputs ``xs``: the probe pass (when the policy runs one), the policy's scores, then
        the cascade's escalation or each input's admitted rung."""
        probe_logits = None
        if self.policy.uses_probe_rung:
            probe_logits = self._timed_run(xs, self.probe_rung, batch)
        scores = self.policy.scores(self, xs, probe_logits)
        if isinstance(self.policy, CascadePolicy):
            return self._serve_cascade(xs, scores, probe_logits, batch)
        chosen = self._admit_rungs(scores, batch)
        return self._run_chosen(xs, chosen, probe_logits, batch)

    def _escalations(self, scores: np.ndarray, total: float) -> list[int]:
        """The inputs the cascade escalates, least confident first, while this batch's spending ``total`` stays
        within what keeps the stream's average within the budget; each unsure input left out is an override."""
        m = len(scores)
        c = self.rung_costs
        p, h = self.probe_rung, self.escalation_rung
        # what this batch may spend so that the stream's average stays within the budget
        allowance = self.budget * (self.manager.served + m) - self.manager.spent
        unsure = np.nonzero(scores < self.knob)[0]
        take = []
        for a in unsure[np.argsort(scores[unsure], kind="stable")]:  # least confident first
            if h != p and total + c[h] <= allowance + 1e-9:
                take.append(a)
                total += c[h]
            else:
                self.manager.overrides += 1
        return take

    def _serve_cascade(
        self, xs: torch.Tensor, scores: np.ndarray, probe_logits: torch.Tensor, batch: _Batch
    ) -> torch.Tensor:
        """Every input on the probe rung, the escalated ones run again on the escalation rung; both are paid."""
        idx, m = batch.idx, len(batch.idx)
        c = self.rung_costs
        p, h = self.probe_rung, self.escalation_rung
        logits = probe_logits.clone()
        level = np.full(m, p)
        spent = np.full(m, c[p])
        take = self._escalations(scores, float(spent.sum()))
        for j in range(m):
            batch.runs[idx[j]].append(p)
        if take:
            sel = torch.from_numpy(np.array(take, dtype=int))
            logits[sel] = self._timed_run(xs[sel], h, batch)
            level[take] = h
            spent[take] += c[h]
            for a in take:
                batch.runs[idx[a]].append(h)
        for j in range(m):
            self.manager.charge(float(spent[j]))
        batch.rung[idx], batch.cost[idx] = level, spent
        return logits

    def _admit_rungs(self, scores: np.ndarray, batch: _Batch) -> np.ndarray:
        """The rung each valid input runs: the policy's choice, capped by the resource manager (which is charged
        input by input); a probing policy keeps the probe rung's answer when the manager caps below it."""
        idx, m = batch.idx, len(batch.idx)
        k = len(self.ladder)
        c = self.rung_costs
        p = self.probe_rung
        if isinstance(self.policy, LearnedPolicy):
            wanted = self.policy.choose(scores, self.knob, k, low=p)
        else:
            wanted = self.policy.choose(scores, self.knob, k)
        chosen = np.empty(m, dtype=int)
        probe_cost = c[p] if self.policy.uses_probe_rung else 0.0
        for j in range(m):
            if self.policy.uses_probe_rung:
                r = int(wanted[j])
                if r != p:
                    admitted = self.manager.admit(r, probe_cost)  # counts an override itself
                    r = admitted if admitted > p else p  # else keep the probe rung's answer
                chosen[j] = r
                spent = probe_cost + (c[r] if r != p else 0.0)
            else:
                chosen[j] = self.manager.admit(int(wanted[j]))
                spent = c[chosen[j]]
            self.manager.charge(float(spent))
            batch.cost[idx[j]] = spent
            batch.runs[idx[j]] = ([p] if probe_cost and chosen[j] != p else []) + [int(chosen[j])]
        batch.rung[idx] = chosen
        return chosen

    def _run_chosen(
        self, xs: torch.Tensor, chosen: np.ndarray, probe_logits: torch.Tensor | None, batch: _Batch
    ) -> torch.Tensor:
        """Logits of ``xs``, each input on its ``chosen`` rung (one pass per rung; the probe pass is reused)."""
        m = len(chosen)
        p = self.probe_rung
        logits = None
        for r in np.unique(chosen):
            sel = torch.from_numpy(np.nonzero(chosen == r)[0])
            if probe_logits is not None and r == p:
                out = probe_logits[sel]
            else:
                out = self._timed_run(xs[sel], int(r), batch)
            if logits is None:
                logits = torch.empty(m, out.shape[1])
            logits[sel] = out
        return logits
