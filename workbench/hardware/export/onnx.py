"""ONNX export of a plan: the plan's fake-quant simulation written as an ONNX graph that a plain
``onnxruntime.InferenceSession`` runs, giving the simulated outputs without the workbench.

:func:`export_onnx` copies the simulation (``quantize_model(model, plan, calib)``, or one given), swaps every
fake-quant layer for its export twin (:mod:`.modules`: QuantizeLinear / DequantizeLinear pairs with the
simulation's scales and zero points for integer activations, int8 / uint8 weight codes behind a
DequantizeLinear, weight-only Linear layers as com.microsoft MatMulNBits), and runs ``torch.onnx.export``
(dynamo, opset 21) with the translations of :mod:`.ops`. Everything else (residual adds, attention, LayerNorm,
pooling) is exported as it runs in float. The graph takes the model's input tensors (named as in the example: a
dict's keys, ``input`` for one tensor; the batch dimension dynamic) and returns its primary output (logits).

A layer no ONNX operator computes as simulated is never left out silently: :class:`OnnxExportError` names each
with why (``on_unsupported="error"``, the default), or it runs in float with its simulated weights and a note
(``"float"``). :meth:`OnnxExport.session` opens the file in ONNX Runtime (:class:`OnnxRuntimeModel`: callable on
the model's inputs, returning a torch tensor, so it times and scores like any deployed model).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from workbench.hardware.deploy.convert import _calib_batches
from workbench.hardware.export import modules as em
from workbench.hardware.export import ops
from workbench.hardware.kernels.codes import weight_codes
from workbench.hardware.timing import cpu_has_vnni
from workbench.quant.inputs import call_model, describe_inputs, input_tensors, map_inputs, primary_output
from workbench.quant.spec import PlanError, QuantPlan
from workbench.quant.swap import get_module, quant_modules, quantize_model

ON_UNSUPPORTED: tuple[str, ...] = ("error", "float")


class OnnxExportError(ValueError):
    """A plan (or model) the exporter cannot write as simulated; the message names the layers and why."""


@dataclass(frozen=True)
class OnnxConfig:
    """Knobs of :func:`export_onnx`. ``nbits_linear``: weight-only Linear layers as MatMulNBits (else
    DequantizeLinear + MatMul); ``accuracy_level``: MatMulNBits' (0: float arithmetic on the dequantized
    weights, as simulated; 4: int8 activations inside, faster and not as simulated); ``on_unsupported``: what a
    layer no ONNX operator computes as simulated gets (``error``, or ``float``: its simulated weights, float
    activations, a note); ``unsigned_weights``: uint8 weight codes (offset 128) behind quantized inputs, whose
    fused U8U8 kernels add exactly on every x86 CPU, where int8 codes (U8S8) saturate 16-bit pair sums on CPUs
    without VNNI (None: uint8 on such a CPU, as this one is or not)."""

    opset: int = 21
    nbits_linear: bool = True
    accuracy_level: int = 0
    on_unsupported: str = "error"
    dynamic_batch: bool = True
    unsigned_weights: bool | None = None

    def __post_init__(self) -> None:
        if self.on_unsupported not in ON_UNSUPPORTED:
            raise ValueError(
                f"on_unsupported={self.on_unsupported!r} is not valid; choose one of {ON_UNSUPPORTED}"
            )
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(
                f"accuracy_level={self.accuracy_level!r} is not valid; choose one of 0, 1, 2, 3, 4"
            )
        if self.opset < 21:
            raise ValueError(f"opset={self.opset!r} is not valid: blocked DequantizeLinear needs opset >= 21")


def _weight(name: str, twin: nn.Module, *, unsigned: bool = False) -> tuple[nn.Module, str, str]:
    """The export twin's weight source, its description and a note (float weights only)."""
    codes = weight_codes(twin)
    if not isinstance(codes, str):
        dq = em.DqWeight(codes, twin.weight.shape, unsigned=unsigned)
        return dq, dq.describe(), ""
    spec = twin.spec
    note = ""
    if spec.rank_ratio is not None:
        note = f"{name}: low-rank weights baked into a dense float32 weight (the simulated product)"
    elif twin.w_quant.is_float:
        note = f"{name}: {spec.float16_format}-rounded weights stored in float32"
    elif twin.w_quant.is_integer:
        note = f"{name}: float32 weight as simulated ({codes})"
    return em.FloatWeight(twin.quantized_weight()), "float", note


def layer_problem(twin: nn.Module) -> str | None:
    """Why fake-quant layer ``twin`` has no ONNX form computing as simulated (None: it has one)."""
    base = getattr(twin, "float_type", None)
    if base not in (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding):
        return f"no ONNX export for a {type(twin).__name__}"
    if base is nn.Embedding and twin.max_norm is not None:
        return "Embedding max_norm renormalises looked-up rows; ONNX Gather does not"
    return em.act_problem(twin.a_quant)


def export_twin(name: str, twin: nn.Module, config: OnnxConfig) -> tuple[nn.Module, em.LayerExport, str]:
    """The export twin of ``twin`` (check :func:`layer_problem` first), its row and a note ("" for none)."""
    kind = twin.float_type.__name__
    act, act_desc = em.export_act(twin.a_quant)
    codes = weight_codes(twin)
    quant_input = isinstance(act, em.QdqAct)
    if config.nbits_linear and kind == "Linear" and not quant_input and not isinstance(codes, str):
        packing = em.nbits_packing(codes)
        if not isinstance(packing, str):
            mod = em.NBitsLinear(twin, act, packing, accuracy=config.accuracy_level)
            return mod, em.LayerExport(name, kind, act_desc, mod.describe()), ""
        note = f"{name}: weight-only Linear as DequantizeLinear + MatMul, not MatMulNBits ({packing})"
        weight, w_desc, _ = _weight(name, twin)
        return em.ExportLayer(twin, act, weight), em.LayerExport(name, kind, act_desc, w_desc, note), note
    unsigned = config.unsigned_weights if config.unsigned_weights is not None else not cpu_has_vnni()
    weight, w_desc, note = _weight(name, twin, unsigned=quant_input and unsigned)
    return em.ExportLayer(twin, act, weight), em.LayerExport(name, kind, act_desc, w_desc, note), note


def export_module(
    simulated: nn.Module, config: OnnxConfig
) -> tuple[nn.Module, list[em.LayerExport], list[str]]:
    """A copy of ``simulated`` with every fake-quant layer swapped for its export twin, one row per layer, and
    the notes; :class:`OnnxExportError` naming every layer with a problem (``on_unsupported="error"``)."""
    model = copy.deepcopy(simulated).eval()
    twins = quant_modules(model)
    problems = {n: p for n, t in twins.items() if (p := layer_problem(t)) is not None}
    if problems and config.on_unsupported == "error":
        listed = "; ".join(f"{n}: {p}" for n, p in problems.items())
        raise OnnxExportError(
            f"cannot export {len(problems)} layer(s) as simulated: {listed} (on_unsupported='float' runs them "
            "in float with their simulated weights)"
        )
    rows, notes = [], []
    for name, twin in twins.items():
        if name in problems:
            new = twin.to_float()
            row = em.LayerExport(name, twin.float_type.__name__, "float", "float", problems[name])
            note = f"{name}: float fallback, activations not quantized as simulated ({problems[name]})"
        else:
            new, row, note = export_twin(name, twin, config)
        _set_module(model, name, new)
        rows.append(row)
        notes += [note] if note else []
    return model, rows, notes


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(get_module(model, parent) if parent else model, child, module)


class _FlatInputs(nn.Module):
    """``model`` called on positional tensors rebuilt into the example's structure; returns the primary output."""

    def __init__(self, model: nn.Module, example: Any) -> None:
        super().__init__()
        self.model = model
        self.example = example

    def forward(self, *tensors: Tensor) -> Tensor:
        it = iter(tensors)
        inputs = map_inputs(self.example, lambda _: next(it))
        return primary_output(call_model(self.model, inputs))


def input_names(example: Any) -> list[str]:
    """ONNX input names of ``example``'s tensors: a dict's keys (paths joined by ``_``), ``input`` for one."""
    return [(path.replace(".", "_") or "input") for path, _ in input_tensors(example)]


@dataclass
class OnnxExport:
    """An exported plan: the file, its inputs, one row per fake-quant layer and the notes."""

    path: Path
    input_names: list[str]
    layers: list[em.LayerExport]
    notes: list[str] = field(default_factory=list)
    simulated: nn.Module | None = None

    def table(self) -> pd.DataFrame:
        """One row per layer: kind, how its activations and weights are written, note."""
        return pd.DataFrame(
            [vars(r) for r in self.layers], columns=["layer", "kind", "activations", "weights", "note"]
        )

    def session(self, *, threads: int | None = None, optimization: str = "all") -> OnnxRuntimeModel:
        """The file in an ONNX Runtime CPU session (see :class:`OnnxRuntimeModel`)."""
        return OnnxRuntimeModel(self.path, threads=threads, optimization=optimization)


OPTIMIZATION: tuple[str, ...] = ("all", "extended", "basic", "disable")
"""ONNX Runtime graph optimization levels: ``all`` / ``extended`` fuse QuantizeLinear / DequantizeLinear around
Conv / MatMul into integer kernels (QLinearConv ...: the deployment's speed, integer rounding); ``basic`` keeps
them apart (float kernels on the dequantized values: the simulation's numerics up to float rounding)."""


class OnnxRuntimeModel:
    """An ONNX file in an ``onnxruntime.InferenceSession`` (CPU), called on the model's inputs (a tensor, a tuple or
    a dict as the model takes them, matched to the graph's inputs by name); returns the primary output as a torch
    tensor. ``threads``: intra-op threads (None: ONNX Runtime's default); ``optimization``: see
    :data:`OPTIMIZATION`."""

    def __init__(
        self, path: str | os.PathLike, *, threads: int | None = None, optimization: str = "all"
    ) -> None:
        import onnxruntime as ort

        if optimization not in OPTIMIZATION:
            raise ValueError(f"optimization={optimization!r} is not valid; choose one of {OPTIMIZATION}")
        opts = ort.SessionOptions()
        levels = ort.GraphOptimizationLevel
        opts.graph_optimization_level = {
            "all": levels.ORT_ENABLE_ALL,
            "extended": levels.ORT_ENABLE_EXTENDED,
            "basic": levels.ORT_ENABLE_BASIC,
            "disable": levels.ORT_DISABLE_ALL,
        }[optimization]
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.path, self.threads, self.optimization = Path(path), threads, optimization
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def feeds(self, inputs: Any) -> dict[str, Any]:
        """``inputs`` as the session's feed dict: by name, or in order where the names differ."""
        arrays = [t.detach().cpu().numpy() for _, t in input_tensors(inputs)]
        if len(arrays) != len(self.input_names):
            raise ValueError(f"the ONNX model takes {self.input_names}; got {describe_inputs(inputs)}")
        named = dict(zip(input_names(inputs), arrays, strict=True))
        if set(named) == set(self.input_names):
            return named
        return dict(zip(self.input_names, arrays, strict=True))

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        inputs: Any = kwargs if kwargs else (args[0] if len(args) == 1 else args)
        return torch.from_numpy(self.session.run(None, self.feeds(inputs))[0])


def _first_batch(calib: Any) -> Any:
    if isinstance(calib, (Tensor, Mapping)):
        return calib
    return _calib_batches(calib, 1)[0]


def export_onnx(
    model: nn.Module,
    plan: QuantPlan,
    calib: Any,
    path: str | os.PathLike,
    *,
    simulated: nn.Module | None = None,
    example: Any = None,
    config: OnnxConfig | None = None,
    max_calib_batches: int | None = 8,
) -> OnnxExport:
    """Write ``plan``'s simulation of ``model`` to the ONNX file ``path`` (see the module docstring). ``calib``:
    a tensor, a dict of tensors or a loader of ``(x, y)`` batches (the simulation's calibration, and the example
    input unless ``example`` is given); ``simulated``: the plan's fake-quant model to export instead of
    ``quantize_model(model, plan, calib)`` (with post-training steps, say). Never modifies ``model``."""
    config = config or OnnxConfig()
    if not isinstance(plan, QuantPlan):
        raise PlanError(f"plan must be a QuantPlan, got {type(plan).__name__}")
    if simulated is None:
        batches = _calib_batches(calib, max_calib_batches)
        simulated = quantize_model(model, plan, [(x,) for x in batches], warn_float=False)
    elif getattr(simulated, "quant_plan", None) is None or simulated.quant_plan.to_dict() != plan.to_dict():
        raise PlanError("simulated must be the plan's fake-quant model (quantize_model(model, plan, ...))")
    example = _first_batch(calib) if example is None else example
    module, rows, notes = export_module(simulated, config)
    names = input_names(example)
    _write(_FlatInputs(module, example).eval(), example, Path(path), names, config)
    return OnnxExport(Path(path), names, rows, notes, simulated=simulated)


def _write(flat: nn.Module, example: Any, path: Path, names: list[str], config: OnnxConfig) -> None:
    tensors = tuple(t for _, t in input_tensors(example))
    dims = (
        (tuple({0: torch.export.Dim.AUTO} if t.dim() else {} for t in tensors),)
        if config.dynamic_batch
        else None
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            program = torch.onnx.export(
                flat, tensors, dynamo=True, input_names=names, output_names=["output"],
                opset_version=config.opset, custom_translation_table=ops.TRANSLATIONS, dynamic_shapes=dims,
                verbose=False, optimize=True,
            )  # fmt: skip
    except Exception as e:
        raise OnnxExportError(f"torch.onnx.export failed on {type(flat.model).__name__}: {e}") from e
    program.save(str(path), external_data=False)
