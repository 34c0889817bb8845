"""The plan dataset's cache file: its key (:func:`dataset_key`) and its JSON lines, each with a checksum over
its fields and the key; read back checked, appended to line by line, rewritten atomically."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from workbench._common.io import atomic_write_text
from workbench._common.signed import TRUST_ENV, sign_bytes, trusting_old_files
from workbench.quant.inputs import input_tensors
from workbench.tasks.task import TaskLike, check_task

if TYPE_CHECKING:
    from workbench.predictor.config import PlanDatasetConfig


CACHE_VERSION = 1  # bump when measure_plan changes what it records
_LINE_KIND = "plan-dataset-line"


def _model_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _code_fingerprint() -> str:
    """Hash of the quantization core's source (``workbench/quant/*.py``) and :data:`CACHE_VERSION`: a change
    to how plans are quantized or summarized gets a fresh cache instead of stale measurements."""
    import workbench.quant
    from workbench._common.hashing import code_fingerprint

    return code_fingerprint(f"predictor-cache-v{CACHE_VERSION}", workbench.quant)


def dataset_key(task: TaskLike, config: PlanDatasetConfig, *, fingerprint: str | None = None) -> str:
    """Cache key of a plan dataset: a hash of the model state, the task name, the calibration data, the
    split's data, the measurement settings (split, granularity, the task's ``output_key`` when set) and the
    quantization code (see :func:`_code_fingerprint`). Plan counts and the seed are left out on purpose: a cache
    file holds measured plans by plan id, so a bigger or differently seeded build reuses them."""
    task = check_task(task, need=("model", "calib_loader", "loader"))
    if fingerprint is None:
        fingerprint = _logits_free_fingerprint(task.loader(config.split))
    calib = _logits_free_fingerprint(task.calib_loader)
    h = hashlib.sha256()
    parts = (_code_fingerprint(), _model_hash(task.model), task.name, calib, fingerprint, config.split)
    output_key = task.output_key
    extra = () if output_key is None else (f"output_key={output_key!r}",)  # None keeps earlier keys
    for part in (*parts, config.granularity, *extra):
        h.update(str(part).encode())
        h.update(b"\0")
    return f"{task.name}-{h.hexdigest()[:16]}"


def _logits_free_fingerprint(loader: Iterable) -> str:
    """Hash of every tensor of every batch (dicts and nested tuples included; a tensor or an ``(x, y)`` batch of
    tensors hashes as it always did)."""
    h = hashlib.sha256()
    for batch in loader:
        for _, t in input_tensors(batch):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _line_text(record: Mapping[str, Any], key: Any) -> bytes:
    body = {k: v for k, v in record.items() if k != "sha"}
    return f"{key}\0{json.dumps(body, sort_keys=True, separators=(',', ':'))}".encode()


def _line_sha(record: Mapping[str, Any], key: Any) -> str:
    """Signature of one cache line: an HMAC under this installation's key (:mod:`workbench._common.signed`) of
    its fields (``sha`` left out) and the cache key of the file it belongs to, so an edited line (even with a
    recomputed plain hash), or one copied from another model's or config's file, no longer matches."""
    return sign_bytes(_line_text(record, key), kind=_LINE_KIND)[:16]


def _plain_line_sha(record: Mapping[str, Any], key: Any) -> str:
    """The unkeyed checksum lines carried before signatures (recognised to name the older format)."""
    return hashlib.sha256(_line_text(record, key)).hexdigest()[:16]


def _line_problem(record: Mapping[str, Any], key: Any, *, old_file: bool) -> str | None:
    """None when the line's ``sha`` is its signature (or, in a file of the older format that the user trusts,
    its plain checksum); else why it is left out. A plain checksum in a signed file is an edit."""
    if record.get("sha") == _line_sha(record, key):
        return None
    if old_file and record.get("sha") == _plain_line_sha(record, key):
        if trusting_old_files():
            return None
        return f"in the older, unsigned format (accept it once with --trust-old-files or {TRUST_ENV}=1)"
    return "fails its checksum (edited, or from another file)"


def _signed(record: Mapping[str, Any], key: Any) -> dict[str, Any]:
    return {**record, "sha": _line_sha(record, key)}


@dataclass
class _CacheContents:
    """What :func:`_read_cache` found: the header, plan_id -> record (a later record of a plan wins), the raw
    lines worth keeping, and ``problems``: (line number, why) of every line left out."""

    header: dict[str, Any] | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    good_lines: list[str] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)
    bad_header: str | None = None

    def describe_problems(self, limit: int = 5) -> str:
        shown = "; ".join(f"line {n}: {why}" for n, why in self.problems[:limit])
        more = len(self.problems) - limit
        return shown + (f"; and {more} more" if more > 0 else "")


def _read_cache(path: Path) -> _CacheContents:
    """Every line of a cache file, checked. A line that is not JSON (a write cut short), not a record, or whose
    checksum (``sha``, see :func:`_line_sha`) does not match is left out and named in ``problems``. Files written
    before signatures (plain checksums, or none: a header without ``checksums``) are refused unless old files
    are trusted (``WORKBENCH_TRUST_OLD_FILES=1``); a signed record is always checked."""
    out = _CacheContents()
    if not path.is_file():
        return out
    with path.open(encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            out.problems.append((number, "cut short or not JSON"))
            continue
        if not isinstance(rec, dict) or rec.get("type") not in ("header", "plan"):
            out.problems.append((number, "not a header or plan record"))
            continue
        if rec["type"] == "header":
            if out.header is not None or out.bad_header is not None:
                out.problems.append((number, "a second header"))
            elif "sha" in rec and (why := _line_problem(rec, rec.get("key"), old_file=True)):
                out.bad_header = f"line {number} {why}"
            elif rec.get("checksums") and "sha" not in rec:
                out.bad_header = f"line {number} has lost its checksum (edited)"
            elif "sha" not in rec and not trusting_old_files():
                out.bad_header = (
                    f"line {number} is in the older, unsigned format (accept it once with --trust-old-files "
                    f"or {TRUST_ENV}=1)"
                )
            else:
                out.header = rec
                out.good_lines.append(line)
            continue
        if out.header is None:
            out.problems.append((number, "a plan record before the header"))
            continue
        if (
            "plan_id" not in rec
            or not isinstance(rec.get("w_bits"), list)
            or not isinstance(rec.get("a_bits"), list)
        ):
            out.problems.append((number, "a plan record without plan_id / w_bits / a_bits"))
            continue
        if "sha" in rec:
            old_file = out.header.get("sha") != _line_sha(out.header, out.header.get("key"))
            if why := _line_problem(rec, out.header.get("key"), old_file=old_file):
                out.problems.append((number, f"plan {rec['plan_id']} {why}"))
                continue
        elif out.header.get("checksums"):
            out.problems.append((number, f"plan {rec['plan_id']} has no checksum (edited)"))
            continue
        out.records[rec["plan_id"]] = rec
        out.good_lines.append(line)
    return out


def _rewrite_cache(path: Path, lines: Sequence[str]) -> None:
    """Replace ``path`` with ``lines`` atomically (a temporary file renamed over it)."""
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))


class _CacheWriter:
    """Appends JSON lines to the cache file, flushed and fsynced one by one."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.is_file() or path.stat().st_size == 0
        self._f = path.open("a", encoding="utf-8")
        if not fresh:
            with path.open("rb") as r:
                r.seek(-1, 2)
                if r.read(1) != b"\n":  # a line cut short by an interruption: start a new one
                    self._f.write("\n")
        if fresh:
            self.write(header)

    def write(self, record: Mapping[str, Any]) -> None:
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()
