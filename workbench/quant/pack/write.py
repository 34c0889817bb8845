"""save_packed: a quantized model to packed low-bit storage."""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench._common.io import atomic_write_bytes
from workbench.quant.modules import ActQuantizer
from workbench.quant.pack.codes import _DTYPES, _dtype_name, _Entry, _tensor_bytes, pack_rows
from workbench.quant.pack.fileformat import MAGIC, _sha256, sign_header
from workbench.quant.spec import PlanError, QuantPlan
from workbench.quant.swap import quant_modules


@dataclass(frozen=True)
class PackReport:
    """Sizes of a packed file. ``theoretical_bytes`` counts every stored value at its exact bit width."""

    path: str
    file_bytes: int
    header_bytes: int
    payload_bytes: int
    theoretical_bytes: int
    packed_weight_bytes: int
    fp32_bytes: int

    @property
    def overhead(self) -> float:
        """file / theoretical - 1 (0.05 means the file is 5% above the exact bit count)."""
        return self.file_bytes / self.theoretical_bytes - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "overhead": self.overhead}


# -- bit packing ----------------------------------------------------------------------------------------------
def _grid_rows(spec, n_grid_rows: int, out_ch: int, kept: torch.Tensor) -> torch.Tensor:
    """Indices of the scale-grid rows that belong to the kept output channels."""
    if spec.granularity == "per_tensor":
        return torch.arange(n_grid_rows)
    groups = n_grid_rows // out_ch
    return (kept.reshape(-1, 1) * groups + torch.arange(groups).reshape(1, -1)).reshape(-1)


def _mask_bitmap(mask: torch.Tensor, structure: str) -> tuple[np.ndarray, torch.Tensor | None]:
    """(bits stored for the mask, kept output channels for channel pruning; on the CPU, whatever the mask's
    device)."""
    if structure == "channel":
        rows = mask.reshape(mask.shape[0], -1).any(dim=1).cpu()
        return rows.numpy(), torch.nonzero(rows).reshape(-1)
    return mask.reshape(-1).cpu().numpy(), None


def _qparam_entries(
    key: str, wq, spec, qprefix: str, out_ch: int, kept_rows: torch.Tensor | None
) -> dict[str, _Entry]:
    """Entries of a weight quantizer's scales (float32) and zero points (uint8, or none when symmetric)."""
    entries: dict[str, _Entry] = {}
    skey, zkey = f"{qprefix}.scale", f"{qprefix}.zero_point"
    scale = wq.scale.detach().float()
    zp = wq.zero_point.detach()
    rows_meta: dict[str, Any] = {}
    if (
        kept_rows is not None and spec.granularity != "per_tensor"
    ):  # qparams of removed channels are not stored
        idx = _grid_rows(spec, scale.shape[0], out_ch, kept_rows).to(scale.device)
        scale, zp = scale[idx], zp[idx]
        rows_meta = {"rows_of": key, "full_shape": list(wq.scale.shape)}
    entries[skey] = (
        {"kind": "raw", "dtype": "float32", "shape": list(scale.shape), **rows_meta},
        _tensor_bytes(scale),
        32 * scale.numel(),
    )
    if spec.w_symmetric:
        entries[zkey] = ({"kind": "zeros", "shape": list(wq.zero_point.shape)}, b"", 0)
    else:
        entries[zkey] = (
            {"kind": "raw", "dtype": "uint8", "shape": list(zp.shape), "as": "float32", **rows_meta},
            _tensor_bytes(zp.to(torch.uint8)),
            8 * zp.numel(),
        )
    return entries


def _tensor_entries(
    key: str, tensor: torch.Tensor, wq, spec, qprefix: str, mask: torch.Tensor | None = None
) -> tuple[dict[str, _Entry], set[str]]:
    """Entries for one quantized tensor (a weight or a low-rank factor) and its quantizer's scales / zero points.

    ``mask`` (boolean, the tensor's shape) marks kept weights of a pruned layer. A float32 tensor without a mask is
    left to the generic raw entries (its key is not returned as covered).
    """
    entries: dict[str, _Entry] = {}
    skey, zkey = f"{qprefix}.scale", f"{qprefix}.zero_point"
    structure = spec.sparsity_structure
    tensor = tensor.detach()
    shape = list(tensor.shape)
    prefix_meta: dict[str, Any] = {}
    mask_blob, mask_bits, kept_rows = b"", 0, None
    if mask is not None:
        bitmap, kept_rows = _mask_bitmap(mask, structure)
        mask_blob, mask_bits = np.packbits(bitmap).tobytes(), int(bitmap.size)
        prefix_meta = {"mask": structure, "mask_bytes": len(mask_blob)}
        tensor = tensor * mask
    if not wq.is_integer:  # float weights: the (unused) scale grid is not stored
        entries[skey] = ({"kind": "fill", "value": 1.0, "shape": list(wq.scale.shape)}, b"", 0)
        entries[zkey] = ({"kind": "fill", "value": 0.0, "shape": list(wq.zero_point.shape)}, b"", 0)
        if not wq.is_float and mask is None:
            return entries, {skey, zkey}
        fmt = spec.float16_format if wq.is_float else "float32"
        if mask is None:
            values = tensor
        elif kept_rows is not None:
            values = tensor[kept_rows.to(tensor.device)]
        else:
            values = tensor[mask]
        cast = values.to(_DTYPES[fmt])
        bits = (16 if wq.is_float else 32) * cast.numel()
        meta = {"kind": "float", "dtype": fmt, "shape": shape, **prefix_meta}
        entries[key] = (meta, mask_blob + _tensor_bytes(cast), mask_bits + bits)
        return entries, {key, skey, zkey}
    codes = wq.int_codes(tensor)  # [out, fan_in]
    out_ch, cols = int(codes.shape[0]), int(codes.shape[1])
    groups = wq.scale.shape[0] // out_ch if spec.granularity != "per_tensor" else 1
    if spec.granularity == "per_tensor":
        qmin_rows = wq.qmin.reshape(-1).expand(out_ch)
        bits_rows = wq.bits.reshape(-1).expand(out_ch)
    else:
        qmin_rows = wq.qmin.reshape(out_ch, groups)[:, 0]
        bits_rows = wq.bits.reshape(out_ch, groups)[:, 0]
    unsigned = (codes - qmin_rows.to(torch.int64).reshape(-1, 1)).cpu().numpy()
    row_bits = [int(b) for b in bits_rows.tolist()]
    meta = {"kind": "packed", "shape": shape, "row_bits": row_bits, "cols": cols, **prefix_meta}
    if mask is None:
        blob, bits = pack_rows(unsigned, row_bits), sum(row_bits) * cols
    elif kept_rows is not None:
        kept_bits = [row_bits[int(r)] for r in kept_rows]
        blob, bits = pack_rows(unsigned[kept_rows.numpy()], kept_bits), sum(kept_bits) * cols
    else:  # pruned layers have one bit width (channel_bits is refused with sparsity)
        values = unsigned.reshape(-1)[mask.reshape(-1).cpu().numpy()]
        blob, bits = pack_rows(values.reshape(1, -1), [row_bits[0]]), row_bits[0] * values.size
    entries[key] = (meta, mask_blob + blob, mask_bits + bits)
    entries.update(_qparam_entries(key, wq, spec, qprefix, out_ch, kept_rows))
    return entries, {key, skey, zkey}


def _weight_entries(name: str, mod: nn.Module) -> tuple[dict[str, _Entry], set[str]]:
    """Entries for one fake-quant layer's weight (or low-rank factors, or pruned weight and mask) and qparams."""
    spec = mod.spec
    wkey = f"{name}.weight"
    if spec.rank_ratio is not None:
        entries, covered = _tensor_entries(
            f"{name}.lowrank_a", mod.lowrank_a, mod.w_quant, spec, f"{name}.w_quant"
        )
        e_b, c_b = _tensor_entries(
            f"{name}.lowrank_b", mod.lowrank_b, mod.w_quant_b, spec, f"{name}.w_quant_b"
        )
        entries.update(e_b)
        covered |= c_b
        entries[wkey] = ({"kind": "lowrank", "shape": list(mod.weight.shape)}, b"", 0)
        return entries, covered | {wkey}
    if spec.sparsity > 0:
        entries, covered = _tensor_entries(
            wkey, mod.weight, mod.w_quant, spec, f"{name}.w_quant", mod.weight_mask
        )
        mkey = f"{name}.weight_mask"
        entries[mkey] = ({"kind": "mask", "of": wkey, "shape": list(mod.weight_mask.shape)}, b"", 0)
        return entries, covered | {mkey}
    return _tensor_entries(wkey, mod.weight, mod.w_quant, spec, f"{name}.w_quant")


def save_packed(qmodel: nn.Module, path: str | Path, *, overwrite: bool = False) -> PackReport:
    """Write a model returned by :func:`quantize_model` with its integer weights packed to their bit widths."""
    plan = getattr(qmodel, "quant_plan", None)
    if not isinstance(plan, QuantPlan):
        raise PlanError("save_packed needs a model returned by quantize_model (it carries .quant_plan)")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    entries: dict[str, tuple[dict, bytes, int]] = {}
    covered: set[str] = set()
    for name, mod in quant_modules(qmodel).items():
        e, keys = _weight_entries(name, mod)
        entries.update(e)
        covered |= keys
        if not isinstance(mod.a_quant, ActQuantizer):  # weight-only layer: no activation state at all
            continue
        if not mod.a_quant.needs_calibration:  # dynamic, float or disabled: the static range is unused
            for key, value in (("scale", 1.0), ("zero_point", 0.0)):
                shape = list(getattr(mod.a_quant, key).shape)
                entries[f"{name}.a_quant.{key}"] = ({"kind": "fill", "value": value, "shape": shape}, b"", 0)
                covered.add(f"{name}.a_quant.{key}")
    for key, t in qmodel.state_dict().items():
        if key in covered:
            continue
        meta = {"kind": "raw", "dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
        entries[key] = (meta, _tensor_bytes(t), t.element_size() * 8 * t.numel())
    header_entries, payload, theory_bits, packed_bits = [], [], 0, 0
    for key, (meta, blob, bits) in entries.items():
        header_entries.append({"key": key, "nbytes": len(blob), **meta})
        payload.append(blob)
        theory_bits += bits
        if meta["kind"] == "packed":
            packed_bits += bits
    header = {
        "version": 1,  # the extra keys below are optional for readers: files without them still load
        "plan": plan.to_dict(),
        "folded_bn": [list(p) for p in getattr(qmodel, "folded_bn", [])],
        "entries": header_entries,
        "model_class": type(qmodel).__qualname__,
        "payload_bytes": sum(len(b) for b in payload),
        "payload_sha256": _sha256(payload),
    }
    header = sign_header(header)
    header_bytes = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    frame = MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes
    atomic_write_bytes(path, frame + b"".join(payload), mode=0o644)  # an existing file is never half-written
    fp32 = sum(4 * p.numel() for p in qmodel.parameters())
    return PackReport(
        path=str(path),
        file_bytes=path.stat().st_size,
        header_bytes=len(MAGIC) + 4 + len(header_bytes),
        payload_bytes=sum(len(b) for b in payload),
        theoretical_bytes=math.ceil(theory_bits / 8),
        packed_weight_bytes=math.ceil(packed_bits / 8),
        fp32_bytes=fp32,
    )
