"""Digests: of bytes and text, of files, of the source code that produced a cached measurement."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType


def sha256_hex(*parts: bytes | str, sep: bytes = b"\0") -> str:
    """SHA-256 (hex) of ``parts`` joined by ``sep`` (text encoded as UTF-8)."""
    h = hashlib.sha256()
    for i, part in enumerate(parts):
        if i:
            h.update(sep)
        h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks; None when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def code_fingerprint(tag: str, *sources: ModuleType | Path) -> str:
    """SHA-256 over ``tag`` and the source of each module or package (every ``*.py`` below a package folder,
    subpackages included, by relative path), so caches of measurements go stale when the code that measured
    them changes."""
    h = hashlib.sha256(tag.encode())
    for src in sources:
        path = Path(src.__file__) if isinstance(src, ModuleType) else Path(src)
        if path.name == "__init__.py":
            path = path.parent
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            h.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            h.update(file.read_bytes())
    return h.hexdigest()
