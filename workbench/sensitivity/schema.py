"""Column schemas of the tidy sensitivity tables and the valid row kinds, metric kinds, probe granularities
and data splits (the table schema is described in :mod:`workbench.sensitivity`)."""

from __future__ import annotations

TABLE_COLUMNS = ["layer", "op_type", "depth", "metric", "kind", "granularity", "w_bits", "a_bits", "value"]
CHANNEL_COLUMNS = ["layer", "channel", "metric", "w_bits", "value"]
LAYER_COLUMNS = [
    "layer", "op_type", "depth", "params", "weight_params", "out_channels", "macs",
    "hessian_trace", "hessian_trace_per_param", "hutchinson_iters", "fisher",
]  # fmt: skip
COST_BENEFIT_COLUMNS = [
    "layer", "op_type", "depth", "granularity", "w_bits", "metric", "sensitivity",
    "bytes_saved", "bops_saved", "ratio", "bops_ratio", "rank",
]  # fmt: skip

ROW_KINDS: tuple[str, ...] = ("weight", "activation", "layer")
METRIC_KINDS: tuple[str, ...] = ("probe", *ROW_KINDS)
PROBE_GRANULARITIES: tuple[str, ...] = ("per_tensor", "per_channel")
SPLITS: tuple[str, ...] = ("calib", "val")
FLOAT_BITS = 32
