"""Corrupt or stale caches and packed files: detected by content hash and key, named, recomputed or refused.

Sensitivity cache files (``data/cache/sensitivity/<key>.json``) that are truncated, edited, written for another
key, or are an old pickle are named in a :class:`SensitivityCacheWarning` and recomputed, never used. Packed
models (``.wbq``) that are truncated, damaged, edited or packed from another model raise a :class:`PlanError` that
names the file and the mismatch.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench.quant import (
    PlanError,
    QuantPlan,
    QuantSpec,
    load_packed,
    quantize_model,
    read_header,
    save_packed,
)
from workbench.quant.pack import MAGIC
from workbench.sensitivity import (
    SensitivityCacheWarning,
    SensitivityConfig,
    SensitivityResult,
    analyze_sensitivity,
)
from workbench.tasks import task_from_model


class _Marker:
    """Unpickling this creates ``path``: proof that a pickle ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def _net(width: int = 6, *, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 8 * 8, 4)
    ).eval()


def _batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(2)]


def _task(model: nn.Module | None = None):
    x = torch.cat([b[0] for b in _batches()])
    y = torch.cat([b[1] for b in _batches()])
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    return task_from_model(
        model if model is not None else _net(),
        calib_loader=loader,
        val_loader=loader,
        test_loader=loader,
        name="tiny",
    )


CFG = SensitivityConfig(
    w_bits=(4, 8), a_bits=(), metrics=("output_mse",), cost_metric="output_mse", progress=False, num_threads=1
)


def _analyze(task, cache_dir: Path, config: SensitivityConfig = CFG) -> tuple[SensitivityResult, list[str]]:
    """Run the analysis with the cache; return it and the SensitivityCacheWarning messages it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = analyze_sensitivity(task, config, cache_dir=cache_dir)
    return result, [str(w.message) for w in caught if issubclass(w.category, SensitivityCacheWarning)]


@pytest.fixture
def cached(tmp_path: Path) -> tuple[object, SensitivityResult, Path]:
    """A tiny task, its computed result and the cache file it wrote."""
    task = _task()
    first, notes = _analyze(task, tmp_path)
    assert first.info["source"] == "computed" and not notes
    path = Path(first.info["cache_path"])
    assert path.parent == tmp_path and path.suffix == ".json" and path.stem == first.info["cache_key"]
    return task, first, path


def _same_tables(a: SensitivityResult, b: SensitivityResult) -> None:
    for attr in ("table", "layers", "channels", "cost_benefit"):
        pd.testing.assert_frame_equal(getattr(a, attr), getattr(b, attr))


# ------------------------------------------------------------------------------------- sensitivity cache


def test_sensitivity_cache_file_is_plain_json_with_hash_and_key(cached) -> None:
    task, first, path = cached
    doc = json.loads(path.read_text())  # plain JSON, nothing to execute
    assert doc["format"] == "workbench.sensitivity/2" and len(doc["sha256"]) == 64
    assert doc["payload"]["key"] == first.info["cache_key"]
    second, notes = _analyze(task, path.parent)
    assert second.info["source"] == "cache" and not notes
    _same_tables(first, second)
    assert second.info["config"] == first.info["config"]  # tuples come back as tuples
    assert isinstance(second.info["config"]["w_bits"], tuple)


@pytest.mark.parametrize("keep", [0, 1, 100, 0.5, -2])
def test_truncated_sensitivity_cache_is_named_and_recomputed(cached, keep) -> None:
    task, first, path = cached
    raw = path.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(raw) + keep)
    path.write_bytes(raw[:n])
    again, notes = _analyze(task, path.parent)
    assert again.info["source"] == "computed"
    assert len(notes) == 1 and str(path) in notes[0] and "not used" in notes[0], notes
    _same_tables(first, again)
    assert (
        SensitivityResult.load(path, key=first.info["cache_key"]).info["cache_key"] == first.info["cache_key"]
    )


def test_edited_sensitivity_cache_fails_its_hash_and_is_recomputed(cached) -> None:
    task, first, path = cached
    doc = json.loads(path.read_text())
    table = doc["payload"]["tables"]["table"]
    col = table["columns"]["values"].index("value")
    table["data"][col][0] = 123.0  # a plausible edit: valid JSON, valid table, wrong number
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="content check") as err:
        SensitivityResult.load(path)
    assert str(path) in str(err.value)
    again, notes = _analyze(task, path.parent)
    assert again.info["source"] == "computed" and len(notes) == 1 and "content check" in notes[0]
    assert again.table["value"].iloc[0] != 123.0
    _same_tables(first, again)


def test_sensitivity_cache_of_another_key_is_not_used(cached, tmp_path: Path) -> None:
    """A file copied (or renamed) from another model / config sits under this key's name: refused by its key."""
    task, first, path = cached
    other_task = _task(_net(seed=1))  # same architecture, other weights: another key
    other, _ = _analyze(other_task, tmp_path / "other")
    assert other.info["cache_key"] != first.info["cache_key"]
    Path(other.info["cache_path"]).replace(path)  # the other model's (whole, unedited) result under this key
    with pytest.raises(ValueError, match="another model, config or calibration data") as err:
        SensitivityResult.load(path, key=first.info["cache_key"])
    assert str(path) in str(err.value)
    again, notes = _analyze(task, path.parent)
    assert again.info["source"] == "computed" and len(notes) == 1 and "cache key" in notes[0]
    _same_tables(first, again)
    with pytest.raises(AssertionError):
        _same_tables(first, other)  # (the two results do differ: using the file would have been wrong)


def test_legacy_pickle_cache_is_never_unpickled(tmp_path: Path) -> None:
    task = _task()
    marker = tmp_path / "pwned"
    probe, _ = _analyze(task, tmp_path / "probe")  # learn this task's key
    key = probe.info["cache_key"]
    cache = tmp_path / "cache"
    cache.mkdir()
    legacy = cache / f"{key}.pkl"
    legacy.write_bytes(pickle.dumps({"format": "workbench.sensitivity/1", "table": _Marker(marker)}))
    result, notes = _analyze(task, cache)
    assert not marker.exists(), "the old pickle cache file was unpickled"
    assert result.info["source"] == "computed"
    assert len(notes) == 1 and str(legacy) in notes[0] and "never loaded" in notes[0]
    assert (cache / f"{key}.json").is_file() and legacy.is_file()  # left for the user to delete
    # the new file is used from now on, without a warning about the old one
    again, notes = _analyze(task, cache)
    assert again.info["source"] == "cache" and not notes
    # a pickle under the new name, or given to load(), is refused unread too
    (cache / f"{key}.json").write_bytes(legacy.read_bytes())
    third, notes = _analyze(task, cache)
    assert third.info["source"] == "computed" and len(notes) == 1 and "pickle" in notes[0]
    with pytest.raises(ValueError, match="pickle"):
        SensitivityResult.load(legacy)
    assert not marker.exists()


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(format="workbench.sensitivity/1"),
        lambda d: d.update(payload=[1, 2]),
        lambda d: d.pop("sha256"),
        lambda d: d["payload"]["tables"].pop("layers"),
    ],
)
def test_damaged_sensitivity_result_structure_is_refused(cached, edit) -> None:
    _, _, path = cached
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="sensitivity result") as err:
        SensitivityResult.load(path)
    assert str(path) in str(err.value)


def test_damaged_payload_with_a_recomputed_hash_is_still_refused(cached) -> None:
    """Someone edits the tables and fixes up the hash: the structure check still names the file."""
    from workbench.sensitivity import _canonical_json

    _, _, path = cached
    doc = json.loads(path.read_text())
    doc["payload"]["tables"]["table"]["data"][0] = doc["payload"]["tables"]["table"]["data"][0][
        :-1
    ]  # a short column
    import hashlib

    doc["sha256"] = hashlib.sha256(_canonical_json(doc["payload"]).encode()).hexdigest()
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="damaged sensitivity result") as err:
        SensitivityResult.load(path)
    assert str(path) in str(err.value)


def test_result_round_trip_keeps_dtypes_and_info(tmp_path: Path) -> None:
    table = pd.DataFrame({"layer": ["a", "b"], "value": [0.1, float("nan")], "w_bits": [4, 8]})
    layers = pd.DataFrame({"layer": ["a", "b"], "depth": [0, 1], "hits": pd.array([1, None], dtype="Int64")})
    info = {
        "config": {"w_bits": (2, 4), "base": {"x": None}},
        "by_bits": {4: 0.5, 8: 0.25},
        "arr": np.arange(3, dtype=np.int32),
        "scalar": np.float32(0.5),
        "flags": [True, False],
        "inf": float("inf"),
    }
    result = SensitivityResult(table=table, layers=layers, info=info)
    back = SensitivityResult.load(result.save(tmp_path / "r.json"))
    _same_tables(result, back)
    assert back.info["config"] == {"w_bits": (2, 4), "base": {"x": None}} and back.info["by_bits"] == {
        4: 0.5,
        8: 0.25,
    }
    assert back.info["arr"].dtype == np.int32 and back.info["arr"].tolist() == [0, 1, 2]
    assert (
        back.info["scalar"] == 0.5
        and back.info["flags"] == [True, False]
        and back.info["inf"] == float("inf")
    )
    with pytest.raises(TypeError, match=r"info\['bad'\]"):  # only JSON data: never a pickle
        SensitivityResult(table=table, layers=layers, info={"bad": object()}).save(tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


# ------------------------------------------------------------------------------------------ packed models


@pytest.fixture
def packed(tmp_path: Path) -> tuple[nn.Module, nn.Module, Path]:
    model = _net()
    q = quantize_model(model, QuantPlan.uniform(model, QuantSpec(w_bits=4, a_bits=8)), _batches())
    path = tmp_path / "m.wbq"
    save_packed(q, path)
    return model, q, path


def test_packed_header_records_payload_hash_and_model_class(packed) -> None:
    model, q, path = packed
    header, offset = read_header(path)
    assert header["model_class"] == "Sequential" and len(header["payload_sha256"]) == 64
    assert header["payload_bytes"] == path.stat().st_size - offset
    x = _batches()[0][0]
    with torch.no_grad():
        assert torch.equal(load_packed(path, model)(x), q(x))


def _cut_points(path: Path) -> list[int]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<I", raw[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4 + n
    return [0, 3, len(MAGIC), len(MAGIC) + 2, len(MAGIC) + 4 + n // 2, start, start + 1, len(raw) - 1]


def test_truncated_packed_file_is_refused_naming_the_file(packed) -> None:
    model, _, path = packed
    raw = path.read_bytes()
    for n in _cut_points(path):
        cut = path.with_name(f"cut{n}.wbq")
        cut.write_bytes(raw[:n])
        with pytest.raises(PlanError) as err:
            load_packed(cut, model)
        msg = str(err.value)
        assert str(cut) in msg and ("truncated" in msg or "magic" in msg), (n, msg)


def test_damaged_or_edited_packed_file_is_refused(packed) -> None:
    model, _, path = packed
    raw = bytearray(path.read_bytes())
    header, offset = read_header(path)
    flipped = bytearray(raw)
    flipped[offset + 5] ^= 0x10  # one bit of the payload (a weight code)
    bad = path.with_name("flipped.wbq")
    bad.write_bytes(bytes(flipped))
    with pytest.raises(PlanError, match="content check") as err:
        load_packed(bad, model)
    assert str(bad) in str(err.value)
    head = bytearray(raw)
    head[len(MAGIC) + 4 + 10] ^= 0xFF  # inside the compressed header: zlib's checksum catches it
    bad.write_bytes(bytes(head))
    with pytest.raises(PlanError, match="damaged header") as err:
        load_packed(bad, model)
    assert str(bad) in str(err.value)
    bad.write_bytes(bytes(raw) + b"\0" * 7)
    with pytest.raises(PlanError, match="7 unexpected bytes"):
        load_packed(bad, model)
    # an edited header (valid, re-compressed) that changes an entry's size no longer matches the payload
    header["entries"][0]["nbytes"] += 1
    blob = zlib.compress(json.dumps(header).encode())
    bad.write_bytes(MAGIC + struct.pack("<I", len(blob)) + blob + bytes(raw[offset:]))
    with pytest.raises(PlanError, match="truncated") as err:
        load_packed(bad, model)
    assert str(bad) in str(err.value)


def test_packed_file_for_another_model_is_refused_naming_the_mismatch(packed) -> None:
    model, _, path = packed
    wider = _net(width=8)  # same layer names, other shapes
    with pytest.raises(PlanError, match="does not fit this model") as err:
        load_packed(path, wider)
    msg = str(err.value)
    assert str(path) in msg and "0.weight: [6, 1, 3, 3] in the file, [8, 1, 3, 3] in the model" in msg

    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(64, 4)

        def forward(self, x):
            return self.body(x.flatten(1))

    with pytest.raises(PlanError, match="does not fit this model") as err:
        load_packed(path, Other())
    msg = str(err.value)
    assert str(path) in msg and "packed from a Sequential, this model is a" in msg and "Other" in msg


def test_packed_file_without_recorded_hash_still_loads_and_is_checked(packed) -> None:
    """Files written before the hash was recorded: loaded, still checked by length and shapes."""
    model, q, path = packed
    header, offset = read_header(path)
    payload = path.read_bytes()[offset:]
    for k in ("payload_sha256", "payload_bytes", "model_class", "signature"):
        header.pop(k)
    blob = zlib.compress(json.dumps(header).encode())
    old = path.with_name("old.wbq")
    old.write_bytes(MAGIC + struct.pack("<I", len(blob)) + blob + payload)
    x = _batches()[0][0]
    with pytest.raises(PlanError, match="older, unsigned format.*trust_old_files=True"):
        load_packed(old, model)  # unsigned: refused unless the user trusts old files
    with torch.no_grad():
        assert torch.equal(load_packed(old, model, trust_old_files=True)(x), q(x))
    old.write_bytes(MAGIC + struct.pack("<I", len(blob)) + blob + payload[:-3])
    with pytest.raises(PlanError, match="truncated"):
        load_packed(old, model, trust_old_files=True)
    with pytest.raises(PlanError, match="does not fit"):
        load_packed(path, _net(width=8))
