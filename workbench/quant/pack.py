"""Packed low-bit storage of quantized models.

File layout (little endian)::

    b"WBPACK1\\n" | uint32 header length | zlib(JSON header) | payload entries, each byte aligned

Integer weights are stored as unsigned codes ``q - qmin`` at their exact bit width (two 4-bit codes per byte,
four 2-bit codes, 3-bit codes straddling bytes ...), row by row so each output channel can have its own width.
Scales are float32, asymmetric zero points uint8, 16-bit weights as float16 / bfloat16, everything else
(biases, BatchNorm statistics, activation ranges) in its own dtype. Loading rebuilds the quantized model from the
float model and reproduces its outputs exactly.

Every quantized layer type is stored alike (Conv1d, Conv2d, Linear, Embedding: the weight's rows are its output
channels, an Embedding's rows its tokens); a weight-only layer has no activation state to store.

Compressed layers: an unstructured-pruned weight stores a one-bit occupancy mask (``np.packbits``) followed by the
codes (or 16/32-bit floats) of its kept weights only; a channel-pruned weight stores one bit per output channel
followed by the kept rows, and the scales / zero points of kept rows only; a low-rank layer stores its two factors
``lowrank_a`` / ``lowrank_b`` like weights (its ``weight`` is rebuilt as ``A @ B`` when loading).

Nothing in a packed file is executed when it is read (no pickle: a JSON header and raw bytes). The header records
the payload's length and sha256 and the float model's class: a truncated, damaged or edited file, or one packed
from another model, is refused with a :class:`PlanError` naming the file and what does not match (files written
before the hash was recorded are checked by length and shapes).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.quant.modules import ActQuantizer
from workbench.quant.spec import PlanError, QuantPlan
from workbench.quant.swap import fold_batchnorm, quant_modules, swap_modules

MAGIC = b"WBPACK1\n"
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "bool": torch.bool,
}


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
def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (< 2**bits, bits <= 8) -> big-endian bit stream as a flat uint8 bit array (unpacked bits)."""
    if bits < 1 or bits > 8:
        raise ValueError(f"pack_bits handles 1..8 bits, got {bits}")
    c = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, 1)
    return np.unpackbits(c, axis=1)[:, 8 - bits :].reshape(-1)


def unpack_bits(bitstream: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` on an unpacked bit array: ``count`` codes of width ``bits``."""
    b = bitstream[: count * bits].reshape(count, bits).astype(np.int64)
    weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
    return b @ weights


def pack_rows(codes: np.ndarray, row_bits: list[int]) -> bytes:
    """Pack a ``[rows, cols]`` matrix of unsigned codes, row ``r`` at ``row_bits[r]`` bits, into bytes."""
    if len(set(row_bits)) == 1:
        stream = pack_bits(codes, row_bits[0])
    else:
        stream = np.concatenate([pack_bits(codes[r], b) for r, b in enumerate(row_bits)])
    return np.packbits(stream).tobytes()


def unpack_rows(buf: bytes, row_bits: list[int], cols: int) -> np.ndarray:
    stream = np.unpackbits(np.frombuffer(buf, dtype=np.uint8))
    rows = len(row_bits)
    if len(set(row_bits)) == 1:
        return unpack_bits(stream, row_bits[0], rows * cols).reshape(rows, cols)
    out = np.empty((rows, cols), dtype=np.int64)
    offset = 0
    for r, b in enumerate(row_bits):
        out[r] = unpack_bits(stream[offset:], b, cols)
        offset += b * cols
    return out


# -- tensors <-> bytes ----------------------------------------------------------------------------------------
def _dtype_name(dtype: torch.dtype) -> str:
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise PlanError(f"cannot store tensors of dtype {dtype}; supported: {sorted(_DTYPES)}")


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _bytes_tensor(buf: bytes, dtype_name: str, shape: list[int]) -> torch.Tensor:
    dtype = _DTYPES[dtype_name]
    if dtype == torch.bfloat16:
        arr = np.frombuffer(buf, dtype=np.int16).copy()
        return torch.from_numpy(arr).view(torch.bfloat16).reshape(shape)
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    return torch.from_numpy(np.frombuffer(buf, dtype=np_dtype).copy()).reshape(shape)


# -- save / load ----------------------------------------------------------------------------------------------
_Entry = tuple[dict, bytes, int]


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
    header_bytes = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:  # written aside, then renamed: an existing file is never left half-written
        f.write(MAGIC)
        f.write(struct.pack("<I", len(header_bytes)))
        f.write(header_bytes)
        for blob in payload:
            f.write(blob)
    os.replace(tmp, path)
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


def _sha256(blobs: list[bytes] | bytes) -> str:
    h = hashlib.sha256()
    for blob in [blobs] if isinstance(blobs, bytes) else blobs:
        h.update(blob)
    return h.hexdigest()


def read_header(path: str | Path) -> tuple[dict, int]:
    """The JSON header of a packed file and the byte offset where its payload starts.

    Raises :class:`PlanError` naming the file when it is not a packed model, or its header is truncated or damaged
    (the header is zlib-compressed JSON with a checksum; it is parsed, never executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"packed model {path} does not exist")
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise PlanError(f"{path} is not a workbench packed model (bad magic bytes)")
        size = f.read(4)
        if len(size) < 4:
            raise PlanError(f"packed model {path} is truncated: it ends inside its header")
        (n,) = struct.unpack("<I", size)
        blob = f.read(n)
    if len(blob) < n:
        raise PlanError(
            f"packed model {path} is truncated: its header is {n} bytes, the file holds {len(blob)}"
        )
    try:
        header = json.loads(zlib.decompress(blob))
    except (zlib.error, ValueError) as e:
        raise PlanError(f"packed model {path} has a damaged header ({e})") from None
    if not isinstance(header, dict) or not isinstance(header.get("entries"), list) or "plan" not in header:
        raise PlanError(f"packed model {path} has a damaged header (no plan or entry list)")
    return header, len(MAGIC) + 4 + n


def _check_payload(path: Path, header: dict, data: bytes) -> None:
    """The payload is as long as the header's entries say and, when recorded, has the recorded sha256."""
    try:
        expected = sum(int(e["nbytes"]) for e in header["entries"])
    except (KeyError, TypeError, ValueError) as e:
        raise PlanError(f"packed model {path} has a damaged header (entry sizes: {e})") from None
    if len(data) < expected:
        raise PlanError(
            f"packed model {path} is truncated: its header lists {expected} payload bytes, the file holds "
            f"{len(data)}"
        )
    if len(data) > expected:
        raise PlanError(
            f"packed model {path} has {len(data) - expected} unexpected bytes after its payload (damaged or "
            "appended to)"
        )
    recorded = header.get("payload_sha256")
    if recorded is not None and _sha256(data) != recorded:
        raise PlanError(
            f"packed model {path} failed its content check: the payload's sha256 does not match the one in its "
            "header (damaged or edited); it is not used"
        )


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


def load_packed(path: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild the quantized model saved by :func:`save_packed` on top of (a copy of) its float ``model``.

    Raises :class:`PlanError` naming the file when it is truncated, damaged or edited (length and sha256 of the
    payload), or was packed from another model (its layers, or the shapes of its tensors, differ)."""
    path = Path(path)
    header, offset = read_header(path)
    data = path.read_bytes()[offset:]
    _check_payload(path, header, data)
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
