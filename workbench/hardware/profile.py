"""PrecisionProfile: what a hardware target can run, and how fast; parsed from validated JSON and found by name.

The schema (op types, precisions, cost entries, field checks) is :mod:`workbench.hardware.profile_schema`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench._common.strict_json import DuplicateKeyError, loads_strict
from workbench.hardware.profile_schema import (
    _BIT_SERIAL_KEYS,
    _CONVERSION_KEYS,
    _ENTRY_KEYS,
    _MEMORY_KEYS,
    _TOP_KEYS,
    COST_MODELS,
    FLOAT_PRECISIONS,
    INT_PRECISION_BITS,
    KINDS,
    OPS,
    PRECISIONS,
    PROFILE_DIR,
    SCHEMA_VERSION,
    BitSerialSpec,
    ConversionSpec,
    MemorySpec,
    OpCost,
    ProfileError,
    _choices,
    _curve,
    _known_keys,
    _num,
    _obj,
    _req,
    _source,
    _str,
)


@dataclass(frozen=True)
class PrecisionProfile:
    """A hardware target's precision profile (see the module docstring for the JSON schema)."""

    name: str
    kind: str
    device: str
    description: str
    ops: dict[str, dict[str, OpCost]]
    memory: MemorySpec
    sources: dict[str, str]
    cost_model: str = "table"
    batch_size: int = 1
    conversion: ConversionSpec | None = None
    bit_serial: BitSerialSpec | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    # -- queries ------------------------------------------------------------------------------------------
    def precisions(self, op: str) -> tuple[str, ...]:
        """Precisions the target runs ``op`` at (for bit-serial targets: every int width up to ``max_bits``)."""
        self._check_op(op)
        names = tuple(self.ops.get(op, {}))
        if self.bit_serial is not None and f"int{self.bit_serial.brick_bits}" in names:
            ints = tuple(p for p in INT_PRECISION_BITS if INT_PRECISION_BITS[p] <= self.bit_serial.max_bits)
            names = tuple(dict.fromkeys(names + ints))
        order = {p: i for i, p in enumerate(PRECISIONS)}
        return tuple(sorted(names, key=lambda p: order[p]))

    def has(self, op: str, precision: str) -> bool:
        return precision in self.precisions(op)

    def int_precisions(self, op: str) -> list[int]:
        """Integer bit widths with a kernel for ``op``, ascending."""
        return sorted(INT_PRECISION_BITS[p] for p in self.precisions(op) if p in INT_PRECISION_BITS)

    def op_cost(
        self, op: str, precision: str, *, w_bits: int | None = None, a_bits: int | None = None
    ) -> OpCost:
        """The :class:`OpCost` of ``op`` at ``precision``. On a bit-serial target an integer MAC of ``w_bits`` x
        ``a_bits`` costs ``bricks`` brick MACs (throughput divided, energy multiplied)."""
        self._check_op(op)
        if self.bit_serial is not None and precision in INT_PRECISION_BITS:
            brick = f"int{self.bit_serial.brick_bits}"
            base = self.ops.get(op, {}).get(brick)
            if base is not None:
                bits = INT_PRECISION_BITS[precision]
                if op == "elementwise":  # bandwidth-like: scales with the width, not with w x a
                    n = math.ceil(bits / self.bit_serial.brick_bits)
                else:
                    n = self.bit_serial.bricks(w_bits or bits, a_bits or bits)
                return OpCost(
                    macs_per_s=base.macs_per_s / n,
                    overhead_us=base.overhead_us,
                    energy_pj_per_mac=None if base.energy_pj_per_mac is None else base.energy_pj_per_mac * n,
                    source=base.source,
                    note=f"{n} x {brick} bricks",
                )
        try:
            return self.ops[op][precision]
        except KeyError:
            raise ProfileError(
                f"profile {self.name!r} has no {precision!r} kernel for {op!r}; it has {_choices(self.precisions(op))}"
            ) from None

    def _check_op(self, op: str) -> None:
        if op not in OPS:
            raise ProfileError(f"unknown op type {op!r}; valid op types: {_choices(OPS)}")

    # -- JSON -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "kind": self.kind,
            "device": self.device,
            "description": self.description,
            "cost_model": self.cost_model,
            "batch_size": self.batch_size,
            "memory": self.memory.to_dict(),
            "ops": {op: {p: c.to_dict() for p, c in table.items()} for op, table in self.ops.items()},
        }
        if self.conversion is not None:
            d["conversion"] = self.conversion.to_dict()
        if self.bit_serial is not None:
            d["bit_serial"] = self.bit_serial.to_dict()
        if self.meta:
            d["meta"] = self.meta
        d["sources"] = dict(self.sources)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "profile") -> PrecisionProfile:
        try:
            return _parse(d, where)
        except RecursionError:  # a deeply nested value where a field was expected: its repr overflows
            raise ProfileError(f"{where} is nested too deeply to be a precision profile") from None

    @classmethod
    def load(cls, path: str | Path) -> PrecisionProfile:
        """A profile from a JSON file; any file that is missing, unreadable, not UTF-8 JSON or not a valid
        profile raises :class:`ProfileError` naming the file (and the field)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ProfileError(f"profile file {path} does not exist") from None
        except IsADirectoryError:
            raise ProfileError(f"profile file {path} is a directory, not a JSON file") from None
        except (OSError, ValueError) as e:  # permissions, a name too long, a NUL byte in the name ...
            raise ProfileError(
                f"profile file {path} cannot be read: {getattr(e, 'strerror', None) or e}"
            ) from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ProfileError(f"{path} is not a UTF-8 text file: {e}") from None
        try:
            data = loads_strict(text)
        except DuplicateKeyError as e:
            raise ProfileError(f"{path} is ambiguous: {e}") from None
        except json.JSONDecodeError as e:
            raise ProfileError(f"{path} is not valid JSON: {e}") from None
        except RecursionError:
            raise ProfileError(f"{path} is not valid JSON: nested too deeply") from None
        prof = cls.from_dict(data, where=str(path))
        object.__setattr__(prof, "path", str(path))
        return prof


def _parse(d: Any, where: str) -> PrecisionProfile:
    d = _obj(d, where)
    sources, kind, cost_model, batch = _parse_top(d, where)
    memory = _parse_memory(d, where, sources)
    ops = _parse_ops(d, where, sources)
    conversion = _parse_conversion(d, where, sources)
    bit_serial = _parse_bit_serial(d, where, sources, cost_model, ops)
    meta = d.get("meta", {})
    return PrecisionProfile(
        name=_str(d, "name", where),
        kind=kind,
        device=_str(d, "device", where),
        description=_str(d, "description", where, required=False),
        ops=ops,
        memory=memory,
        sources=dict(sources),
        cost_model=cost_model,
        batch_size=batch,
        conversion=conversion,
        bit_serial=bit_serial,
        meta=dict(_obj(meta, f"{where}.meta")),
    )


def _parse_top(d: Mapping[str, Any], where: str) -> tuple[Mapping[str, Any], str, str, int]:
    """Schema version, sources, kind, cost model and batch size of a profile dict."""
    _known_keys(d, _TOP_KEYS, where)
    version = d.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise ProfileError(
            f"{where}: schema_version={version!r} is not supported (this workbench reads {SCHEMA_VERSION})"
        )
    sources = _obj(_req(d, "sources", where), f"{where}.sources")
    for k, v in sources.items():
        if not isinstance(v, str) or not v.strip():
            raise ProfileError(f"{where}.sources[{k!r}] must be a non-empty citation string, got {v!r}")
    kind = _str(d, "kind", where)
    if kind not in KINDS:
        raise ProfileError(f"{where}.kind={kind!r} is not valid; choose one of {_choices(KINDS)}")
    cost_model = d.get("cost_model", "table")
    if cost_model not in COST_MODELS:
        raise ProfileError(
            f"{where}.cost_model={cost_model!r} is not valid; choose one of {_choices(COST_MODELS)}"
        )
    batch = d.get("batch_size", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ProfileError(f"{where}.batch_size must be a positive integer, got {batch!r}")
    return sources, kind, cost_model, batch


def _parse_memory(d: Mapping[str, Any], where: str, sources: Mapping[str, str]) -> MemorySpec:
    mem = _obj(_req(d, "memory", where), f"{where}.memory")
    _known_keys(mem, _MEMORY_KEYS, f"{where}.memory")
    return MemorySpec(
        bandwidth_gbps=_num(
            _req(mem, "bandwidth_gbps", f"{where}.memory"), f"{where}.memory.bandwidth_gbps", positive=True
        ),
        energy_pj_per_byte=_num(
            mem.get("energy_pj_per_byte"), f"{where}.memory.energy_pj_per_byte", nullable=True
        ),
        source=_source(mem, f"{where}.memory", sources),
        note=_str(mem, "note", f"{where}.memory", required=False),
    )


def _parse_ops(d: Mapping[str, Any], where: str, sources: Mapping[str, str]) -> dict[str, dict[str, OpCost]]:
    ops_in = _obj(_req(d, "ops", where), f"{where}.ops")
    ops: dict[str, dict[str, OpCost]] = {}
    for op, table in ops_in.items():
        if op not in OPS:
            raise ProfileError(f"{where}.ops has unknown op type {op!r}; valid op types: {_choices(OPS)}")
        table = _obj(table, f"{where}.ops.{op}")
        ops[op] = {}
        for prec, entry in table.items():
            w = f"{where}.ops.{op}.{prec}"
            if prec not in PRECISIONS:
                raise ProfileError(
                    f"{w}: unknown precision {prec!r}; valid precisions: {_choices(PRECISIONS)}"
                )
            entry = _obj(entry, w)
            _known_keys(entry, _ENTRY_KEYS, w)
            ops[op][prec] = OpCost(
                macs_per_s=_num(_req(entry, "macs_per_s", w), f"{w}.macs_per_s", positive=True),
                overhead_us=_num(entry.get("overhead_us", 0.0), f"{w}.overhead_us"),
                energy_pj_per_mac=_num(
                    entry.get("energy_pj_per_mac"), f"{w}.energy_pj_per_mac", nullable=True
                ),
                source=_source(entry, w, sources),
                note=_str(entry, "note", w, required=False),
                curve=_curve(entry.get("curve"), f"{w}.curve"),
            )
    missing = [op for op in ("conv", "linear") if not ops.get(op)]
    if missing:
        raise ProfileError(
            f"{where}.ops needs at least one precision for {_choices(missing)} (has {_choices(ops)})"
        )

    return ops


def _parse_conversion(d: Mapping[str, Any], where: str, sources: Mapping[str, str]) -> ConversionSpec | None:
    conversion = None
    if d.get("conversion") is not None:
        c = _obj(d["conversion"], f"{where}.conversion")
        _known_keys(c, _CONVERSION_KEYS, f"{where}.conversion")
        conversion = ConversionSpec(
            elements_per_s=_num(
                _req(c, "elements_per_s", f"{where}.conversion"),
                f"{where}.conversion.elements_per_s",
                positive=True,
            ),
            overhead_us=_num(c.get("overhead_us", 0.0), f"{where}.conversion.overhead_us"),
            source=_source(c, f"{where}.conversion", sources),
            note=_str(c, "note", f"{where}.conversion", required=False),
        )
    return conversion


def _parse_bit_serial(
    d: Mapping[str, Any], where: str, sources: Mapping[str, str], cost_model: str, ops: Mapping[str, Any]
) -> BitSerialSpec | None:
    bit_serial = None
    if cost_model == "bit_serial":
        b = _obj(_req(d, "bit_serial", where), f"{where}.bit_serial")
        _known_keys(b, _BIT_SERIAL_KEYS, f"{where}.bit_serial")
        brick = b.get("brick_bits", 2)
        max_bits = b.get("max_bits", 8)
        for key, value in (("brick_bits", brick), ("max_bits", max_bits)):
            if isinstance(value, bool) or not isinstance(value, int) or value not in (2, 4, 8):
                raise ProfileError(f"{where}.bit_serial.{key}={value!r} must be one of 2, 4, 8")
        bit_serial = BitSerialSpec(brick, max_bits, _source(b, f"{where}.bit_serial", sources))
        if f"int{brick}" not in ops["conv"]:
            raise ProfileError(
                f"{where}.bit_serial.brick_bits={brick!r} needs ops.conv.int{brick} (the brick rate)"
            )
    elif d.get("bit_serial") is not None:
        raise ProfileError(
            f"{where}.bit_serial is only used with cost_model 'bit_serial' (got {cost_model!r})"
        )

    return bit_serial


# ============================================================================================ lookup


def user_profile_dir() -> Path:
    """``data/profiles``: where ``python -m workbench hardware --measure`` writes profiles by default."""
    from workbench.paths import data_dir

    return data_dir() / "profiles"


def _exists(path: Path) -> bool:
    """``path.exists()``, False for a name the file system refuses (too long, ...) instead of an OSError."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def available_profiles() -> list[str]:
    """Names of the profiles :func:`load_profile` finds: measured ones in ``data/profiles`` first, then the ones
    shipped with the package."""
    user = sorted(p.stem for p in user_profile_dir().glob("*.json")) if user_profile_dir().is_dir() else []
    shipped = sorted(p.stem for p in PROFILE_DIR.glob("*.json"))
    return list(dict.fromkeys(user + shipped))


def load_profile(name_or_path: str | Path | PrecisionProfile) -> PrecisionProfile:
    """A profile by path (``my.json``) or by name: ``data/profiles/<name>.json`` (measured on this machine by
    ``hardware --measure``) before the package's ``profiles/<name>.json``."""
    if isinstance(name_or_path, PrecisionProfile):
        return name_or_path
    if not isinstance(name_or_path, (str, Path)):
        raise ProfileError(
            f"profile must be a name, a path or a PrecisionProfile, got {type(name_or_path).__name__}"
        )
    text = str(name_or_path)
    path = Path(text)
    if path.suffix == ".json" or (text and _exists(path)):
        return PrecisionProfile.load(path)
    for folder in (user_profile_dir(), PROFILE_DIR):
        candidate = folder / f"{text}.json"
        if _exists(candidate):
            return PrecisionProfile.load(candidate)
    raise ProfileError(
        f"unknown profile {text!r}: give a path to a profile JSON file or one of {_choices(available_profiles())}"
    )


__all__ = [
    "BitSerialSpec",
    "COST_MODELS",
    "ConversionSpec",
    "FLOAT_PRECISIONS",
    "INT_PRECISION_BITS",
    "KINDS",
    "MemorySpec",
    "OPS",
    "OpCost",
    "PRECISIONS",
    "PROFILE_DIR",
    "PrecisionProfile",
    "ProfileError",
    "SCHEMA_VERSION",
    "available_profiles",
    "load_profile",
    "user_profile_dir",
]
