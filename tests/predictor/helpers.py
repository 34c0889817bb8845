"""Helpers of the predictor tests: a hand-made sensitivity, a synthetic dataset, frame comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench.predictor import PlanDataset, PlanDatasetConfig, PlanFeaturizer
from workbench.quant import QuantPlan, QuantSpec, quantizable_layers, quantize_model, quantize_weight
from workbench.sensitivity import TABLE_COLUMNS, SensitivityResult
from workbench.tasks import Task

BITS = (2, 3, 4, 6, 8)
SMALL = PlanDatasetConfig(n_random=20, n_stratified=16, seed=0)


@torch.no_grad()
def fake_sensitivity(task: Task, *, metrics: tuple[str, ...] = ("output_mse", "omega")) -> SensitivityResult:
    """output_mse: MSE of the model output on the calibration data with one layer's weights quantized;
    omega: Hessian trace taken as 1.0 times the weight noise power ||W - Q(W)||^2."""
    x = torch.cat([b[0] for b in task.calib_loader])
    ref = task.model.eval()(x)
    names = quantizable_layers(task.model)
    rows = []
    for depth, name in enumerate(names):
        w = task.model.get_submodule(name).weight.detach()
        for b in BITS:
            spec = QuantSpec(w_bits=b, a_bits=32, granularity="per_channel")
            values = {}
            if "output_mse" in metrics:
                q = quantize_model(task.model, QuantPlan({name: spec}))
                values["output_mse"] = float((q(x) - ref).pow(2).mean())
            if "omega" in metrics:
                values["omega"] = float((quantize_weight(w, spec) - w).pow(2).sum())
            for metric, value in values.items():
                rows.append(
                    {
                        "layer": name,
                        "op_type": "x",
                        "depth": depth,
                        "metric": metric,
                        "kind": "weight",
                        "granularity": "per_channel",
                        "w_bits": b,
                        "a_bits": 32,
                        "value": value,
                    }  # fmt: skip
                )
    layers = pd.DataFrame({"layer": names, "depth": range(len(names)), "hessian_trace": 1.0})
    return SensitivityResult(table=pd.DataFrame(rows, columns=TABLE_COLUMNS), layers=layers)


def synthetic_dataset(featurizer: PlanFeaturizer, n: int, *, seed: int = 0) -> PlanDataset:
    """Random plans whose acc_drop is additive in per-layer log weight noise (plus a little noise)."""
    rng = np.random.default_rng(seed)
    names = list(featurizer.layer_names)
    w = np.asarray(BITS)[rng.integers(0, len(BITS), size=(n, len(names)))]
    w_idx, _ = featurizer.encode(w)
    log_noise = np.log(featurizer.w_tables["w_rel_noise"][np.arange(len(names))[None, :], w_idx])
    coef = np.linspace(0.5, 2.0, len(names))
    y = log_noise @ coef
    y = y - y.min() + rng.normal(0, 0.05, size=n)
    frame = pd.DataFrame({"plan_id": [f"p{i}" for i in range(n)], "source": "synthetic"})
    for i, name in enumerate(names):
        frame[f"w:{name}"] = w[:, i]
    for name in names:
        frame[f"a:{name}"] = 8
    frame["accuracy"] = 1 - y / 100
    frame["acc_drop"] = y
    frame["kl"] = frame["logit_mse"] = np.abs(y)
    plans = [
        QuantPlan({nm: QuantSpec(w_bits=int(b), a_bits=8) for nm, b in zip(names, row, strict=True)})
        for row in w
    ]
    return PlanDataset(frame=frame, plans=plans, layer_names=names)


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    cols = [c for c in a.columns if c != "eval_seconds"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))
