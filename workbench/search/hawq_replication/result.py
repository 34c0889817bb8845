"""The result of a replication: :class:`HawqReplication`, its tables and their JSON form."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from workbench.search.hawq_replication.config import ReplicationConfig
from workbench.search.hawq_replication.inputs import REFERENCE_SOURCE


@dataclass
class HawqReplication:
    """Result of :func:`run_replication`.

    ``rows``: one per (model, constraint, alpha): limit, bits (list per layer), bits_str, n_4bit, objective,
    size (MB), bops (millions), latency_ms, cost (in the constraint's units), status, and the published
    allocation's reference_bits, matches_reference, differing_layers, reference_objective, reference_cost,
    reference_feasible, reference_on_front (whether no plan is at most as costly and strictly better).
    ``verification``: per row the ILP objective and each independent exact method's optimum.
    ``fronts``: per (model, constraint) the front sizes and normalised hypervolumes (exact front, ILP sweep,
    search). ``search_vs_ilp``: per row the search's best objective within the limit. ``points``: the fronts'
    points per model and constraint. ``notes``: plain-language findings."""

    config: ReplicationConfig
    rows: pd.DataFrame
    verification: pd.DataFrame
    fronts: pd.DataFrame
    search_vs_ilp: pd.DataFrame
    points: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = field(repr=False)
    notes: list[str]
    seconds: float

    def table(self) -> pd.DataFrame:
        """Short readable table of the allocations."""
        cols = ["model", "constraint", "alpha", "limit", "bits_str", "n_4bit", "matches_reference", "objective",
                "size", "bops", "latency_ms"]  # fmt: skip
        return self.rows[cols]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": "HAWQ-V3 (Yao, Dong et al., ICML 2021), Zhen-Dong/HAWQ ILP.ipynb inputs",
            "reference_source": REFERENCE_SOURCE,
            "config": self.config.to_dict(),
            "rows": _records(self.rows),
            "verification": _records(self.verification),
            "fronts": _records(self.fronts),
            "search_vs_ilp": _records(self.search_vs_ilp),
            "points": self.points,
            "notes": list(self.notes),
            "seconds": self.seconds,
        }


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for rec in df.to_dict(orient="records"):
        out.append({k: _plain(v) for k, v in rec.items()})
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v
