"""A plan on ONNX Runtime beside the same plan on torch.ao and the FP32 model: latency (interleaved, medians) and
fidelity to the plan's simulation, in one run."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from workbench.hardware.deploy.convert import _calib_batches, deploy
from workbench.hardware.deploy.fidelity import deployment_fidelity
from workbench.hardware.export.onnx import OPTIMIZATION, OnnxConfig, OnnxExport, export_onnx
from workbench.hardware.timing import cpu_name, time_side_by_side
from workbench.quant.inputs import batch_size
from workbench.quant.spec import QuantPlan
from workbench.quant.swap import quantize_model


@dataclass(frozen=True)
class OnnxCompareConfig:
    """Knobs of :func:`compare_onnx`: timing (``threads`` for torch and ONNX Runtime alike), whether the torch.ao
    deployment runs beside (``torch_ao``), whether the FP32 model runs on ONNX Runtime too (``onnx_fp32``: what
    ONNX Runtime's own kernels give without the plan), ONNX Runtime's graph ``optimizations`` (one row each) and the export."""

    threads: int | None = None
    repeats: int = 7
    warmup: int = 2
    torch_ao: bool = True
    onnx_fp32: bool = True
    optimizations: tuple[str, ...] = ("all",)
    onnx: OnnxConfig = field(default_factory=OnnxConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"repeats must be an integer >= 1, got {self.repeats!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be None or an integer >= 1, got {self.threads!r}")
        bad = [o for o in self.optimizations if o not in OPTIMIZATION]
        if bad or not self.optimizations:
            raise ValueError(f"optimizations={self.optimizations!r} is not valid; choose from {OPTIMIZATION}")


def _torch_ao(model: nn.Module, plan: QuantPlan, batches: list[Any], sim: nn.Module) -> tuple[Any, str]:
    """The plan deployed through :func:`~workbench.hardware.deploy.deploy` (torch.ao / kernel menu), or None and
    why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dep = deploy(model, plan, batches, simulated=sim)
    except Exception as e:  # a plan torch.ao cannot deploy is a row with a reason, not a failed comparison
        return None, f"torch.ao deploy: {type(e).__name__}: {e}"
    return dep, ""


def compare_onnx(
    model: nn.Module,
    plan: QuantPlan,
    calib: Any,
    example: Any,
    path: str | os.PathLike,
    *,
    data: Any = None,
    simulated: nn.Module | None = None,
    config: OnnxCompareConfig | None = None,
) -> tuple[pd.DataFrame, OnnxExport]:
    """``plan`` exported to ONNX (``path``) and run on ONNX Runtime, beside the FP32 ``model`` and, when it can be
    deployed, the torch.ao deployment of the same plan and simulation: one row per variant with the median
    latency of one batch ``example`` (interleaved), the speedup over FP32, and the mean per-sample cosine / top-1
    agreement of the primary output with the simulation and with FP32 over ``data`` (a tensor or a loader;
    None: ``example``). Returns the table (``attrs``: threads, batch size, CPU, notes) and the export."""
    config = config or OnnxCompareConfig()
    batches = _calib_batches(calib, 8)
    sim = simulated if simulated is not None else quantize_model(model, plan, [(x,) for x in batches])
    export = export_onnx(model, plan, batches, path, simulated=sim, example=example, config=config.onnx)
    variants: dict[str, Callable[..., Any]] = {"fp32": model.eval()}
    notes = list(export.notes)
    if config.torch_ao:
        dep, why = _torch_ao(model, plan, batches, sim)
        if dep is not None:
            variants["torch_ao"] = dep
        notes += [why] if why else []
    if config.onnx_fp32:
        fp32_path = Path(path).with_name(Path(path).stem + "_fp32.onnx")
        fp32 = export_onnx(model, QuantPlan({}), batches, fp32_path, example=example, config=config.onnx)
        variants["onnx_fp32"] = fp32.session(threads=config.threads)
    for opt in config.optimizations:
        variants[f"onnx_{opt}" if len(config.optimizations) > 1 else "onnx"] = export.session(
            threads=config.threads, optimization=opt
        )
    stats = time_side_by_side(
        variants, example, repeats=config.repeats, warmup=config.warmup, threads=config.threads
    )
    data = example if data is None else data
    data = [data] if isinstance(data, Mapping) else data  # one batch of a token model
    rows = []
    for name, fn in variants.items():
        fid = deployment_fidelity(model, sim, fn, data)
        rows.append(
            {
                "variant": name,
                "median_ms": stats[name].median_ms,
                "speedup_vs_fp32": stats["fp32"].median_ms / stats[name].median_ms,
                "cosine_to_sim": fid["sim_vs_deployed_cosine"],
                "top1_to_sim": fid["sim_vs_deployed_top1"],
                "cosine_to_fp32": fid["cosine_to_fp32"],
                "samples": fid["fidelity_samples"],
            }
        )
    df = pd.DataFrame(rows)
    size_mb = os.path.getsize(path) / 2**20
    df.attrs.update(
        threads=config.threads, batch_size=batch_size(example), cpu=cpu_name(), notes=notes,
        onnx_path=str(path), onnx_size_mb=size_mb, sim_cosine_to_fp32=fid["sim_cosine_to_fp32"],
    )  # fmt: skip
    if math.isnan(df["cosine_to_sim"].iloc[-1]):
        notes.append("no fidelity: the data gave no comparable outputs")
    return df, export
