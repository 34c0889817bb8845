"""Plain JSON values, flattened MLflow params and artifact names (nothing here imports mlflow)."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

_MAX_PARAM_LEN = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_MAX_KEY_LEN = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types for dataclasses, ``.to_dict()`` objects, numpy / torch scalars and arrays, paths, enums."""
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict) and not isinstance(obj, type):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy arrays / scalars, torch tensors
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


def flatten_params(obj: Any, *, prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Flatten nested dicts / dataclasses into ``{"a.b": "value"}`` strings suitable for MLflow params.

    Lists are kept whole as JSON; values longer than MLflow's limit are truncated with a trailing ``...``.
    """
    plain = to_jsonable(obj)
    if not isinstance(plain, dict):
        raise TypeError(
            f"params must be a dict, dataclass or object with .to_dict(), got {type(obj).__name__}"
        )
    out: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{key}{sep}{k}" if key else str(k))
            return
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > _MAX_PARAM_LEN:
            text = text[: _MAX_PARAM_LEN - 3] + "..."
        out[key[:_MAX_KEY_LEN]] = text

    walk(plain, prefix)
    return out


def _metric_items(metrics: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(key, float) pairs; None values are skipped, tensors / numpy scalars converted."""
    items = []
    for key, value in metrics.items():
        if value is None:
            continue
        if hasattr(value, "item"):
            value = value.item()
        items.append((str(key), float(value)))
    return items


def _keep_index(df: pd.DataFrame) -> bool:
    """Whether ``df.to_csv`` should write the index: not for an unnamed RangeIndex or an unnamed column copy."""
    import pandas as pd

    if any(n is not None for n in df.index.names):
        return True
    if isinstance(df.index, pd.RangeIndex):
        return False
    values = df.index.tolist()
    return not any(df[c].tolist() == values for c in df.columns if df[c].dtype == df.index.dtype)


def _artifact_file(name: str, folder: str, ext: str) -> str:
    """``folder/name.ext`` (``name`` may already carry the extension or a sub-folder)."""
    if not name or name.startswith("/") or ".." in Path(name).parts:
        raise ValueError(f"artifact name must be a relative name without '..', got {name!r}")
    if not name.endswith(f".{ext}"):
        name = f"{name}.{ext}"
    return f"{folder}/{name}" if folder else name
