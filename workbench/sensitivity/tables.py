"""Tidy DataFrame builders: the analysis tables from the metrics' outputs, the cost-benefit table and the rank
agreement of two metrics."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from workbench.quant.spec import INT_BITS, QuantSpec, layer_weight_storage_bits
from workbench.sensitivity.probes import SensitivityContext
from workbench.sensitivity.registry import MetricOutput
from workbench.sensitivity.result import SensitivityResult
from workbench.sensitivity.schema import CHANNEL_COLUMNS, COST_BENEFIT_COLUMNS, LAYER_COLUMNS, TABLE_COLUMNS


def cost_benefit_table(
    result: SensitivityResult,
    *,
    metric: str = "output_mse",
    reference_bits: int = 8,
    granularity: str = "per_channel",
    base_spec: QuantSpec | None = None,
    eps: float = 1e-12,
) -> pd.DataFrame:
    """Per (layer, w_bits < reference_bits): what lowering the layer's weights from ``reference_bits`` to
    ``w_bits`` saves against what it costs.

    ``sensitivity``: ``metric`` at (w_bits, granularity) (negative values count as 0); ``bytes_saved``: weight
    storage saved (packed codes + scales, :func:`workbench.quant.spec.layer_weight_storage_bits`);
    ``bops_saved``: MACs x (reference_bits - w_bits) x reference activation bits (``reference_bits``);
    ``ratio = bytes_saved / (sensitivity + eps)`` and ``bops_ratio`` likewise. Sorted by ratio (best first),
    with ``rank`` 1..n.
    """
    if reference_bits not in INT_BITS:
        raise ValueError(f"reference_bits={reference_bits!r} is not supported; valid bits: {list(INT_BITS)}")
    base = base_spec or QuantSpec()
    sens = result.matrix(metric, kind="weight", granularity=granularity)
    layers = result.layers.set_index("layer")
    rows = []
    for layer in sens.index:
        info = layers.loc[layer]
        out_ch = int(info["out_channels"])
        shape = (out_ch, int(info["weight_params"]) // out_ch)
        ref_spec = base.with_(
            w_bits=reference_bits, granularity=granularity, group_size=None, channel_bits=None
        )
        ref_storage = layer_weight_storage_bits(ref_spec, shape)
        for b in sens.columns:
            if b >= reference_bits or pd.isna(sens.loc[layer, b]):
                continue
            spec = ref_spec.with_(w_bits=int(b))
            bytes_saved = (ref_storage - layer_weight_storage_bits(spec, shape)) / 8
            bops_saved = int(info["macs"]) * (reference_bits - int(b)) * reference_bits
            s = max(float(sens.loc[layer, b]), 0.0)
            rows.append(
                {
                    "layer": layer,
                    "op_type": info["op_type"],
                    "depth": int(info["depth"]),
                    "granularity": granularity,
                    "w_bits": int(b),
                    "metric": metric,
                    "sensitivity": float(sens.loc[layer, b]),
                    "bytes_saved": float(bytes_saved),
                    "bops_saved": float(bops_saved),
                    "ratio": bytes_saved / (s + eps),
                    "bops_ratio": bops_saved / (s + eps),
                }
            )
    df = pd.DataFrame(rows, columns=COST_BENEFIT_COLUMNS[:-1])
    df = df.sort_values(["ratio", "depth", "w_bits"], ascending=[False, True, False], kind="stable")
    df = df.reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    return df


# --------------------------------------------------------------------------------------------- rank agreement


def rank_agreement(
    result: SensitivityResult,
    a: tuple[str, int | None] = ("omega", 4),
    b: tuple[str, int | None] = ("acc_drop", 4),
    *,
    granularity: str = "per_channel",
) -> dict[str, Any]:
    """Spearman and Kendall tau between two metrics' per-layer values, each given as ``(metric, bits)``
    (``bits`` None for precision-free metrics such as ``fisher``). Layers missing in either are dropped;
    a constant side gives NaN correlations."""
    from scipy import stats

    va = result.layer_values(a[0], bits=a[1], granularity=granularity)
    vb = result.layer_values(b[0], bits=b[1], granularity=granularity)
    both = pd.concat([va.rename("a"), vb.rename("b")], axis=1).dropna()
    out: dict[str, Any] = {"a": f"{a[0]}@{a[1]}", "b": f"{b[0]}@{b[1]}", "n_layers": len(both)}
    if len(both) < 2 or both["a"].nunique() < 2 or both["b"].nunique() < 2:
        return {
            **out,
            "spearman": math.nan,
            "spearman_p": math.nan,
            "kendall": math.nan,
            "kendall_p": math.nan,
        }
    sp = stats.spearmanr(both["a"], both["b"])
    kt = stats.kendalltau(both["a"], both["b"])
    return {
        **out,
        "spearman": float(sp.statistic),
        "spearman_p": float(sp.pvalue),
        "kendall": float(kt.statistic),
        "kendall_p": float(kt.pvalue),
    }


def _assemble(ctx: SensitivityContext, out: MetricOutput) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    by_name = {info.name: info for info in ctx.layers}
    table = pd.DataFrame(out.rows, columns=[c for c in TABLE_COLUMNS if c not in ("op_type", "depth")])
    unknown = sorted(set(table["layer"]) - set(by_name))
    if unknown:
        raise ValueError(f"metrics produced rows for unknown layers {unknown}")
    table["op_type"] = table["layer"].map(lambda n: by_name[n].op_type)
    table["depth"] = table["layer"].map(lambda n: by_name[n].depth).astype("int64")
    table = table[TABLE_COLUMNS].astype({"w_bits": "int64", "a_bits": "int64", "value": "float64"})
    table = table.sort_values(
        ["depth", "metric", "kind", "granularity", "w_bits", "a_bits"], kind="stable"
    ).reset_index(drop=True)

    layers = pd.DataFrame([asdict(info) for info in ctx.layers]).rename(columns={"name": "layer"})
    extra = pd.DataFrame.from_dict(out.layer_stats, orient="index")
    for col in LAYER_COLUMNS:
        if col not in layers.columns and col not in extra.columns:
            layers[col] = np.nan
    if not extra.empty:
        layers = layers.drop(columns=[c for c in extra.columns if c in layers.columns])
        layers = layers.join(extra, on="layer")
    ordered = LAYER_COLUMNS + [c for c in layers.columns if c not in LAYER_COLUMNS]
    layers = layers[ordered].sort_values("depth").reset_index(drop=True)
    if "hutchinson_iters" in layers and layers["hutchinson_iters"].notna().all():
        layers["hutchinson_iters"] = layers["hutchinson_iters"].astype("int64")

    channels = pd.DataFrame(out.channel_rows, columns=CHANNEL_COLUMNS)
    if not channels.empty:
        depth = channels["layer"].map(lambda n: by_name[n].depth)
        channels = (
            channels.assign(_d=depth)
            .sort_values(["_d", "metric", "w_bits", "channel"], kind="stable")
            .drop(columns="_d")
            .reset_index(drop=True)
            .astype({"channel": "int64", "w_bits": "int64", "value": "float64"})
        )
    return table, layers, channels
