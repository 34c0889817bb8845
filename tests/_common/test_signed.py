"""Signed files: a keyed signature over the whole file; edits with a recomputed plain hash are refused."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import pytest
import torch
from torch import nn

from workbench._common.signed import (
    MAGIC,
    UntrustedFileError,
    read_signed,
    sign_bytes,
    write_signed,
)


@pytest.fixture(autouse=True)
def _own_key(tmp_path, monkeypatch):
    """Every test signs with a fresh installation key of its own."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WORKBENCH_TRUST_OLD_FILES", raising=False)


def test_round_trip_and_kind(tmp_path) -> None:
    path = write_signed(tmp_path / "a.bin", b"payload \x00\xff", kind="test-kind")
    assert read_signed(path, kind="test-kind") == b"payload \x00\xff"
    with pytest.raises(UntrustedFileError, match="holds a 'test-kind' file, not a other"):
        read_signed(path, kind="other")


def test_edited_payload_is_refused_naming_the_file(tmp_path) -> None:
    path = write_signed(tmp_path / "a.bin", b'{"value": 1}', kind="k")
    path.write_bytes(path.read_bytes().replace(b'"value": 1', b'"value": 2'))
    with pytest.raises(UntrustedFileError, match="failed its signature check") as err:
        read_signed(path, kind="k")
    assert str(path) in str(err.value)


def test_a_signature_from_another_key_is_refused(tmp_path, monkeypatch) -> None:
    path = write_signed(tmp_path / "a.bin", b"x", kind="k")
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "elsewhere"))  # another installation's key
    with pytest.raises(UntrustedFileError, match="another installation"):
        read_signed(path, kind="k")


def test_old_unsigned_files_are_refused_unless_trusted(tmp_path, monkeypatch) -> None:
    path = tmp_path / "old.json"
    path.write_text("{}")
    with pytest.raises(UntrustedFileError, match="older, unsigned format.*--trust-old-files"):
        read_signed(path, kind="k")
    assert read_signed(path, kind="k", trust_old_files=True) is None  # the caller reads the old format
    monkeypatch.setenv("WORKBENCH_TRUST_OLD_FILES", "1")
    assert read_signed(path, kind="k") is None


def test_signature_depends_on_kind_and_key(tmp_path, monkeypatch) -> None:
    a = sign_bytes(b"data", kind="one")
    assert a != sign_bytes(b"data", kind="two") and a == sign_bytes(b"data", kind="one")
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "other"))
    assert sign_bytes(b"data", kind="one") != a
    assert len(a) == 64


def test_packed_model_with_edited_header_and_recomputed_hash_is_refused(tmp_path) -> None:
    """The .wbq header records the payload's sha256: an attacker who edits a weight code and recomputes that
    hash (and the zlib frame) still cannot forge the header's signature."""
    from workbench.quant import QuantPlan, QuantSpec, load_packed, quantize_model, read_header, save_packed
    from workbench.quant.pack import MAGIC as PACK_MAGIC

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    calib = [(torch.randn(4, 8), torch.zeros(4))]
    q = quantize_model(model, QuantPlan.uniform(model, QuantSpec(w_bits=4, a_bits=8)), calib)
    path = tmp_path / "m.wbq"
    save_packed(q, path)
    header, offset = read_header(path)
    payload = bytearray(path.read_bytes()[offset:])
    payload[0] ^= 0x01
    header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    blob = zlib.compress(json.dumps(header, separators=(",", ":")).encode())
    bad = tmp_path / "bad.wbq"
    bad.write_bytes(PACK_MAGIC + struct.pack("<I", len(blob)) + blob + bytes(payload))
    with pytest.raises(UntrustedFileError, match="failed its signature check") as err:
        load_packed(bad, model)
    assert str(bad) in str(err.value)
    x = calib[0][0]
    with torch.no_grad():
        assert torch.equal(load_packed(path, model)(x), q(x))  # the untouched file loads


def test_packed_header_compression_bomb_is_refused_before_inflating(tmp_path) -> None:
    from workbench.quant import PlanError, read_header
    from workbench.quant.pack import MAGIC as PACK_MAGIC

    bomb = zlib.compress(b" " * (80 << 20), 9)  # 80 MiB of spaces in ~80 kB
    path = tmp_path / "bomb.wbq"
    path.write_bytes(PACK_MAGIC + struct.pack("<I", len(bomb)) + bomb)
    with pytest.raises(PlanError, match="inflates beyond 64 MiB"):
        read_header(path)


def test_magic_is_distinct() -> None:
    assert MAGIC.endswith(b"\n") and not MAGIC.startswith(b"WBPACK")
