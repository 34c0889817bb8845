"""The result of a sensitivity analysis (:class:`SensitivityResult`): tidy tables, per-layer views and its JSON
file (tables, ``info``, cache key and the sha256 of that payload)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from workbench._common.io import atomic_write_text
from workbench._common.signed import check_signature, old_format_error, sign_bytes, trusting_old_files
from workbench.sensitivity.codec import (
    _canonical_json,
    _decode_frame,
    _encode_frame,
    _from_json_value,
    _to_json_value,
)
from workbench.sensitivity.schema import CHANNEL_COLUMNS

_RESULT_FORMAT = "workbench.sensitivity/2"  # /1 was a pickle: never read
_SIGNATURE_KIND = "sensitivity-result"


def _check_result_signature(path: Path, doc: dict, payload: Any, trust_old_files: bool | None) -> None:
    """The payload's signature under this installation's key (files without one: an older format)."""
    what = "sensitivity result"
    signature = doc.get("signature")
    if signature is None:
        if not trusting_old_files(trust_old_files):
            raise old_format_error(path, what)
        return
    check_signature(_canonical_json(payload).encode(), signature, kind=_SIGNATURE_KIND, path=path, what=what)


_RESULT_TABLES = ("table", "layers", "channels", "cost_benefit")


@dataclass(frozen=True, eq=False)
class SensitivityResult:
    """Sensitivity tables of one model.

    ``table``: tidy per-layer measurements (schema in the module docstring).
    ``layers``: one row per quantizable layer: layer, op_type, depth, params, macs, hessian_trace,
    hessian_trace_per_param, hutchinson_iters, fisher (and any other per-layer statistics).
    ``channels``: per-output-channel sensitivity (``CHANNEL_COLUMNS``).
    ``cost_benefit``: per (layer, w_bits): sensitivity, bytes and BOPs saved against the reference precision, ratio.
    """

    table: pd.DataFrame
    layers: pd.DataFrame
    channels: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CHANNEL_COLUMNS))
    cost_benefit: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers.sort_values("depth")["layer"])

    def metrics(self) -> list[str]:
        return sorted(self.table["metric"].unique())

    def matrix(
        self,
        metric: str,
        *,
        bits: Sequence[int] | None = None,
        kind: str = "weight",
        granularity: str = "per_channel",
    ) -> pd.DataFrame:
        """Layers (rows, forward order) x bits (columns) of one metric: w_bits for kind="weight", a_bits for
        kind="activation". Raises ValueError naming the valid metrics / bits when absent."""
        t = self.table
        if metric not in set(t["metric"]):
            raise ValueError(f"metric {metric!r} not in this result; available: {self.metrics()}")
        sel = t[(t["metric"] == metric) & (t["kind"] == kind)]
        if kind == "weight":
            sel = sel[sel["granularity"] == granularity]
        col = "w_bits" if kind == "weight" else "a_bits"
        if sel.empty:
            raise ValueError(f"no {kind} rows for metric {metric!r} with granularity {granularity!r}")
        wide = sel.pivot_table(index="layer", columns=col, values="value", aggfunc="mean")
        wide = wide.reindex(self.layer_names)
        if bits is not None:
            missing = [b for b in bits if b not in wide.columns]
            if missing:
                raise ValueError(
                    f"bits {missing} were not probed for {metric!r}; probed: {list(wide.columns)}"
                )
            wide = wide[list(bits)]
        return wide

    # -- per-layer views --------------------------------------------------------------------------------
    def metric_kinds(self, metric: str) -> list[str]:
        """Row kinds present for ``metric`` ("weight", "activation", "layer")."""
        if metric not in set(self.table["metric"]):
            raise ValueError(f"metric {metric!r} not in this result; available: {self.metrics()}")
        return sorted(self.table.loc[self.table["metric"] == metric, "kind"].unique())

    def layer_values(
        self,
        metric: str,
        *,
        bits: int | None = None,
        kind: str | None = None,
        granularity: str = "per_channel",
    ) -> pd.Series:
        """One value per layer (forward order) of ``metric`` at ``bits``.

        ``kind`` defaults to the metric's only row kind, else "weight". Precision-free metrics (kind "layer",
        e.g. ``fisher``, ``hessian_trace``) ignore ``bits``; the others need it.
        """
        kinds = self.metric_kinds(metric)
        if kind is None:
            kind = kinds[0] if len(kinds) == 1 else "weight"
        if kind not in kinds:
            raise ValueError(f"metric {metric!r} has no {kind!r} rows; its kinds: {kinds}")
        if kind == "layer":
            wide = self.matrix(metric, kind="layer")
            return wide.iloc[:, 0].rename(metric)
        wide = self.matrix(metric, kind=kind, granularity=granularity)
        if bits is None:
            raise ValueError(f"metric {metric!r} ({kind}) needs bits; probed: {list(wide.columns)}")
        return self.matrix(metric, bits=[bits], kind=kind, granularity=granularity)[bits].rename(metric)

    def ranking(
        self,
        metric: str,
        *,
        bits: int | None = None,
        kind: str | None = None,
        granularity: str = "per_channel",
    ) -> pd.DataFrame:
        """Layers sorted from most to least sensitive by ``metric`` at ``bits``: layer, op_type, depth, value,
        rank (1 = most sensitive; ties share the lower rank). ``kind`` as in :meth:`layer_values`."""
        values = self.layer_values(metric, bits=bits, kind=kind, granularity=granularity)
        df = self.layers.set_index("layer")[["op_type", "depth"]].reindex(values.index)
        df["value"] = values.to_numpy()
        df = df.reset_index().rename(columns={"index": "layer"})
        df = df.sort_values(["value", "depth"], ascending=[False, True], kind="stable").reset_index(drop=True)
        df["rank"] = df["value"].rank(method="min", ascending=False).astype("Int64")
        return df

    # -- persistence ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the result to ``path``: one JSON file (the tables column by column with their dtypes, ``info``,
        the cache key, and the sha256 of that payload, checked by :meth:`load`); never a pickle. Refuses to
        replace an existing file unless ``overwrite``. Raises TypeError naming the entry when ``info`` holds a
        value JSON cannot represent."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        payload = {
            "key": self.info.get("cache_key"),
            "tables": {name: _encode_frame(getattr(self, name), name) for name in _RESULT_TABLES},
            "info": _to_json_value(self.info, "info"),
        }
        body = _canonical_json(payload)
        head = json.dumps(
            {
                "format": _RESULT_FORMAT,
                "sha256": hashlib.sha256(body.encode()).hexdigest(),
                "signature": sign_bytes(body.encode(), kind=_SIGNATURE_KIND),
            }
        )
        text = head[:-1] + ', "payload": ' + body + "}\n"
        atomic_write_text(path, text, mode=0o644)  # readers see the old file or the whole new one
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, key: str | None = None, trust_old_files: bool | None = None
    ) -> SensitivityResult:
        """Read a result written by :meth:`save`. Plain JSON is parsed; nothing in the file is executed.

        Raises ValueError naming ``path`` and the reason when the file is not such a result (a pickle of the old
        format is refused unread: unpickling can run code), is truncated or damaged, was edited (its sha256 does
        not match, or its signature under this installation's key does not: an edit with a recomputed sha256 is
        refused too, :class:`workbench._common.signed.UntrustedFileError`), or, with ``key``, holds another cache
        key (another model, config or calibration data). Files from before signatures are refused unless
        ``trust_old_files`` (or ``WORKBENCH_TRUST_OLD_FILES=1``).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sensitivity result file {path} does not exist")
        raw = path.read_bytes()
        if raw[:1] == b"\x80" or (path.suffix == ".pkl" and not raw.lstrip().startswith(b"{")):
            raise ValueError(
                f"{path} is not a sensitivity result written by SensitivityResult.save: it looks like a pickle "
                "(the format before workbench.sensitivity/2), and pickles are never loaded because unpickling "
                "can run code; recompute the result (analyze_sensitivity) and save it again"
            )
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ValueError(
                f"{path} is not a sensitivity result written by SensitivityResult.save (truncated or damaged: "
                f"not valid JSON, {e})"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != _RESULT_FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(
                f"{path} is not a sensitivity result written by SensitivityResult.save (format {found!r}, "
                f"expected {_RESULT_FORMAT!r})"
            )
        payload = doc.get("payload")
        try:
            digest = hashlib.sha256(_canonical_json(payload).encode()).hexdigest()
        except (ValueError, RecursionError) as e:
            raise ValueError(f"{path} is a damaged sensitivity result ({type(e).__name__}: {e})") from None
        if digest != doc.get("sha256"):
            raise ValueError(
                f"sensitivity result {path} failed its content check: the sha256 of its tables and info is "
                f"{digest[:16]}..., the file records {str(doc.get('sha256'))[:16]}... (edited or damaged); it is "
                "not used"
            )
        if not isinstance(payload, dict):
            raise ValueError(f"{path} is a damaged sensitivity result (its payload is not a JSON object)")
        if key is not None and payload.get("key") != key:
            raise ValueError(
                f"sensitivity result {path} holds the sensitivity of another model, config or calibration data "
                f"(cache key {payload.get('key')!r}, expected {key!r}); it is not used"
            )
        try:
            tables = {name: _decode_frame(payload["tables"][name]) for name in _RESULT_TABLES}
            info = _from_json_value(payload["info"])
            if not isinstance(info, dict):
                raise TypeError(f"info is a {type(info).__name__}, not a dict")
        except (KeyError, TypeError, ValueError, IndexError, RecursionError) as e:
            raise ValueError(f"{path} is a damaged sensitivity result ({type(e).__name__}: {e})") from None
        _check_result_signature(path, doc, payload, trust_old_files)  # parsed JSON only: nothing was executed
        return cls(info=info, **tables)
