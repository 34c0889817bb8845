"""The on-disk sensitivity cache: the key (a hash of the measuring code, the model, the config, the metric classes
and the data) and the file ``data/cache/sensitivity/<key>.json`` (a :meth:`SensitivityResult.save` file)."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import Tensor

from workbench.quant.inputs import input_tensors
from workbench.sensitivity.batches import _split_batch, _take, _tensor_bytes
from workbench.sensitivity.config import SensitivityConfig
from workbench.sensitivity.registry import METRICS
from workbench.sensitivity.result import SensitivityResult
from workbench.tasks.task import TaskLike

CACHE_VERSION = 2  # bump whenever a built-in metric or the probe engine changes its numbers


class SensitivityCacheWarning(UserWarning):
    """A sensitivity cache file was not used (damaged, edited, from another key, or an old pickle); it is
    recomputed and replaced."""


def _inputs_bytes(h: Any, x: Any) -> None:
    """Feed inputs to hash ``h``: a tensor's bytes as they always were; a structure's leaves with their paths."""
    if isinstance(x, Tensor):
        h.update(_tensor_bytes(x))
        return
    for path, t in input_tensors(x):
        h.update(path.encode())
        h.update(_tensor_bytes(t))


def _cache_key(task: TaskLike, config: SensitivityConfig, calib: list[tuple[Any, Tensor | None]]) -> str:
    import workbench.quant
    from workbench._common.hashing import code_fingerprint

    h = hashlib.sha256()
    h.update(f"sensitivity-cache-v{CACHE_VERSION}\n".encode())
    # the quantization core and this package measure the values: a change to either gets a fresh key
    h.update(code_fingerprint("code", workbench.quant, Path(__file__).parent).encode())
    h.update(f"{task.name}\n{type(task.model).__qualname__}\n".encode())
    output_key = task.output_key
    if output_key is not None:  # another output gives other values (None keeps the keys cached so far)
        h.update(f"output_key={output_key!r}\n".encode())
    for key, value in task.model.state_dict().items():
        h.update(key.encode())
        h.update(str((tuple(value.shape), str(value.dtype))).encode())
        h.update(_tensor_bytes(value))
    cfg = asdict(config)
    for name in ("progress", "probe_cache_mb", "num_threads"):  # change speed, not results
        cfg.pop(name)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name in config.metrics:  # a user metric edited in a notebook gets a new key
        cls = METRICS[name]
        h.update(f"{name}={cls.__module__}.{cls.__qualname__}\n".encode())
        with contextlib.suppress(OSError, TypeError):  # no source (e.g. a class typed into a REPL)
            h.update(inspect.getsource(cls).encode())
    for x, y in calib:
        _inputs_bytes(h, x)
        if y is not None:
            h.update(_tensor_bytes(y))
    if any(getattr(METRICS[m], "split", None) == "val" for m in config.metrics):
        val = task.val_loader
        dataset = getattr(val, "dataset", None)
        h.update(
            f"val:{len(dataset) if dataset is not None and hasattr(dataset, '__len__') else '?'}".encode()
        )
        for batch in _take(val, config.val_batches) if val is not None else []:
            x, y = _split_batch(batch)
            _inputs_bytes(h, x)
            if y is not None:
                h.update(_tensor_bytes(y))
    return h.hexdigest()[:20]


def _cache_path(key: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    from workbench.paths import data_dir

    root = Path(cache_dir) if cache_dir is not None else data_dir() / "cache" / "sensitivity"
    return root / f"{key}.json"


def _load_cache(path: Path, key: str) -> SensitivityResult | None:
    """The cached result at ``path`` if it is whole, unedited and holds ``key``; else None, with a
    :class:`SensitivityCacheWarning` naming the file and the reason (the caller recomputes and replaces it).
    An old pickle cache file of the same key (``<key>.pkl``) is never unpickled: it is named and ignored."""
    legacy = path.with_suffix(".pkl")
    if not path.is_file():
        if legacy.is_file():
            warnings.warn(
                f"ignoring the old pickle sensitivity cache file {legacy} (pickles are never loaded: unpickling can "
                f"run code); recomputing into {path.name}. Delete {legacy.name} once it is no longer needed.",
                SensitivityCacheWarning,
                stacklevel=3,
            )
        return None
    try:
        return SensitivityResult.load(path, key=key)
    except (ValueError, OSError) as e:
        warnings.warn(
            f"sensitivity cache file {path} is not used, recomputing and replacing it: {e}",
            SensitivityCacheWarning,
            stacklevel=3,
        )
        return None
