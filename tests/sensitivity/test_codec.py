"""The JSON codec of results: ``info`` values and tables come back as they were; anything else is refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workbench.sensitivity.codec import (
    _canonical_json,
    _decode_frame,
    _encode_frame,
    _from_json_value,
    _to_json_value,
)


def _round_trip(value: object) -> object:
    return json.loads(_canonical_json(value))


def test_canonical_json_sorts_keys_without_spaces():
    assert _canonical_json({"b": 1, "a": [1.5, None]}) == '{"a":[1.5,null],"b":1}'


def test_info_values_round_trip():
    info = {
        "t": (1, 2.5, "a"),
        "k": {(1, 2): "pair", 3: [4, 5]},
        "a": np.arange(3, dtype=np.int16),
        "f": np.float32(0.5),
        "n": None,
    }
    back = _from_json_value(_round_trip(_to_json_value(info, "info")))
    assert back["t"] == (1, 2.5, "a")
    assert back["k"] == {(1, 2): "pair", 3: [4, 5]}
    assert back["a"].dtype == np.int16 and back["a"].tolist() == [0, 1, 2]
    assert back["f"] == 0.5 and back["n"] is None
    with pytest.raises(TypeError, match=r"info\['bad'\] is a object"):
        _to_json_value({"bad": object()}, "info")


def test_frames_round_trip_with_their_dtypes():
    df = pd.DataFrame(
        {
            "layer": ["a", "b"],
            "w_bits": np.array([2, 4], dtype="int64"),
            "value": [0.25, float("nan")],
            "rank": pd.array([1, None], dtype="Int64"),
        },
        index=pd.RangeIndex(5, 7),
    )
    back = _decode_frame(_round_trip(_encode_frame(df, "table")))
    pd.testing.assert_frame_equal(df, back)
    assert list(back.index) == [5, 6] and str(back["rank"].dtype) == "Int64"
    broken = _encode_frame(df, "table")
    broken["data"][1] = [2]  # one value for two rows
    with pytest.raises(ValueError, match="has 1 values for 2 rows"):
        _decode_frame(broken)
