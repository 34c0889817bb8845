"""Digests of bytes, files and source code; atomic writes."""

from __future__ import annotations

import hashlib

from workbench._common.hashing import code_fingerprint, file_sha256, sha256_hex
from workbench._common.io import atomic_write_text


def test_hashing_helpers(tmp_path) -> None:
    assert sha256_hex("a", b"b") == hashlib.sha256(b"a\0b").hexdigest()
    p = atomic_write_text(tmp_path / "f.txt", "hello")
    assert file_sha256(p) == hashlib.sha256(b"hello").hexdigest()
    assert file_sha256(tmp_path / "missing") is None
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    before = code_fingerprint("t", pkg)
    (pkg / "sub" / "b.py").write_text("y = 3\n")  # a subpackage's code counts too
    assert code_fingerprint("t", pkg) != before
