"""The packed file's frame: magic bytes, zlib JSON header, payload checks (length, sha256)."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

from workbench.quant.spec import PlanError

MAGIC = b"WBPACK1\n"


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
