"""Packed low-bit storage: exact round trip and file size against the exact bit count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from workbench.quant import (
    PlanError,
    QuantPlan,
    QuantSpec,
    load_packed,
    quantize_model,
    read_header,
    save_packed,
)
from workbench.quant.pack import pack_rows, unpack_rows


@given(
    rows=st.lists(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8]), min_size=1, max_size=6),
    cols=st.integers(1, 40),
    seed=st.integers(0, 1000),
)
def test_pack_rows_round_trip_and_exact_size(rows, cols, seed):
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, 2**b, size=cols) for b in rows])
    buf = pack_rows(codes, rows)
    assert len(buf) == -(-sum(rows) * cols // 8)  # exactly ceil(total bits / 8) bytes
    assert np.array_equal(unpack_rows(buf, rows, cols), codes)


def test_two_4bit_codes_per_byte():
    assert pack_rows(np.array([[1, 2, 15, 0]]), [4]) == bytes([0x12, 0xF0])


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(w_bits=4, a_bits=8),
        QuantSpec(w_bits=2, a_bits=4, granularity="per_tensor"),
        QuantSpec(
            w_bits=3, a_bits=8, granularity="per_group", group_size=4, w_symmetric=False, w_observer="mse"
        ),
        QuantSpec(w_bits=5, a_bits=6, a_granularity="per_channel", a_observer="percentile"),
        QuantSpec(w_bits=16, a_bits=16),
        QuantSpec(w_bits=16, a_bits=16, float16_format="float16"),
        QuantSpec(w_bits=6, a_bits=8, a_dynamic=True),
        QuantSpec(w_bits=32, a_bits=32),
    ],
)
def test_packed_round_trip_is_exact(tiny_model, calib_batches, spec, tmp_path):
    x = torch.cat([b[0] for b in calib_batches])
    q = quantize_model(tiny_model, QuantPlan.uniform(tiny_model, spec), calib_batches)
    report = save_packed(q, tmp_path / "m.wbq")
    loaded = load_packed(tmp_path / "m.wbq", tiny_model)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    assert report.file_bytes == (tmp_path / "m.wbq").stat().st_size
    n_entries = len(read_header(tmp_path / "m.wbq")[0]["entries"])  # each entry is padded to whole bytes
    assert report.theoretical_bytes <= report.payload_bytes <= report.theoretical_bytes + n_entries
    # the plan summary predicts the stored state; the file adds a calibrated flag (and unused ranges) per layer
    summary = QuantPlan.uniform(tiny_model, spec).summary(tiny_model, x)
    assert 0 <= report.theoretical_bytes - summary.size_bytes <= 9 * 3, (report, summary)


def test_mixed_channel_bits_round_trip(tiny_model, calib_batches, tmp_path):
    x = torch.cat([b[0] for b in calib_batches])
    plan = QuantPlan(
        {
            "features.0": QuantSpec(w_bits=4, channel_bits=(2, 3, 4, 5, 6, 8, 8, 2)),
            "fc": QuantSpec(w_bits=4, granularity="per_group", group_size=8, channel_bits=(2, 4) * 5),
        }
    )
    q = quantize_model(tiny_model, plan, calib_batches)
    save_packed(q, tmp_path / "m.wbq")
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "m.wbq", tiny_model)(x), q(x))


def test_save_refuses_to_overwrite_and_bad_files(tiny_model, calib_batches, tmp_path):
    q = quantize_model(tiny_model, QuantPlan.uniform(tiny_model, QuantSpec()), calib_batches)
    save_packed(q, tmp_path / "m.wbq")
    with pytest.raises(FileExistsError):
        save_packed(q, tmp_path / "m.wbq")
    save_packed(q, tmp_path / "m.wbq", overwrite=True)
    with pytest.raises(PlanError, match="quantize_model"):
        save_packed(tiny_model, tmp_path / "x.wbq")
    (tmp_path / "junk.wbq").write_bytes(b"not a model")
    with pytest.raises(PlanError, match="magic"):
        load_packed(tmp_path / "junk.wbq", tiny_model)
    with pytest.raises(FileNotFoundError):
        load_packed(tmp_path / "missing.wbq", tiny_model)


def test_packed_header_size_and_nesting_are_checked_before_reading(tmp_path):
    """A header size field over the limit or beyond the file is refused before anything is read or inflated
    (before: the declared size was read and the bytes inflated first); JSON nested too deeply is a PlanError
    (before: RecursionError); a directory is named as one."""
    import struct
    import zlib

    from workbench.quant import read_header
    from workbench.quant.pack import MAGIC

    path = tmp_path / "big.wbq"
    path.write_bytes(MAGIC + struct.pack("<I", (64 << 20) + 1) + b"\0" * 64)
    with pytest.raises(PlanError, match=r"declares a 67108865-byte header, over the 64 MiB limit"):
        read_header(path)
    path.write_bytes(MAGIC + struct.pack("<I", 1000) + b"\0" * 64)
    with pytest.raises(PlanError, match="truncated: its header is 1000 bytes, the file holds 64"):
        read_header(path)
    deep = zlib.compress(b"[" * 200_000 + b"]" * 200_000)
    path.write_bytes(MAGIC + struct.pack("<I", len(deep)) + deep)
    with pytest.raises(PlanError, match="damaged header .*nested too deeply"):
        read_header(path)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_header(tmp_path)
