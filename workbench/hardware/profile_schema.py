"""The profile schema: op types, precisions, the cost entries of a PrecisionProfile and their field checks.

PrecisionProfile: what a hardware target can run, and how fast, per operator type and precision.

A profile is plain JSON (never pickle), stored under ``workbench/hardware/profiles/`` for the shipped ones (reference
profiles from published figures, and the measured profile of the CPU the project was developed on), or anywhere
the user points to. Schema (``docs/PROFILES.md`` has the long form)::

    {"schema_version": 1, "name": "...", "kind": "measured" | "reference", "device": "...", "description": "...",
     "cost_model": "table" | "bit_serial", "batch_size": 32,
     "memory": {"bandwidth_gbps": 2039.0, "energy_pj_per_byte": null, "source": "id"},
     "ops": {"conv": {"int8": {"macs_per_s": 3.1e14, "overhead_us": 0.0, "energy_pj_per_mac": null,
                               "source": "id", "note": "..."}, ...}, "depthwise_conv": ..., "linear": ...,
             "elementwise": ...},
     "conversion": {"elements_per_s": ..., "overhead_us": ..., "source": "id"},      # optional
     "bit_serial": {"brick_bits": 2, "max_bits": 8, "source": "id"},                # bit_serial only
     "sources": {"id": "citation, URL"}}

``macs_per_s`` of the ``elementwise`` op counts elements per second. Every figure names its source.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
OPS: tuple[str, ...] = ("conv", "depthwise_conv", "linear", "elementwise")
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "int2")
INT_PRECISION_BITS: dict[str, int] = {"int8": 8, "int4": 4, "int2": 2}
FLOAT_PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16", "fp8")
KINDS: tuple[str, ...] = ("measured", "reference")
COST_MODELS: tuple[str, ...] = ("table", "bit_serial")
PROFILE_DIR = Path(__file__).with_name("profiles")


class ProfileError(ValueError):
    """A profile file or dict the workbench cannot use. The message names the file, the field and the valid
    choices."""


def _choices(values) -> str:
    return ", ".join(repr(v) for v in values)


@dataclass(frozen=True)
class OpCost:
    """Throughput of one operator type at one precision: ``macs_per_s`` (elements/s for elementwise), a fixed
    ``overhead_us`` per call, optional energy, and the id of the source of the figures.

    A measured entry may also carry ``curve``: the measured ``(work, seconds)`` points, sorted by work. Inside
    their range, time is interpolated between them on log-log axes (small kernels do not follow one straight
    line); outside it, the fitted line continues from the nearest end point. The curve is not forced to be
    monotone: a measured shape can be slower than a larger one (a 1-channel stem convolution on an int8 kernel),
    and the estimator's shapes are interpolated between the measured ones.
    """

    macs_per_s: float
    overhead_us: float = 0.0
    energy_pj_per_mac: float | None = None
    source: str = ""
    note: str = ""
    curve: tuple[tuple[float, float], ...] | None = None

    def seconds(self, macs: float) -> float:
        """Compute time of ``macs`` operations, fixed overhead included."""
        line = self.overhead_us * 1e-6 + macs / self.macs_per_s
        if not self.curve or macs <= 0:
            return line
        pts = self.curve
        if macs <= pts[0][0]:
            w0, t0 = pts[0]
            return min(t0, max(self.overhead_us * 1e-6, t0 - (w0 - macs) / self.macs_per_s, t0 * macs / w0))
        if macs >= pts[-1][0]:
            w1, t1 = pts[-1]
            return t1 + (macs - w1) / self.macs_per_s
        for (wa, ta), (wb, tb) in zip(pts, pts[1:], strict=False):
            if wa <= macs <= wb:
                if wb == wa:
                    return 0.5 * (ta + tb)
                f = (math.log(macs) - math.log(wa)) / (math.log(wb) - math.log(wa))
                return math.exp(math.log(ta) + f * (math.log(tb) - math.log(ta)))
        return line

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "macs_per_s": self.macs_per_s,
            "overhead_us": self.overhead_us,
            "energy_pj_per_mac": self.energy_pj_per_mac,
            "source": self.source,
        }
        if self.note:
            d["note"] = self.note
        if self.curve:
            d["curve"] = [list(p) for p in self.curve]
        return d


@dataclass(frozen=True)
class MemorySpec:
    bandwidth_gbps: float
    energy_pj_per_byte: float | None = None
    source: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "bandwidth_gbps": self.bandwidth_gbps,
            "energy_pj_per_byte": self.energy_pj_per_byte,
            "source": self.source,
        }
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class ConversionSpec:
    """Cost of converting a tensor between precisions (quantize / dequantize at a region boundary)."""

    elements_per_s: float
    overhead_us: float = 0.0
    source: str = ""
    note: str = ""

    def seconds(self, elements: float) -> float:
        return self.overhead_us * 1e-6 + elements / self.elements_per_s

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "elements_per_s": self.elements_per_s,
            "overhead_us": self.overhead_us,
            "source": self.source,
        }
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class BitSerialSpec:
    """Bit-serial / bit-fusion cost: a (w, a)-bit MAC takes ``ceil(w/b) * ceil(a/b)`` b-bit bricks; the op
    entries at precision ``int{b}`` give the brick rate."""

    brick_bits: int = 2
    max_bits: int = 8
    source: str = ""

    def bricks(self, w_bits: int, a_bits: int) -> int:
        b = self.brick_bits
        return math.ceil(w_bits / b) * math.ceil(a_bits / b)

    def to_dict(self) -> dict[str, Any]:
        return {"brick_bits": self.brick_bits, "max_bits": self.max_bits, "source": self.source}


# ============================================================================================ parsing


def _num(value: Any, where: str, *, positive: bool = False, nullable: bool = False) -> float | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise ProfileError(f"{where} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ProfileError(f"{where} must be > 0, got {value!r}")
    if value < 0:
        raise ProfileError(f"{where} must be >= 0, got {value!r}")
    return float(value)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (a JSON number with hundreds of digits)
        return False


def _curve(value: Any, where: str) -> tuple[tuple[float, float], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) < 2:
        raise ProfileError(f"{where} must be a list of at least two [work, seconds] pairs, got {value!r}")
    pts = []
    for i, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ProfileError(f"{where}[{i}] must be a [work, seconds] pair, got {pair!r}")
        pts.append(
            (
                _num(pair[0], f"{where}[{i}][0]", positive=True),
                _num(pair[1], f"{where}[{i}][1]", positive=True),
            )
        )
    return tuple(sorted(pts))


def _obj(d: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise ProfileError(f"{where} must be a JSON object, got {type(d).__name__}")
    return d


def _req(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ProfileError(
            f"{where} is missing the required field {key!r} (fields present: {_choices(list(d))})"
        )
    return d[key]


def _str(d: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = _req(d, key, where) if required else d.get(key, "")
    if not isinstance(value, str):
        raise ProfileError(f"{where}.{key} must be a string, got {value!r}")
    return value


def _source(d: Mapping[str, Any], where: str, sources: Mapping[str, str]) -> str:
    src = _str(d, "source", where)
    if src not in sources:
        raise ProfileError(
            f"{where}.source={src!r} is not in the profile's sources; known ids: {_choices(sources)}"
        )
    return src


_TOP_KEYS = ("schema_version", "name", "kind", "device", "description", "sources", "cost_model", "batch_size",
             "memory", "ops", "conversion", "bit_serial", "meta")  # fmt: skip
_MEMORY_KEYS = ("bandwidth_gbps", "energy_pj_per_byte", "source", "note")
_ENTRY_KEYS = ("macs_per_s", "overhead_us", "energy_pj_per_mac", "source", "note", "curve")
_CONVERSION_KEYS = ("elements_per_s", "overhead_us", "source", "note")
_BIT_SERIAL_KEYS = ("brick_bits", "max_bits", "source")


def _known_keys(d: Mapping[str, Any], valid: tuple[str, ...], where: str) -> None:
    """A key the format does not know (a typo such as ``overhead_usec``) is an error, never silently ignored."""
    unknown = [k for k in d if k not in valid]
    if unknown:
        raise ProfileError(
            f"{where} has unknown field(s) {_choices(unknown)}; valid fields: {_choices(valid)}"
        )
