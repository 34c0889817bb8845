"""Strict JSON: a duplicate key in any object is refused naming the key (``json.loads`` keeps the last)."""

from __future__ import annotations

import json

import pytest

from workbench._common.strict_json import DuplicateKeyError, loads_strict


def test_duplicate_keys_are_refused_naming_the_key_at_any_depth() -> None:
    assert loads_strict('{"a": {"b": 1, "c": [{"d": 2}]}}') == {"a": {"b": 1, "c": [{"d": 2}]}}
    assert json.loads('{"a": 1, "a": 2}') == {"a": 2}  # what the standard parser does
    with pytest.raises(DuplicateKeyError, match=r"the key 'a' appears twice .*\['a', 'a'\]") as err:
        loads_strict('{"a": 1, "a": 2}')
    assert err.value.key == "a"
    with pytest.raises(DuplicateKeyError, match="the key 'w_bits' appears twice"):
        loads_strict(b'{"fc": {"w_bits": 4, "a_bits": 8, "w_bits": 8}}')
    with pytest.raises(json.JSONDecodeError):
        loads_strict("{not json")
