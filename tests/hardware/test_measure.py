"""Pure helpers of the kernel measurement: the cost-line fit, merged curves, fit entries, config validation, and
the work counted for each grid shape (the timed values themselves are never asserted)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.hardware import measure
from workbench.hardware.measure import MeasureConfig, _entry, _merge_points, fit_cost_line


@pytest.mark.parametrize(("overhead", "rate"), [(20e-6, 5e9), (1e-3, 1e11), (0.0, 3e8)])
def test_fit_cost_line_recovers_known_overhead_and_rate(overhead, rate):
    work = np.array([1e4, 3e5, 2e6, 7e6, 5e7])
    seconds = overhead + work / rate
    got_rate, got_overhead, r2 = fit_cost_line(work, seconds)
    assert got_rate == pytest.approx(rate, rel=1e-9)
    assert got_overhead == pytest.approx(overhead, rel=1e-9, abs=1e-9 * seconds.min())
    assert got_overhead >= 0.0
    assert r2 == pytest.approx(1.0, abs=1e-12)


def test_fit_cost_line_never_returns_a_negative_overhead():
    work = np.array([1e6, 2e6, 4e6, 8e6])
    seconds = work / 1e9 - 5e-4  # a negative intercept: refitted through the origin
    rate, overhead, r2 = fit_cost_line(work, seconds)
    assert overhead == 0.0
    # the through-origin relative least squares: 1 / rate = sum(w / t) / sum((w / t)^2)
    u = work / seconds
    assert rate == pytest.approx(float(np.sum(u**2) / np.sum(u)), rel=1e-12)
    assert r2 < 1.0


def test_fit_cost_line_r2_drops_with_noise():
    work = np.array([1e5, 1e6, 1e7, 1e8])
    clean = 1e-5 + work / 1e9
    noisy = clean * np.array([1.5, 0.6, 1.4, 0.7])
    assert fit_cost_line(work, clean)[2] > fit_cost_line(work, noisy)[2]


def test_merge_points_sorts_and_averages_equal_work():
    merged = _merge_points([(2, 1.0), (1.0, 3.0), (2.0, 3.0), (5, 0.5)])
    assert merged == ((1.0, 3.0), (2.0, 2.0), (5.0, 0.5))
    assert all(isinstance(w, float) and isinstance(t, float) for w, t in merged)
    assert _merge_points([]) == ()


def test_entry_carries_the_fit_and_points():
    pts = [(1e6, 10e-6 + 1e6 / 1e9), (4e6, 10e-6 + 4e6 / 1e9), (1e6, 10e-6 + 1e6 / 1e9)]
    cost, fit = _entry(pts, note="k")
    assert cost.macs_per_s == pytest.approx(1e9, rel=1e-9)
    assert cost.overhead_us == pytest.approx(10.0, rel=1e-9)
    assert cost.source == "measured" and cost.note.startswith("k; least-squares fit over 3 shapes")
    assert cost.curve == ((1e6, pts[0][1]), (4e6, pts[1][1]))
    assert fit["points"] == [[w, s] for w, s in pts] and fit["r2"] == pytest.approx(1.0)


@pytest.mark.parametrize("key", ["batch_size", "repeats", "bandwidth_mb"])
@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_measure_config_rejects_bad_counts(key, bad):
    with pytest.raises(ValueError, match=f"{key} must be an integer >= 1, got {bad!r}"):
        MeasureConfig(**{key: bad})


@pytest.mark.parametrize("bad", [0, True, 2.0])
def test_measure_config_rejects_bad_threads(bad):
    with pytest.raises(ValueError, match=f"threads must be None or an integer >= 1, got {bad!r}"):
        MeasureConfig(threads=bad)


@pytest.mark.parametrize("bad", ["", "a b", "a/b", "x.y"])
def test_measure_config_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="must be letters, digits"):
        MeasureConfig(name=bad)


def test_measure_config_accepts_valid_values():
    cfg = MeasureConfig(name="my-cpu_2", threads=1, repeats=1, warmup=0, batch_size=1, bandwidth_mb=1)
    assert (cfg.name, cfg.threads, cfg.warmup) == ("my-cpu_2", 1, 0)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch.ao deprecation notices
def test_grid_points_count_the_exact_work():
    """One tiny shape per kernel family: the work of each point is its MAC / element count."""
    cfg = MeasureConfig(repeats=1, warmup=0)
    engine = torch.backends.quantized.engine
    try:
        conv = measure._conv_points(((4, 8, 6, 3, 2),), 2, cfg, depthwise=False)
        dw = measure._conv_points(((4, 5),), 2, cfg, depthwise=True)
        lin, _ = measure._linear_points(((16, 3),), 2, cfg)
        el, conversion = measure._elementwise_points((64,), 2, cfg)
    finally:
        torch.backends.quantized.engine = engine
    # conv 4 -> 8, 6x6 stride 2 padding 1 -> 3x3 outputs: 2 * 8 * 3 * 3 outputs of 4 * 3 * 3 MACs each
    assert {p: [w for w, _ in v] for p, v in conv.items()} == {
        k: [2 * 8 * 9 * 36.0] for k in ("fp32", "bf16", "int8")
    }
    # depthwise 4 channels 5x5: 2 * 4 * 25 outputs of 3 * 3 MACs each
    assert all([w for w, _ in v] == [2 * 4 * 25 * 9.0] for v in dw.values())
    assert all([w for w, _ in v] == [2 * 16 * 3.0] for v in lin.values())
    assert all([w for w, _ in v] == [128.0] for v in el.values()) and [w for w, _ in conversion] == [128.0]
    for v in (*conv.values(), *dw.values(), *lin.values(), *el.values()):
        assert all(t > 0 for _, t in v)


def test_bandwidth_is_positive_on_a_small_copy():
    assert measure.measure_bandwidth_gbps(1, repeats=1) > 0
