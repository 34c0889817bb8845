"""File helpers of the suite: the shared digest and atomic write under the names the suite uses."""

from __future__ import annotations

from workbench._common.hashing import file_sha256 as _sha256
from workbench._common.io import atomic_write_text as _atomic_write_text

__all__ = ["_atomic_write_text", "_sha256"]
