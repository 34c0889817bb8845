"""Hashes of source code, so caches of measurements are invalidated when the code that measured them changes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType


def code_fingerprint(tag: str, *sources: ModuleType | Path) -> str:
    """SHA-256 over ``tag`` and the source of each module or package (every ``*.py`` of a package folder)."""
    h = hashlib.sha256(tag.encode())
    for src in sources:
        path = Path(src.__file__) if isinstance(src, ModuleType) else Path(src)
        if path.name == "__init__.py":
            path = path.parent
        files = sorted(path.glob("*.py")) if path.is_dir() else [path]
        for file in files:
            h.update(file.name.encode())
            h.update(file.read_bytes())
    return h.hexdigest()
