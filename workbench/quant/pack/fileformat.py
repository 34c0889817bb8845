"""The packed file's frame: magic bytes, zlib JSON header, payload checks (length, sha256) and the header's
signature (HMAC under this installation's key, :mod:`workbench._common.signed`): the header records the
payload's sha256, so the signature covers the whole file."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

from workbench._common.signed import (
    UntrustedFileError,
    check_signature,
    old_format_error,
    sign_bytes,
    trusting_old_files,
)
from workbench.quant.spec import PlanError

MAGIC = b"WBPACK1\n"
SIGNATURE_KIND = "packed-model"
MAX_HEADER_BYTES = 64 << 20  # a header is a plan and an entry list: far below this even for large models


class PackSignatureError(PlanError, UntrustedFileError):
    """A packed file whose header is not signed by this installation (edited, or an older format)."""


def _header_bytes(header: dict) -> bytes:
    """The canonical bytes of a header without its signature (what the signature covers)."""
    return json.dumps({k: v for k, v in header.items() if k != "signature"}, separators=(",", ":")).encode()


def sign_header(header: dict) -> dict:
    """``header`` with its ``signature``."""
    return {**header, "signature": sign_bytes(_header_bytes(header), kind=SIGNATURE_KIND)}


def check_header_signature(path: Path, header: dict, *, trust_old_files: bool | None = None) -> None:
    """Refuse a header that is not signed by this installation (an unsigned one unless old files are trusted)."""
    what = "packed model"
    try:
        if "signature" not in header:
            if not trusting_old_files(trust_old_files):
                raise old_format_error(path, what)
            return
        check_signature(_header_bytes(header), header["signature"], kind=SIGNATURE_KIND, path=path, what=what)
    except UntrustedFileError as e:
        raise PackSignatureError(str(e)) from None


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
    if path.is_dir():
        raise IsADirectoryError(f"packed model {path} is a directory, not a .wbq file")
    if not path.is_file():
        raise FileNotFoundError(f"packed model {path} does not exist")
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise PlanError(f"{path} is not a workbench packed model (bad magic bytes)")
        size = f.read(4)
        if len(size) < 4:
            raise PlanError(f"packed model {path} is truncated: it ends inside its header")
        (n,) = struct.unpack("<I", size)
        _check_header_size(path, n, path.stat().st_size - len(MAGIC) - 4)
        blob = f.read(n)
    if len(blob) < n:
        raise PlanError(
            f"packed model {path} is truncated: its header is {n} bytes, the file holds {len(blob)}"
        )
    header = _inflate_header(path, blob)
    if not isinstance(header, dict) or not isinstance(header.get("entries"), list) or "plan" not in header:
        raise PlanError(f"packed model {path} has a damaged header (no plan or entry list)")
    return header, len(MAGIC) + 4 + n


def _check_header_size(path: Path, n: int, available: int) -> None:
    """Refuse, before reading or inflating anything, a header size field larger than the limit or the file."""
    if n > MAX_HEADER_BYTES:
        raise PlanError(
            f"packed model {path} declares a {n}-byte header, over the {MAX_HEADER_BYTES >> 20} MiB limit "
            "(damaged or crafted); it is not read"
        )
    if n > available:
        raise PlanError(
            f"packed model {path} is truncated: its header is {n} bytes, the file holds {available}"
        )


def _inflate_header(path: Path, blob: bytes) -> dict:
    """The JSON header from its zlib ``blob``, inflating at most :data:`MAX_HEADER_BYTES` (a compression bomb is
    refused after that); damaged bytes, bad JSON or JSON nested too deeply raise :class:`PlanError`."""
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(blob, MAX_HEADER_BYTES)
        if inflater.unconsumed_tail:
            raise PlanError(
                f"packed model {path} has a header that inflates beyond {MAX_HEADER_BYTES >> 20} MiB "
                "(a compression bomb or a damaged file); it is not read"
            )
        return json.loads(text)
    except RecursionError:
        raise PlanError(f"packed model {path} has a damaged header (JSON nested too deeply)") from None
    except (zlib.error, ValueError) as e:
        if isinstance(e, PlanError):
            raise
        raise PlanError(f"packed model {path} has a damaged header ({e})") from None


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
