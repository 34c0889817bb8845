"""JSON codec of sensitivity results: tables column by column with their dtypes, and ``info`` values (tuples,
non-string-keyed dicts and arrays tagged so that they come back as they were); never a pickle."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd

_TAGS = ("__tuple__", "__items__", "__ndarray__")
_JSON_SCALARS = (bool, int, float, str)


def _canonical_json(obj: Any) -> str:
    """The one JSON text of ``obj`` that the content hash covers (sorted keys, no spaces; floats round-trip)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True, ensure_ascii=True)


def _to_json_value(value: Any, where: str) -> Any:
    """``value`` as JSON data, tuples / non-string-keyed dicts / arrays tagged so that they come back as they
    were. Raises TypeError naming ``where`` for anything else (it could only be stored as a pickle)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if value is pd.NA or value is pd.NaT:  # a missing value of a nullable column: null, its dtype restores it
        return None
    if isinstance(value, np.generic):
        return _to_json_value(value.item(), where)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{where} is an array of dtype {value.dtype}, which cannot be stored")
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        if all(v is None or type(v) in _JSON_SCALARS for v in value):  # a table column: nothing to convert
            return value
        return [_to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(t in value for t in _TAGS):
            return {k: _to_json_value(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {
            "__items__": [
                [_to_json_value(k, f"{where} key"), _to_json_value(v, f"{where}[{k!r}]")]
                for k, v in value.items()
            ]
        }
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a sensitivity result cannot store (JSON only, never pickle)"
    )


def _from_json_value(value: Any) -> Any:
    if isinstance(value, list):
        if all(v is None or type(v) in _JSON_SCALARS for v in value):
            return value
        return [_from_json_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(_from_json_value(v) for v in value["__tuple__"])
    if "__items__" in value:
        return {_hashable(_from_json_value(k)): _from_json_value(v) for k, v in value["__items__"]}
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    return {k: _from_json_value(v) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    return key


def _encode_index(index: pd.Index, where: str) -> dict[str, Any]:
    if isinstance(index, pd.MultiIndex):
        raise TypeError(f"{where} is a MultiIndex, which a sensitivity result cannot store")
    name = _to_json_value(index.name, f"{where}.name")
    if isinstance(index, pd.RangeIndex):
        return {"range": [index.start, index.stop, index.step], "name": name}
    return {"values": _to_json_value(index.tolist(), where), "dtype": str(index.dtype), "name": name}


def _decode_index(obj: dict[str, Any]) -> pd.Index:
    name = _from_json_value(obj["name"])
    if "range" in obj:
        start, stop, step = (int(v) for v in obj["range"])
        return pd.RangeIndex(start, stop, step, name=name)
    return pd.Index(_from_json_value(obj["values"]), dtype=obj["dtype"], name=name)


def _encode_frame(df: pd.DataFrame, where: str) -> dict[str, Any]:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"SensitivityResult.{where} is a {type(df).__name__}, not a DataFrame")
    return {
        "index": _encode_index(df.index, f"{where}.index"),
        "columns": _encode_index(df.columns, f"{where}.columns"),
        "dtypes": [str(t) for t in df.dtypes],
        "data": [
            _to_json_value(df.iloc[:, i].tolist(), f"{where}[{df.columns[i]!r}]") for i in range(df.shape[1])
        ],
    }


def _decode_frame(obj: dict[str, Any]) -> pd.DataFrame:
    index = _decode_index(obj["index"])
    columns = _decode_index(obj["columns"])
    data, dtypes = obj["data"], obj["dtypes"]
    if not (len(data) == len(dtypes) == len(columns)):
        raise ValueError(f"{len(columns)} columns, {len(dtypes)} dtypes and {len(data)} data columns")
    series = {}
    for i, (values, dtype) in enumerate(zip(data, dtypes, strict=True)):
        values = _from_json_value(values)
        if len(values) != len(index):
            raise ValueError(f"column {columns[i]!r} has {len(values)} values for {len(index)} rows")
        series[i] = pd.Series(values, dtype=dtype, index=index)
    df = pd.DataFrame(series, index=index)
    df.columns = columns
    return df
