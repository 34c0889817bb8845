"""Bit packing of integer codes (row by row, any width) and raw tensor bytes: the payload's building blocks."""

from __future__ import annotations

import numpy as np
import torch

from workbench.quant.spec import PlanError

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
