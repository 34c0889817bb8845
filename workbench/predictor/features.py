"""Plan features: :class:`PlanFeaturizer` encodes plans as bit indices and gathers features from per-layer
lookup tables with numpy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.predictor.dataset import PlanDataset
from workbench.predictor.noise import (
    _act_noise_table,
    _example_batch,
    _input_variance,
    _profile_input_var,
    _weight_noise,
)
from workbench.predictor.sensitivity_tables import _sensitivity_tables
from workbench.quant import VALID_BITS, PlanError, QuantPlan, layer_costs, quantizable_layers
from workbench.tasks.task import TaskLike

if TYPE_CHECKING:
    from workbench.sensitivity import SensitivityResult


@dataclass(frozen=True, eq=False)
class PlanFeaturizer:
    """Turns plans into feature rows with numpy gathers from per-layer lookup tables.

    Build it with :meth:`fit`. ``bits`` is the vocabulary of bit widths a plan may use (every valid width, so
    any plan can be scored); ``w_tables`` / ``a_tables`` map a name to ``[n_layers, len(bits)]`` lookup tables
    indexed by weight / activation bits; ``positive`` names the tables that also give log features.
    """

    layer_names: tuple[str, ...]
    bits: tuple[int, ...]
    default_a_bits: int
    w_tables: dict[str, np.ndarray]
    a_tables: dict[str, np.ndarray]
    positive: frozenset[str]
    weight_params: np.ndarray
    macs: np.ndarray
    count_bits: tuple[int, ...]
    granularity: str = "per_channel"
    info: dict[str, Any] = field(default_factory=dict)

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        task_or_model: TaskLike | nn.Module,
        sensitivity: SensitivityResult | None = None,
        *,
        profile: pd.DataFrame | None = None,
        example_input: torch.Tensor | None = None,
        w_bits: Sequence[int] = (2, 3, 4, 6, 8),
        a_bits: Sequence[int] = (8,),
        granularity: str = "per_channel",
    ) -> PlanFeaturizer:
        """Lookup tables for a model: weight noise power of every layer at every bit width, the sensitivity
        metrics the result has (weight rows: omega, output_mse, output_kl, acc_drop, ...; activation rows; the
        Hessian trace and Fisher of ``sensitivity.layers`` times the weight noise), and activation noise
        power from the profile's ``input_var`` (measured on one batch when no profile is given).

        ``w_bits`` / ``a_bits`` are the widths plans usually use (count features; default activation bits is
        ``max(a_bits)`` for weight-only bit arrays). ``example_input``: a batch, needed for a bare model.
        """
        if isinstance(task_or_model, nn.Module):
            model = task_or_model
            if example_input is None:
                raise ValueError("PlanFeaturizer.fit(model) needs example_input=<a batch of inputs>")
            x = example_input
        else:
            model = task_or_model.model
            x = example_input if example_input is not None else _example_batch(task_or_model)
        names = quantizable_layers(model)
        if not names:
            raise PlanError(f"{type(model).__name__} has no quantizable layers (Conv2d / Linear)")
        if granularity not in ("per_tensor", "per_channel"):
            raise ValueError(f"granularity={granularity!r}; choose 'per_tensor' or 'per_channel'")
        bad = [b for b in (*w_bits, *a_bits) if b not in VALID_BITS]
        if bad or not w_bits or not a_bits:
            raise ValueError(f"w_bits / a_bits must be non-empty and use bits from {VALID_BITS}; bad: {bad}")
        vocab = tuple(VALID_BITS)
        costs = layer_costs(model, x)
        w_noise, w_rel = _weight_noise(model, names, vocab, granularity)
        w_tables: dict[str, np.ndarray] = {"w_noise": w_noise, "w_rel_noise": w_rel}
        used: list[str] = []
        a_tables: dict[str, np.ndarray] = {}
        if sensitivity is not None:
            sw, sa, used = _sensitivity_tables(sensitivity, names, vocab, granularity, w_noise)
            w_tables.update(sw)
            a_tables.update(sa)
        input_var = _profile_input_var(profile, names) if profile is not None else None
        if input_var is None:
            input_var = _input_variance(model, names, x)
        a_tables["act_noise"] = _act_noise_table(np.nan_to_num(input_var), vocab)
        positive = frozenset(
            k for k, t in {**w_tables, **a_tables}.items() if np.all(t >= 0) and np.any(t > 0)
        )
        return cls(
            layer_names=tuple(names),
            bits=vocab,
            default_a_bits=int(max(a_bits)),
            w_tables=w_tables,
            a_tables=a_tables,
            positive=positive,
            weight_params=np.array([costs[n].weight_params for n in names], dtype=np.float64),
            macs=np.array([costs[n].macs for n in names], dtype=np.float64),
            count_bits=tuple(sorted(set(w_bits))),
            granularity=granularity,
            info={"sensitivity_metrics": used, "profile": profile is not None},
        )

    # -- encoding ------------------------------------------------------------------------------------------
    def encode(self, plans: Any) -> tuple[np.ndarray, np.ndarray]:
        """(weight bit indices, activation bit indices), each int ``[n_plans, n_layers]`` into ``self.bits``.

        ``plans``: a :class:`PlanDataset`, a QuantPlan (or mapping), a list of them, an int array
        ``[n_plans, n_layers]`` of weight bits (activations at ``default_a_bits``), or
        ``[n_plans, n_layers, 2]`` of (weight, activation) bits. Layers missing from a QuantPlan are float32
        (32 bits); a spec with ``channel_bits`` counts as its mean bits rounded to the nearest valid width.
        """
        if isinstance(plans, PlanDataset):
            if list(plans.layer_names) != list(self.layer_names):
                raise ValueError(
                    f"dataset layers {plans.layer_names} differ from the featurizer's "
                    f"{list(self.layer_names)}"
                )
            w, a = plans.bits()
        elif isinstance(plans, (QuantPlan, Mapping)):
            w, a = self._plans_to_bits([plans])
        elif isinstance(plans, np.ndarray) or (
            isinstance(plans, (list, tuple)) and plans and not isinstance(plans[0], (QuantPlan, Mapping))
        ):
            w, a = self._array_to_bits(np.asarray(plans))
        else:
            w, a = self._plans_to_bits(list(plans))
        lut = np.full(max(VALID_BITS) + 1, -1, dtype=np.int64)
        lut[list(self.bits)] = np.arange(len(self.bits))
        out = []
        for kind, arr in (("weight", w), ("activation", a)):
            if arr.size and (arr.min() < 0 or arr.max() >= len(lut)):
                bad = sorted({int(b) for b in np.unique(arr) if b < 0 or b >= len(lut)})
                raise ValueError(f"{kind} bits {bad} are not valid; valid bits: {list(self.bits)}")
            idx = lut[arr]
            if (idx < 0).any():
                bad = sorted({int(b) for b in np.unique(arr[idx < 0])})
                raise ValueError(f"{kind} bits {bad} are not valid; valid bits: {list(self.bits)}")
            out.append(idx)
        return out[0], out[1]

    def _array_to_bits(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_layers = len(self.layer_names)
        if arr.ndim == 1 and arr.shape[0] == n_layers:
            arr = arr[None, :]
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"bit arrays must be numeric, got dtype {arr.dtype}")
        if arr.ndim == 2 and arr.shape[1] == n_layers:
            w = arr.astype(np.int64)
            return w, np.full_like(w, self.default_a_bits)
        if arr.ndim == 3 and arr.shape[1:] == (n_layers, 2):
            arr = arr.astype(np.int64)
            return arr[..., 0], arr[..., 1]
        raise ValueError(
            f"bit array of shape {arr.shape}: expected [n_plans, {n_layers}] (weight bits) or "
            f"[n_plans, {n_layers}, 2] (weight, activation bits) for layers {list(self.layer_names)}"
        )

    def _plans_to_bits(self, plans: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        pos = {n: i for i, n in enumerate(self.layer_names)}
        w = np.full((len(plans), len(pos)), 32, dtype=np.int64)
        a = np.full((len(plans), len(pos)), 32, dtype=np.int64)
        for k, plan in enumerate(plans):
            if isinstance(plan, Mapping) and not isinstance(plan, QuantPlan):
                plan = QuantPlan.from_dict(plan)
            if not isinstance(plan, QuantPlan):
                raise ValueError(f"plans must be QuantPlans or bit arrays, got {type(plan).__name__}")
            unknown = [n for n in plan.layers if n not in pos]
            if unknown:
                raise PlanError(
                    f"plan names unknown layer(s) {unknown}; valid layers: {list(self.layer_names)}"
                )
            for name, spec in plan.items():
                w[k, pos[name]] = _nearest_bits(spec.mean_weight_bits(), self.bits)
                a[k, pos[name]] = spec.a_bits
        return w, a

    # -- features ------------------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return self._build(
            np.zeros((1, len(self.layer_names)), dtype=np.int64),
            np.zeros((1, len(self.layer_names)), dtype=np.int64),
            names_only=True,
        )[1]

    def transform(self, plans: Any) -> np.ndarray:
        """Feature matrix ``[n_plans, n_features]`` (float64) of ``plans`` (anything :meth:`encode` takes)."""
        w_idx, a_idx = self.encode(plans)
        return self._build(w_idx, a_idx)[0]

    def transform_indices(self, w_idx: np.ndarray, a_idx: np.ndarray) -> np.ndarray:
        """Features from already encoded index arrays (the fastest path)."""
        return self._build(w_idx, a_idx)[0]

    def _build(
        self, w_idx: np.ndarray, a_idx: np.ndarray, *, names_only: bool = False
    ) -> tuple[np.ndarray, list[str]]:
        n_layers = len(self.layer_names)
        rows = np.arange(n_layers)[None, :]
        bits = np.asarray(self.bits, dtype=np.float64)
        wb = bits[w_idx]
        ab = bits[a_idx]
        blocks: list[np.ndarray] = []
        names: list[str] = []

        def per_layer(prefix: str, values: np.ndarray) -> None:
            blocks.append(values)
            names.extend(f"{prefix}:{n}" for n in self.layer_names)

        def scalar(name: str, values: np.ndarray) -> None:
            blocks.append(values[:, None])
            names.append(name)

        per_layer("w_bits", wb)
        per_layer("a_bits", ab)
        for tables, idx in ((self.w_tables, w_idx), (self.a_tables, a_idx)):
            for tname, table in tables.items():
                vals = table[rows, idx]
                total = vals.sum(axis=1)
                if tname in self.positive:
                    eps = _log_floor(table)
                    per_layer(f"log_{tname}", np.log(vals + eps))
                    scalar(f"sum_{tname}", total)
                    scalar(f"log_sum_{tname}", np.log(total + eps))
                    scalar(f"max_log_{tname}", np.log(vals.max(axis=1) + eps))
                else:
                    per_layer(tname, vals)
                    scalar(f"sum_{tname}", total)
        params = self.weight_params
        macs = self.macs
        scalar("avg_weight_bits", wb @ params / max(params.sum(), 1.0))
        scalar("bops_share", (wb * ab) @ macs / max(32.0 * 32.0 * macs.sum(), 1.0))
        scalar("min_w_bits", wb.min(axis=1))
        scalar("min_a_bits", ab.min(axis=1))
        for b in self.count_bits:
            scalar(f"n_w{b}", (wb == b).sum(axis=1).astype(np.float64))
        if names_only:
            return np.empty((0, 0)), names
        return np.concatenate(blocks, axis=1), names


def _log_floor(table: np.ndarray) -> float:
    pos = table[table > 0]
    return float(pos.min()) * 1e-3 if pos.size else 1e-30


def _nearest_bits(value: float, vocab: Sequence[int]) -> int:
    return int(min(vocab, key=lambda b: (abs(b - value), b)))
