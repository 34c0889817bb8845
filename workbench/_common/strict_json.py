"""JSON read strictly: an object holding the same key twice is refused naming the key (Python's ``json`` keeps
the last value without a word, so a hand-edited plan or profile could lose a layer or a field silently)."""

from __future__ import annotations

import json
from typing import Any


class DuplicateKeyError(ValueError):
    """A JSON object holds the same key twice; ``key`` is that key."""

    def __init__(self, key: str, keys: list[str]) -> None:
        shown = keys if len(keys) <= 8 else [*keys[:8], "..."]
        super().__init__(
            f"the key {key!r} appears twice in one JSON object (keys {shown}); give each key once"
        )
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key, [k for k, _ in pairs])
        out[key] = value
    return out


def loads_strict(text: str | bytes | bytearray) -> Any:
    """``json.loads(text)``, refusing a duplicate key in any object with :class:`DuplicateKeyError` (a
    ValueError naming the key); every other error is ``json.loads``'s own."""
    return json.loads(text, object_pairs_hook=_unique_pairs)
