"""Signed files: everything the workbench writes and later trusts carries an HMAC-SHA256 under this
installation's secret key (:func:`workbench.paths.signing_key`, ``data/.signing-key``).

A plain checksum only catches accidents: whoever edits a cached value can recompute it. A keyed signature over
the whole file (header and payload) cannot be recomputed without the key, so an edited sensitivity cache,
predictor dataset line, QAT checkpoint or packed model is refused with :class:`UntrustedFileError` naming the
file, before anything in it is used. Files written by another installation are refused the same way.

Files written before signatures existed are refused by default too; a user who trusts them accepts them once
with ``trust_old_files=True`` (CLI: ``--trust-old-files``, or ``WORKBENCH_TRUST_OLD_FILES=1``), after which the
workbench rewrites what it rebuilds in the signed format.

Whole files: :func:`write_signed` / :func:`read_signed` (``WBSIGNED1`` magic line, a JSON header line with the
kind and signature, then the payload). Files with a header of their own (packed models) or made of independent
lines (measured-plan datasets) sign their parts with :func:`sign_bytes` / :func:`check_signature`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from workbench._common.io import atomic_write_bytes
from workbench.paths import data_dir, signing_key

MAGIC = b"WBSIGNED1\n"
TRUST_ENV = "WORKBENCH_TRUST_OLD_FILES"


class UntrustedFileError(ValueError):
    """A file the workbench would trust failed its signature check, or is in an older unsigned format. The
    message names the file and what to do."""


def trusting_old_files(trust_old_files: bool | None = None) -> bool:
    """``trust_old_files`` when given, else whether ``WORKBENCH_TRUST_OLD_FILES`` is set to 1 / true / yes."""
    if trust_old_files is not None:
        return bool(trust_old_files)
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def keyed_digest(data: bytes) -> bytes:
    """HMAC-SHA256 (32 raw bytes) of ``data`` under this installation's key."""
    return hmac.new(signing_key(), data, hashlib.sha256).digest()


def digest_matches(digest: bytes, data: bytes) -> bool:
    """True when ``digest`` is :func:`keyed_digest` of ``data`` (compared in constant time)."""
    return hmac.compare_digest(digest, keyed_digest(data))


def sign_bytes(data: bytes, *, kind: str) -> str:
    """HMAC-SHA256 (hex) of ``kind`` and ``data`` under this installation's key: a signature made for one kind
    of file does not fit another."""
    return keyed_digest(kind.encode() + b"\0" + data).hex()


def check_signature(data: bytes, signature: object, *, kind: str, path: str | Path, what: str) -> None:
    """Raise :class:`UntrustedFileError` naming ``path`` unless ``signature`` is ``data``'s signature."""
    if not isinstance(signature, str) or not hmac.compare_digest(signature, sign_bytes(data, kind=kind)):
        raise UntrustedFileError(
            f"{what} {path} failed its signature check: it was edited, damaged, or written by another "
            f"installation (key {data_dir() / '.signing-key'}); nothing in it is used. Rebuild it here"
        )


def old_format_error(path: str | Path, what: str) -> UntrustedFileError:
    """The refusal of a file in a format from before signatures, saying how to accept it once."""
    return UntrustedFileError(
        f"{what} {path} is in an older, unsigned format; it is not used. If you trust it, accept it once with "
        f"trust_old_files=True (CLI: --trust-old-files, or {TRUST_ENV}=1), or delete it to rebuild it"
    )


def write_signed(path: str | Path, payload: bytes, *, kind: str) -> Path:
    """Write ``payload`` atomically as a signed file of ``kind``."""
    header = json.dumps({"kind": kind, "hmac": sign_bytes(payload, kind=kind)}, sort_keys=True).encode()
    return atomic_write_bytes(path, MAGIC + header + b"\n" + payload)


def is_signed(path: str | Path) -> bool:
    """True when ``path`` starts like a signed file (its signature is not checked)."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def read_signed(
    path: str | Path, *, kind: str, what: str | None = None, trust_old_files: bool | None = None
) -> bytes | None:
    """The payload of a signed file of ``kind``, checked. A file without the signed frame raises
    :class:`UntrustedFileError` (an older format), or returns None when old files are trusted (the caller then
    reads its old format); a wrong kind or signature always raises."""
    path = Path(path)
    what = what or kind
    blob = path.read_bytes()
    if not blob.startswith(MAGIC):
        if trusting_old_files(trust_old_files):
            return None
        raise old_format_error(path, what)
    header_line, sep, payload = blob[len(MAGIC) :].partition(b"\n")
    try:
        header = json.loads(header_line) if sep else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise UntrustedFileError(f"{what} {path} has a damaged signature header; nothing in it is used")
    if header.get("kind") != kind:
        raise UntrustedFileError(f"{path} holds a {header.get('kind')!r} file, not a {what}; it is not used")
    check_signature(payload, header.get("hmac"), kind=kind, path=path, what=what)
    return payload
