"""HAWQ-V3 ILP inputs: the published per-layer arrays (``data/hawq_v3_ilp_inputs.json``), validated and put in
the notebook's units, and the bit allocations published with the paper."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODELS: tuple[str, ...] = ("ResNet18", "ResNet50")
CONSTRAINTS: tuple[str, ...] = ("size", "bops", "latency")
BITS: tuple[int, int] = (4, 8)
PAPER_ALPHAS: tuple[float, ...] = (0.25, 0.5, 0.75)
DEFAULT_DATA = Path(__file__).parent.with_name("data") / "hawq_v3_ilp_inputs.json"
_ARRAY_KEYS: tuple[str, ...] = (
    "Hutchinson_trace",
    "delta_weights_4bit_square",
    "delta_weights_8bit_square",
    "parameters",
    "bops",
    "latency_int4",
    "latency_int8",
)

REFERENCE_SOURCE = (
    "Zhen-Dong/HAWQ bit_config.py (commit 1616df69fdd99f100a8d8a6e78742e0a89292634; file last changed "
    "2020-12-14), entries bit_config_{resnet18,resnet50}_{modelsize,bops,latency}_{0.25,0.5,0.75}: weight bits "
    "of quant_convbn1/2(/3) and quant_identity_convbn per unit in stage order (activation bits equal them). "
    "ILP.ipynb itself has no stored outputs (none of its code cells was executed), so it shows no allocation."
)
PUBLISHED_ALLOCATIONS: dict[tuple[str, str, float], str] = {
    ("ResNet18", "size", 0.25): "8888888888888844444",
    ("ResNet18", "size", 0.5): "8888888888888884844",
    ("ResNet18", "size", 0.75): "8888888888888488884",
    ("ResNet18", "bops", 0.25): "8884848444444444444",
    ("ResNet18", "bops", 0.5): "8884888848884444444",
    ("ResNet18", "bops", 0.75): "8888888848888484884",
    ("ResNet18", "latency", 0.25): "8884848444444444444",
    ("ResNet18", "latency", 0.5): "8888848848884484844",
    ("ResNet18", "latency", 0.75): "8888888848888484884",
    ("ResNet50", "size", 0.25): "8888888888888888888888884888448448448444444484444844",
    ("ResNet50", "size", 0.5): "8888888888888888888888884888888448888488488488844844",
    ("ResNet50", "size", 0.75): "8888888888888888888888888888888888888888888488848848",
    ("ResNet50", "bops", 0.25): "8488448844848844444484484884444444444444448488844844",
    ("ResNet50", "bops", 0.5): "8888888848848884884484884888448448448448488488848848",
    ("ResNet50", "bops", 0.75): "8888888848888888888884884888888448488488488488888888",
    ("ResNet50", "latency", 0.25): "8888848844848844444484444844444444444448448488844844",
    ("ResNet50", "latency", 0.5): "8888888844848888884884884884448448448448448488848848",
    ("ResNet50", "latency", 0.75): "8888888848848888888884884888888488888488488488888888",
}
"""Bit allocations published with HAWQ-V3 (see :data:`REFERENCE_SOURCE`), one character per ILP layer."""


@dataclass(frozen=True, eq=False)
class HawqModel:
    """One model's ILP inputs in the notebook's units. Arrays ``[n]`` or ``[n, 2]`` (columns: 4, 8 bits)."""

    name: str
    trace: np.ndarray
    delta_sq: np.ndarray
    params_m: np.ndarray
    bops_m: np.ndarray
    latency_ms: np.ndarray
    ties: tuple[tuple[int, int], ...]

    @property
    def n_layers(self) -> int:
        return int(self.trace.shape[0])

    def sensitivity(self) -> np.ndarray:
        """``trace * ||dW||^2`` per layer and bit width, ``[n, 2]``."""
        return self.trace[:, None] * self.delta_sq

    def cost(self, constraint: str) -> np.ndarray:
        """Per-layer cost ``[n, 2]`` of ``constraint`` at 4 and 8 bits, in the notebook's units."""
        _check_choice(constraint, CONSTRAINTS, "constraint")
        if constraint == "size":
            return self.params_m[:, None] * np.array(BITS, dtype=np.float64)[None, :] / 8.0
        if constraint == "bops":
            return self.bops_m[:, None] / np.array([64.0, 16.0])[None, :]
        return self.latency_ms.copy()

    def groups(self) -> np.ndarray:
        """Merged-row index per layer: tied layers share a row; rows ordered by their first layer."""
        parent = list(range(self.n_layers))

        def root(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i

        for a, b in self.ties:
            ra, rb = root(a), root(b)
            parent[max(ra, rb)] = min(ra, rb)
        roots = [root(i) for i in range(self.n_layers)]
        order = {r: k for k, r in enumerate(sorted(set(roots)))}
        return np.array([order[r] for r in roots], dtype=np.int64)


def _check_choice(value: Any, valid: Sequence[Any], name: str) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {list(valid)}, got {value!r}")


def _unit_divisor(units: Mapping[str, str], key: str, model: str) -> float:
    """Divisor that takes the JSON's ``key`` values to the notebook's millions (``parameters`` / 2**20 as in
    the ResNet18 cell, ``bops`` / 1e6)."""
    text = str(units.get(key, ""))
    if text.startswith("count"):
        return float(2**20) if key == "parameters" else 1e6
    if text.startswith("millions"):
        return 1.0
    raise ValueError(f"{model}: units[{key!r}] must start with one of ['count', 'millions'], got {text!r}")


def load_raw(path: str | Path | None = None) -> dict[str, Any]:
    """The data file as parsed JSON (default: the copy shipped with the package)."""
    import json

    p = Path(path) if path is not None else DEFAULT_DATA
    if not p.is_file():
        raise FileNotFoundError(f"HAWQ-V3 ILP data file not found: {p}")
    return json.loads(p.read_text())


def _model_from_raw(name: str, raw: Mapping[str, Any]) -> HawqModel:
    missing = [k for k in (*_ARRAY_KEYS, "ties", "units") if k not in raw]
    if missing:
        raise ValueError(f"{name}: missing key(s) {missing}; expected {[*_ARRAY_KEYS, 'ties', 'units']}")
    arrays = {k: np.asarray(raw[k], dtype=np.float64) for k in _ARRAY_KEYS}
    n = arrays["Hutchinson_trace"].shape[0]
    for k, a in arrays.items():
        if a.shape != (n,):
            raise ValueError(f"{name}: {k} must be a list of {n} numbers, got shape {a.shape}")
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"{name}: {k} must hold finite numbers >= 0")
    ties = tuple((int(a), int(b)) for a, b in raw["ties"])
    bad = [t for t in ties if not (0 <= t[0] < n and 0 <= t[1] < n) or t[0] == t[1]]
    if bad:
        raise ValueError(f"{name}: ties must be pairs of distinct layer indices in [0, {n}), bad: {bad}")
    return HawqModel(
        name=name,
        trace=arrays["Hutchinson_trace"],
        delta_sq=np.stack([arrays["delta_weights_4bit_square"], arrays["delta_weights_8bit_square"]], axis=1),
        params_m=arrays["parameters"] / _unit_divisor(raw["units"], "parameters", name),
        bops_m=arrays["bops"] / _unit_divisor(raw["units"], "bops", name),
        latency_ms=np.stack([arrays["latency_int4"], arrays["latency_int8"]], axis=1),
        ties=ties,
    )


def load_hawq_inputs(path: str | Path | None = None) -> dict[str, HawqModel]:
    """Every model of the data file, validated, in the notebook's units."""
    raw = load_raw(path)
    models = raw.get("models")
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"the data file must hold a non-empty 'models' mapping, got {type(models).__name__}")
    return {name: _model_from_raw(name, m) for name, m in models.items()}
