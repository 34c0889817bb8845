"""load_packed: rebuild the quantized model from a packed file and the float model."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workbench.quant.modules import ActQuantizer
from workbench.quant.pack.codes import _DTYPES, _bytes_tensor, unpack_rows
from workbench.quant.pack.fileformat import _check_payload, check_header_signature, read_header
from workbench.quant.pack.write import _grid_rows
from workbench.quant.spec import PlanError, QuantPlan
from workbench.quant.swap import fold_batchnorm, quant_modules, swap_modules


def _check_fits(path: Path, header: dict, model: nn.Module, qmodel: nn.Module) -> None:
    """Every stored tensor has a place of the same shape in the rebuilt model, and every place is filled."""
    expected = {k: list(v.shape) for k, v in qmodel.state_dict().items()}
    stored: dict[str, list[int]] = {}
    for e in header["entries"]:
        if "rows_of" in e:  # qparams of kept channels only: their full shape is recorded aside
            stored[e["key"]] = list(e["full_shape"])
        else:
            stored[e["key"]] = list(e["shape"])
    modules = quant_modules(qmodel)
    for key in list(stored):  # unused activation fills of weight-only layers (files written before they went)
        layer, _, attr = key.rpartition(".a_quant.")
        if (
            attr
            and key not in expected
            and layer in modules
            and not isinstance(modules[layer].a_quant, ActQuantizer)
        ):
            del stored[key]
    # quantizer state (scales, zero points, ranges) takes its shape at calibration: only the layers' own tensors
    # (weights, biases, low-rank factors, masks, BatchNorm statistics) have their final shapes here
    quantizers = tuple(f"{name}.{q}." for name in modules for q in ("w_quant", "w_quant_b", "a_quant"))
    wrong = [
        f"{k}: {stored[k]} in the file, {expected[k]} in the model"
        for k in stored
        if k in expected and not k.startswith(quantizers) and stored[k] != expected[k]
    ]
    missing = [k for k in expected if k not in stored]
    extra = [k for k in stored if k not in expected]
    if not (wrong or missing or extra):
        return
    packed_from = header.get("model_class")
    details = []
    if packed_from is not None and packed_from != type(model).__qualname__:
        details.append(f"packed from a {packed_from}, this model is a {type(model).__qualname__}")
    if wrong:
        details.append(
            f"{len(wrong)} shape(s) differ ({'; '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''})"
        )
    if missing:
        details.append(f"missing from the file: {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    if extra:
        details.append(f"not in the model: {extra[:6]}{' ...' if len(extra) > 6 else ''}")
    raise PlanError(f"packed model {path} does not fit this model: {'; '.join(details)}")


def load_packed(path: str | Path, model: nn.Module, *, trust_old_files: bool | None = None) -> nn.Module:
    """Rebuild the quantized model saved by :func:`save_packed` on top of (a copy of) its float ``model``.

    Raises :class:`PlanError` naming the file when it is truncated, damaged or edited (length and sha256 of the
    payload, then the header's signature under this installation's key: an edit with a recomputed hash is
    refused too), or was packed from another model (its layers, or the shapes of its tensors, differ). Files
    from before signatures are refused unless ``trust_old_files`` (or ``WORKBENCH_TRUST_OLD_FILES=1``)."""
    path = Path(path)
    header, offset = read_header(path)
    data = path.read_bytes()[offset:]
    _check_payload(path, header, data)
    check_header_signature(path, header, trust_old_files=trust_old_files)
    packed_from = header.get("model_class")
    other = (
        f" (packed from a {packed_from}, this model is a {type(model).__qualname__})"
        if packed_from is not None and packed_from != type(model).__qualname__
        else ""
    )
    try:
        plan = QuantPlan.from_dict(header["plan"])
    except (
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        RecursionError,
    ) as e:  # PlanError is a ValueError
        raise PlanError(f"packed model {path} has a damaged plan in its header: {e}") from None
    try:
        plan.validate(model)
    except PlanError as e:
        raise PlanError(f"packed model {path} does not fit this model{other}: {e}") from None
    qmodel = copy.deepcopy(model).eval()
    try:
        pairs = [tuple(p) for p in header["folded_bn"]]
        fold_batchnorm(qmodel, pairs)
        swap_modules(qmodel, plan)
    except (KeyError, TypeError, ValueError, AttributeError, PlanError) as e:
        raise PlanError(f"packed model {path} does not fit this model{other}: {e}") from None
    try:
        _check_fits(path, header, model, qmodel)
        return _rebuild(path, header, data, qmodel, plan, pairs)
    except PlanError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:  # a file without a recorded hash
        raise PlanError(f"packed model {path} is damaged ({type(e).__name__}: {e})") from None


def _rebuild(
    path: Path, header: dict, data: bytes, qmodel: nn.Module, plan: QuantPlan, pairs: list
) -> nn.Module:
    state: dict[str, torch.Tensor] = {}
    weights: dict[str, tuple[dict, bytes]] = {}
    partial: dict[str, dict] = {}  # qparams of kept channels only, completed once the channel mask is read
    derived: list[dict] = []
    pos = 0
    for e in header["entries"]:
        blob = data[pos : pos + e["nbytes"]]
        pos += e["nbytes"]
        if e["kind"] == "raw":
            t = _bytes_tensor(blob, e["dtype"], e["shape"])
            state[e["key"]] = t.to(_DTYPES[e["as"]]) if "as" in e else t
            if "rows_of" in e:
                partial[e["key"]] = e
        elif e["kind"] == "zeros":
            state[e["key"]] = torch.zeros(e["shape"])
        elif e["kind"] == "fill":
            state[e["key"]] = torch.full(e["shape"], float(e["value"]))
        elif e["kind"] in ("packed", "float"):
            weights[e["key"]] = (e, blob)
        else:  # "mask", "lowrank": rebuilt from the weights
            derived.append(e)
    modules = quant_modules(qmodel)
    masks: dict[str, torch.Tensor] = {}
    for key, (e, blob) in weights.items():
        layer, _, attr = key.rpartition(".")
        mask = None
        if "mask" in e:
            mask = _read_mask(e, blob[: e["mask_bytes"]])
            masks[key] = mask
            blob = blob[e["mask_bytes"] :]
            if e["mask"] == "channel":
                kept = torch.nonzero(mask.reshape(mask.shape[0], -1).any(dim=1)).reshape(-1)
                for pkey, pe in partial.items():
                    if pe["rows_of"] == key:  # removed channels get scale 1, zero point 0 (never used)
                        full = torch.full(pe["full_shape"], 1.0 if pkey.endswith(".scale") else 0.0)
                        full[_grid_rows(modules[layer].spec, full.shape[0], mask.shape[0], kept)] = state[
                            pkey
                        ]
                        state[pkey] = full
        wq_name = "w_quant_b" if attr == "lowrank_b" else "w_quant"
        if e["kind"] == "float":
            state[key] = _float_values(e, blob, mask)
        else:
            state[key] = _dequantize_weight(e, blob, modules[layer], wq_name, state, mask)
    for e in derived:
        if e["kind"] == "mask":
            state[e["key"]] = masks[e["of"]]
        else:
            layer = e["key"].rpartition(".")[0]
            a, b = state[f"{layer}.lowrank_a"], state[f"{layer}.lowrank_b"]
            state[e["key"]] = (a.float() @ b.float()).reshape(e["shape"])
    expected = qmodel.state_dict().keys()
    for key in [k for k in state if k not in expected]:  # files written before weight-only layers lost their
        layer, _, attr = key.rpartition(".a_quant.")  # disabled activation quantizer: its unused fills
        if attr and layer in modules and not isinstance(modules[layer].a_quant, ActQuantizer):
            del state[key]
    try:
        qmodel.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PlanError(f"{path} does not fit this model: {err}") from err
    qmodel.quant_plan = plan
    qmodel.folded_bn = pairs
    return qmodel


def _read_mask(e: dict, blob: bytes) -> torch.Tensor:
    """The boolean keep-mask (weight shape) of a pruned weight entry."""
    shape = torch.Size(e["shape"])
    n = shape[0] if e["mask"] == "channel" else math.prod(shape)
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8))[:n].astype(bool)
    mask = torch.from_numpy(bits.copy())
    if e["mask"] == "channel":
        return mask.reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
    return mask.reshape(shape)


def _scatter(
    values: torch.Tensor, shape: torch.Size, mask: torch.Tensor | None, fill: float = 0.0
) -> torch.Tensor:
    """Kept values (flat for unstructured masks, kept rows for channel masks) back into a dense ``[out, fan_in]``."""
    out = shape[0]
    if mask is None:
        return values.reshape(out, -1)
    full = torch.full((out, math.prod(shape[1:])), fill, dtype=values.dtype)
    flat_mask = mask.reshape(out, -1)
    if values.dim() == 2:  # kept rows
        full[flat_mask.any(dim=1)] = values
    else:
        full[flat_mask] = values
    return full


def _float_values(e: dict, blob: bytes, mask: torch.Tensor | None) -> torch.Tensor:
    shape = torch.Size(e["shape"])
    flat = _bytes_tensor(blob, e["dtype"], [-1]).float()
    if mask is not None and e["mask"] == "channel":
        flat = flat.reshape(-1, math.prod(shape[1:]))
    return _scatter(flat, shape, mask).reshape(shape)


def _dequantize_weight(
    e: dict,
    blob: bytes,
    mod: nn.Module,
    wq_name: str,
    state: dict[str, torch.Tensor],
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float tensor ``(q - zero_point) * scale`` from packed codes, on the quantizer's scale grid (zero where
    a pruning ``mask`` removed weights)."""
    from workbench.quant.quantizers import dequantize, from_grid, to_grid

    layer_prefix = e["key"].rpartition(".")[0]
    wq = getattr(mod, wq_name)
    row_bits = e["row_bits"]
    shape = torch.Size(e["shape"])
    cols = e["cols"]
    if mask is None:
        unsigned = torch.from_numpy(unpack_rows(blob, row_bits, cols)).float()
    elif e["mask"] == "channel":
        kept = mask.reshape(shape[0], -1).any(dim=1)
        kept_bits = [b for b, k in zip(row_bits, kept.tolist(), strict=True) if k]
        unsigned = _scatter(torch.from_numpy(unpack_rows(blob, kept_bits, cols)).float(), shape, mask)
    else:
        n_kept = int(mask.sum())
        values = torch.from_numpy(unpack_rows(blob, [row_bits[0]], n_kept).reshape(-1)).float()
        unsigned = _scatter(values, shape, mask)
    spec = mod.spec
    qmin = wq.qmin.cpu()  # the file's values are read on the CPU; load_state_dict moves them to the model
    if spec.granularity == "per_tensor":
        qmin_rows = qmin.reshape(-1).expand(shape[0])
    else:
        qmin_rows = qmin.reshape(shape[0], -1)[:, 0]
    codes = (unsigned + qmin_rows.reshape(-1, 1)).reshape(shape)
    grid = to_grid(codes, spec.granularity, spec.group_size)
    scale = state[f"{layer_prefix}.{wq_name}.scale"]
    zp = state[f"{layer_prefix}.{wq_name}.zero_point"]
    weight = from_grid(dequantize(grid, scale, zp), shape, spec.granularity)
    return weight * mask if mask is not None else weight
