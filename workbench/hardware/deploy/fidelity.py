"""Fidelity of a deployment: the deployed model and its fake-quant simulation side by side against FP32, and
against each other, on every batch of a split."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from workbench.devices import model_device
from workbench.quant.inputs import call_model, move_inputs, primary_output, split_batch

SIM_COSINE_MIN = 0.999
"""Simulated-vs-deployed output cosine below which a deployment is flagged as not matching its simulation."""


class SimulationMismatchWarning(UserWarning):
    """The deployed model's outputs differ from its fake-quant simulation's more than :data:`SIM_COSINE_MIN`."""


def _batches(data: Any) -> Any:
    return [data] if isinstance(data, torch.Tensor) else data


def deployment_fidelity(
    fp32: nn.Module, simulated: nn.Module | None, deployed: nn.Module, data: Any, engine: str = "x86"
) -> dict[str, Any]:
    """Fidelity over every batch of ``data`` (a tensor or a loader of ``(inputs, targets)`` batches): mean
    per-sample cosine of the primary outputs and top-1 agreement with ``fp32`` of ``deployed``
    (``cosine_to_fp32``, ``top1_agreement``) and of ``simulated`` (``sim_*``; NaN without one), and between the
    two (``sim_vs_deployed_*``); ``fidelity_samples`` inputs in all. Runs under the quantized ``engine``."""
    sums = dict.fromkeys(("dc", "da", "sc", "sa", "xc", "xa"), 0.0)
    n = 0
    device = model_device(fp32)
    previous_engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with torch.inference_mode():
            for batch in _batches(data):
                x = move_inputs(split_batch(batch)[0], device)
                ref = primary_output(call_model(fp32, x)).float().flatten(1)
                dep = primary_output(call_model(deployed, x)).float().flatten(1)
                sim = (
                    ref if simulated is None else primary_output(call_model(simulated, x)).float().flatten(1)
                )
                for key, (a, b) in {"d": (dep, ref), "s": (sim, ref), "x": (sim, dep)}.items():
                    sums[key + "c"] += float(torch.nn.functional.cosine_similarity(a, b, dim=1).sum())
                    sums[key + "a"] += int((a.argmax(1) == b.argmax(1)).sum())
                n += ref.shape[0]
    finally:
        torch.backends.quantized.engine = previous_engine
    if n == 0:
        raise ValueError("fidelity data is empty: pass a tensor or a loader with at least one batch")
    mean = {k: v / n for k, v in sums.items()}
    if simulated is None:
        mean.update(dict.fromkeys(("sc", "sa", "xc", "xa"), math.nan))
    return {
        "cosine_to_fp32": mean["dc"],
        "top1_agreement": mean["da"],
        "sim_cosine_to_fp32": mean["sc"],
        "sim_top1_agreement": mean["sa"],
        "sim_vs_deployed_cosine": mean["xc"],
        "sim_vs_deployed_top1": mean["xa"],
        "fidelity_samples": n,
    }


def fidelity_notes(fid: dict[str, Any], *, one_batch: bool = False) -> list[str]:
    """Notes (and a warning) on what the fidelity figures mean: a deployment that differs from its simulation,
    figures from the timed batch only."""
    notes = []
    if one_batch:
        notes.append(
            f"fidelity measured on the timed batch only ({fid['fidelity_samples']} inputs): pass data= (the "
            "split evaluate scores) for figures on the whole split"
        )
    if fid["sim_vs_deployed_cosine"] < SIM_COSINE_MIN:
        msg = (
            f"the deployed model differs from its simulation: output cosine {fid['sim_vs_deployed_cosine']:.4f} "
            f"< {SIM_COSINE_MIN} (top-1 agreement {fid['sim_vs_deployed_top1']:.4f}); simulated cosine to FP32 "
            f"{fid['sim_cosine_to_fp32']:.4f}, deployed {fid['cosine_to_fp32']:.4f}"
        )
        notes.append(msg)
        warnings.warn(msg, SimulationMismatchWarning, stacklevel=3)
    return notes
