# ruff: noqa: B023 - every lambda below is timed at once, inside its loop iteration
"""Measure this CPU's precision profile: real kernels over a grid of shapes, warm-up, medians, a fitted cost line.

For every op type and precision the kernels deployment uses are timed on a grid of shapes at one batch size:

- ``conv`` / ``depthwise_conv``: fp32 ``nn.Conv2d`` (channels-last, as deployed), bf16 (channels-last, bf16 weights and input),
  int8 ``torch.ao.nn.quantized.Conv2d`` on a quint8 input (x86 / onednn engine);
- ``linear``: fp32, bf16, int8 ``torch.ao.nn.quantized.Linear``;
- ``elementwise``: a residual add, fp32 / bf16 / int8 (``quantized::add``);
- conversion: ``quantize_per_tensor`` and ``dequantize``;
- memory bandwidth: a large tensor copy.

Each (op, precision) gets ``time = overhead + work / rate`` fitted by least squares on *relative* error (so small
and large shapes count alike); the profile stores ``rate`` as ``macs_per_s`` and ``overhead`` as ``overhead_us``,
with the fit's points and R^2 in ``meta``. The int4 weight-only CPU kernel (``_weight_int4pack_mm_for_cpu``) is
timed too where it exists and reported in ``meta.extra_kernels`` (deployment runs it for weight-only Linear
layers through :mod:`workbench.hardware.kernels`; the estimator does not price it yet).
"""

from __future__ import annotations

import copy
import datetime as _dt
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.hardware.profile import (
    ConversionSpec,
    MemorySpec,
    OpCost,
    PrecisionProfile,
)
from workbench.hardware.timing import cpu_has_vnni, cpu_name

# (in_channels, out_channels, spatial side, kernel, stride)
CONV_GRID_QUICK: tuple[tuple[int, int, int, int, int], ...] = (
    (16, 16, 16, 3, 1),
    (32, 32, 8, 3, 1),
    (64, 64, 4, 3, 1),
    (16, 32, 16, 1, 2),
    (64, 64, 16, 3, 1),
    (128, 128, 14, 3, 1),
)
CONV_GRID_FULL: tuple[tuple[int, int, int, int, int], ...] = CONV_GRID_QUICK + (
    (1, 16, 16, 3, 1),
    (32, 64, 16, 3, 2),
    (64, 64, 56, 3, 1),
    (128, 128, 28, 3, 1),
    (256, 256, 14, 3, 1),
    (512, 512, 7, 3, 1),
    (64, 128, 56, 1, 2),
    (3, 64, 224, 7, 2),
)
DW_GRID_QUICK: tuple[tuple[int, int], ...] = ((32, 16), (64, 8), (128, 14))
DW_GRID_FULL: tuple[tuple[int, int], ...] = DW_GRID_QUICK + ((32, 112), (96, 56), (256, 14), (512, 7))
LINEAR_GRID_QUICK: tuple[tuple[int, int], ...] = ((64, 10), (512, 128), (128, 10), (1024, 1024))
LINEAR_GRID_FULL: tuple[tuple[int, int], ...] = LINEAR_GRID_QUICK + ((512, 1000), (2048, 2048), (4096, 1024))
ELEMENTWISE_SIZES_QUICK: tuple[int, ...] = (1024, 4096, 16384, 65536)
ELEMENTWISE_SIZES_FULL: tuple[int, ...] = ELEMENTWISE_SIZES_QUICK + (262144, 802816)


@dataclass(frozen=True)
class MeasureConfig:
    """Knobs of :func:`measure_profile`. ``quick`` uses a small grid (about a minute on 2 cores)."""

    name: str = "cpu_measured"
    batch_size: int = 32
    threads: int | None = None
    repeats: int = 7
    warmup: int = 2
    engine: str = "x86"
    quick: bool = False
    bandwidth_mb: int = 256

    def __post_init__(self) -> None:
        for key in ("batch_size", "repeats", "bandwidth_mb"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {v!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads must be None or an integer >= 1, got {self.threads!r}")
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"name={self.name!r} must be letters, digits, '_' or '-'")


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def fit_cost_line(work: np.ndarray, seconds: np.ndarray) -> tuple[float, float, float]:
    """(rate per second, overhead seconds, R^2 of the times) of ``seconds = overhead + work / rate``, fitted by
    least squares on relative error with a non-negative overhead."""
    work = np.asarray(work, dtype=float)
    seconds = np.asarray(seconds, dtype=float)
    A = np.stack([np.ones_like(work), work], axis=1) / seconds[:, None]
    b = np.ones_like(work)
    (a0, b0), *_ = np.linalg.lstsq(A, b, rcond=None)
    if a0 < 0 or b0 <= 0:  # refit through the origin
        a0 = 0.0
        b0 = float(np.sum(work / seconds) / np.sum((work / seconds) ** 2))
    pred = a0 + b0 * work
    ss_res = float(np.sum((seconds - pred) ** 2))
    ss_tot = float(np.sum((seconds - seconds.mean()) ** 2)) or 1.0
    r2 = 1.0 - ss_res / ss_tot
    return 1.0 / b0, float(a0), r2


def _quantized_conv(conv: nn.Conv2d, engine: str) -> nn.Module:
    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    torch.backends.quantized.engine = engine
    qconfig = QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.quint8),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
    )
    float_mod = copy.deepcopy(conv)
    float_mod.qconfig = qconfig
    wobs = qconfig.weight()
    wobs(float_mod.weight)
    cls = torch.ao.nn.quantized.Conv2d if isinstance(conv, nn.Conv2d) else torch.ao.nn.quantized.Linear
    float_mod.activation_post_process = qconfig.activation()
    float_mod.activation_post_process(torch.randn(4, 4))
    return cls.from_float(float_mod)


def _conv_points(
    grid, B: int, cfg: MeasureConfig, *, depthwise: bool
) -> dict[str, list[tuple[float, float]]]:
    pts: dict[str, list[tuple[float, float]]] = {"fp32": [], "bf16": [], "int8": []}
    for spec in grid:
        if depthwise:
            c, hw = spec
            cin = cout = c
            k, stride, groups = 3, 1, c
        else:
            cin, cout, hw, k, stride = spec
            groups = 1
        conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups).eval()
        x = torch.randn(B, cin, hw, hw)
        with torch.no_grad():
            out = conv(x)
        macs = float(out.numel() * (cin // groups) * k * k)
        cl = copy.deepcopy(conv).to(memory_format=torch.channels_last)
        xcl = x.contiguous(memory_format=torch.channels_last)
        pts["fp32"].append((macs, _median_time(lambda: cl(xcl), cfg.repeats, cfg.warmup)))
        cb = copy.deepcopy(conv).to(torch.bfloat16).to(memory_format=torch.channels_last)
        xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        pts["bf16"].append((macs, _median_time(lambda: cb(xb), cfg.repeats, cfg.warmup)))
        qc = _quantized_conv(conv, cfg.engine)
        xq = torch.quantize_per_tensor(x.clamp(min=0), 0.02, 0, torch.quint8)
        pts["int8"].append((macs, _median_time(lambda: qc(xq), cfg.repeats, cfg.warmup)))
    return pts


def _linear_points(
    grid, B: int, cfg: MeasureConfig
) -> tuple[dict[str, list[tuple[float, float]]], list[dict]]:
    pts: dict[str, list[tuple[float, float]]] = {"fp32": [], "bf16": [], "int8": []}
    extra: list[dict] = []
    for fin, fout in grid:
        lin = nn.Linear(fin, fout).eval()
        x = torch.randn(B, fin)
        macs = float(B * fin * fout)
        pts["fp32"].append((macs, _median_time(lambda: lin(x), cfg.repeats, cfg.warmup)))
        lb = copy.deepcopy(lin).to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        pts["bf16"].append((macs, _median_time(lambda: lb(xb), cfg.repeats, cfg.warmup)))
        ql = _quantized_conv(lin, cfg.engine)
        xq = torch.quantize_per_tensor(x, 0.02, 128, torch.quint8)
        pts["int8"].append((macs, _median_time(lambda: ql(xq), cfg.repeats, cfg.warmup)))
        t4 = _int4_weight_only_time(fin, fout, xb, cfg)
        if t4 is not None:
            extra.append({"in_features": fin, "out_features": fout, "macs": macs, "seconds": t4})
    return pts, extra


def _int4_weight_only_time(fin: int, fout: int, xb: torch.Tensor, cfg: MeasureConfig) -> float | None:
    """The CPU int4 weight-only matmul (bf16 activations), where this torch build has it and the shape fits."""
    op_pack = getattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", None)
    op_mm = getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None)
    if op_pack is None or op_mm is None or fin % 128 or fout % 16:
        return None
    try:
        group = 128
        w = torch.randint(0, 16, (fout, fin), dtype=torch.int32)
        packed = op_pack(w, 1)
        sz = torch.ones(fin // group, fout, 2, dtype=torch.bfloat16)
        op_mm(xb, packed, group, sz)
        return _median_time(lambda: op_mm(xb, packed, group, sz), cfg.repeats, cfg.warmup)
    except Exception:  # noqa: BLE001 - kernel missing or shape unsupported in this build
        return None


def _elementwise_points(
    sizes, B: int, cfg: MeasureConfig
) -> tuple[dict[str, list[tuple[float, float]]], list[tuple[float, float]]]:
    pts: dict[str, list[tuple[float, float]]] = {"fp32": [], "bf16": [], "int8": []}
    conv_pts: list[tuple[float, float]] = []
    for n in sizes:
        a = torch.randn(B, n)
        b = torch.randn(B, n)
        el = float(B * n)
        pts["fp32"].append((el, _median_time(lambda: a + b, cfg.repeats, cfg.warmup)))
        ab, bb = a.to(torch.bfloat16), b.to(torch.bfloat16)
        pts["bf16"].append((el, _median_time(lambda: ab + bb, cfg.repeats, cfg.warmup)))
        qa = torch.quantize_per_tensor(a, 0.05, 128, torch.quint8)
        qb = torch.quantize_per_tensor(b, 0.05, 128, torch.quint8)
        pts["int8"].append(
            (el, _median_time(lambda: torch.ops.quantized.add(qa, qb, 0.1, 128), cfg.repeats, cfg.warmup))
        )
        tq = _median_time(
            lambda: torch.quantize_per_tensor(a, 0.05, 128, torch.quint8), cfg.repeats, cfg.warmup
        )
        tdq = _median_time(lambda: qa.dequantize(), cfg.repeats, cfg.warmup)
        conv_pts.append((el, 0.5 * (tq + tdq)))
    return pts, conv_pts


def measure_bandwidth_gbps(megabytes: int = 256, *, repeats: int = 5) -> float:
    """Copy bandwidth of main memory: bytes read + written per second by a tensor copy of ``megabytes``."""
    n = megabytes * 1024 * 1024 // 4
    src = torch.randn(n)
    dst = torch.empty_like(src)
    t = _median_time(lambda: dst.copy_(src), repeats, 1)
    return 2 * src.numel() * 4 / t / 1e9


def _merge_points(points: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Measured points sorted by work, shapes of equal work averaged."""
    by_work: dict[float, list[float]] = {}
    for w, t in points:
        by_work.setdefault(float(w), []).append(float(t))
    return tuple((w, float(np.mean(ts))) for w, ts in sorted(by_work.items()))


def _entry(points: list[tuple[float, float]], *, note: str) -> tuple[OpCost, dict[str, Any]]:
    work = np.array([p[0] for p in points])
    secs = np.array([p[1] for p in points])
    rate, overhead, r2 = fit_cost_line(work, secs)
    cost = OpCost(
        macs_per_s=float(rate),
        overhead_us=float(overhead * 1e6),
        energy_pj_per_mac=None,
        source="measured",
        note=f"{note}; least-squares fit over {len(points)} shapes, R^2={r2:.3f}; curve: the measured points",
        curve=_merge_points(points),
    )
    return cost, {"r2": r2, "points": [[float(w), float(s)] for w, s in points]}


def _step_points(
    step: str, B: int, cfg: MeasureConfig
) -> tuple[dict, dict[str, str], list[dict] | None, Any]:
    """(points per precision, a note per precision, int4 extra points, conversion points) of one op type."""
    if step in ("conv", "depthwise_conv"):
        depthwise = step == "depthwise_conv"
        grid = (
            (DW_GRID_QUICK if cfg.quick else DW_GRID_FULL)
            if depthwise
            else (CONV_GRID_QUICK if cfg.quick else CONV_GRID_FULL)
        )
        notes = {
            "fp32": "nn.Conv2d fp32, channels-last (as deployed)",
            "bf16": "nn.Conv2d bf16 weights and input, channels-last (casts excluded)",
            "int8": f"torch.ao quantized Conv2d, quint8 input, {cfg.engine} engine",
        }
        return _conv_points(grid, B, cfg, depthwise=depthwise), notes, None, None
    if step == "linear":
        pts, extra = _linear_points(LINEAR_GRID_QUICK if cfg.quick else LINEAR_GRID_FULL, B, cfg)
        notes = {
            "fp32": "nn.Linear fp32",
            "bf16": "nn.Linear bf16 weights and input",
            "int8": f"torch.ao quantized Linear, quint8 input, {cfg.engine} engine",
        }
        return pts, notes, extra, None
    pts, conv_pts = _elementwise_points(
        ELEMENTWISE_SIZES_QUICK if cfg.quick else ELEMENTWISE_SIZES_FULL, B, cfg
    )
    notes = {"fp32": "residual add fp32", "bf16": "residual add bf16", "int8": "quantized::add quint8"}
    return pts, notes, None, conv_pts


def _measure_ops(cfg: MeasureConfig, B: int, progress: bool) -> tuple[dict, dict, list[dict], Any, float]:
    """Every op type's fitted costs, the fits, the int4 extra points, the conversion points and the bandwidth;
    torch's threads and quantized engine are restored afterwards."""
    from tqdm.auto import tqdm

    previous_threads = torch.get_num_threads()
    previous_engine = torch.backends.quantized.engine
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    bar = tqdm(["conv", "depthwise_conv", "linear", "elementwise", "memory"], desc="measuring kernels",
               disable=not progress)  # fmt: skip
    ops: dict[str, dict[str, OpCost]] = {}
    fits: dict[str, Any] = {}
    extra: list[dict] = []
    conv_pts = None
    bandwidth = 0.0
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="torch.ao")
            torch.manual_seed(0)
            for step in bar:
                bar.set_postfix_str(step)
                if step == "memory":
                    bandwidth = measure_bandwidth_gbps(cfg.bandwidth_mb)
                    continue
                pts, notes, step_extra, step_conv = _step_points(step, B, cfg)
                extra = step_extra if step_extra is not None else extra
                conv_pts = step_conv if step_conv is not None else conv_pts
                ops[step] = {}
                for prec, p in pts.items():
                    ops[step][prec], fits[f"{step}.{prec}"] = _entry(p, note=notes[prec])
    finally:
        torch.set_num_threads(previous_threads)
        torch.backends.quantized.engine = previous_engine
    return ops, fits, extra, conv_pts, bandwidth


def _measured_meta(
    cfg: MeasureConfig, threads: int, now: str, fits: dict, extra: list[dict]
) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": threads,
        "engine": cfg.engine,
        "vnni": cpu_has_vnni(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "measured_at": now,
        "quick": cfg.quick,
        "fits": fits,
        "extra_kernels": {
            "linear_int4_weight_only_bf16": {
                "kernel": "aten._weight_int4pack_mm_for_cpu (group 128)",
                "points": extra,
                "macs_per_s": (
                    float(np.median([e["macs"] / e["seconds"] for e in extra])) if extra else None
                ),
                "note": "weight-only int4 with bf16 activations; not dispatched by deployment",
            }
        },
    }


def measure_profile(config: MeasureConfig | None = None, *, progress: bool = False) -> PrecisionProfile:
    """Benchmark the real kernels of this CPU and return a measured :class:`PrecisionProfile`."""
    cfg = config or MeasureConfig()
    previous_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    torch.set_num_threads(previous_threads)
    B = cfg.batch_size
    ops, fits, extra, conv_pts, bandwidth = _measure_ops(cfg, B, progress)
    conv_cost, conv_fit = _entry(conv_pts, note="mean of quantize_per_tensor and dequantize")
    fits["conversion"] = conv_fit
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu = cpu_name()
    source = (
        f"measured by `python -m workbench hardware --measure{' --quick' if cfg.quick else ''}` on {cpu} "
        f"({platform.machine()}, {threads} threads, {cfg.engine} engine, VNNI: {cpu_has_vnni()}), torch "
        f"{torch.__version__}, batch {B}, medians of {cfg.repeats} runs after {cfg.warmup} warm-up, {now}"
    )
    return PrecisionProfile(
        name=cfg.name,
        kind="measured",
        device=f"{cpu}, {threads} threads",
        description=(
            "Measured on this CPU: fp32 / bf16 / int8 (torch.ao) kernels timed over a grid of shapes, "
            "time = overhead + work / rate fitted per op and precision."
        ),
        ops=ops,
        memory=MemorySpec(
            bandwidth_gbps=float(bandwidth),
            energy_pj_per_byte=None,
            source="measured",
            note=f"copy of {cfg.bandwidth_mb} MB",
        ),
        sources={"measured": source},
        cost_model="table",
        batch_size=B,
        conversion=ConversionSpec(
            elements_per_s=conv_cost.macs_per_s,
            overhead_us=conv_cost.overhead_us,
            source="measured",
            note=conv_cost.note,
        ),
        meta=_measured_meta(cfg, threads, now, fits, extra),
    )
