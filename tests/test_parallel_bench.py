"""bench/parallel_bench.py: run statistics, summaries, speed-ups and the section from fake timings; one small real
run of every setting on digits_cnn (2 spawned workers share one sqlite study and its evaluation cache)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


pb = _load("parallel_bench", ROOT / "bench" / "parallel_bench.py")


def _trials(rows):
    cols = ["trial", "plan_key", "real_eval", "cache_hit", "worker"]
    return pd.DataFrame([dict(zip(cols, r, strict=True)) for r in rows])


def test_run_stats_counts_measurements_and_shared_cache_hits():
    t = _trials(
        [
            (0, "a", 1, False, 0),
            (1, "b", 1, False, 1),
            (2, "a", 0, True, 1),  # worker 1 asks for worker 0's plan: served from the shared cache
            (3, "b", 0, True, 1),  # its own plan again
            (4, "c", 1, False, 0),
            (5, "c", 1, False, 1),  # measured by both workers at once
        ]
    )
    s = pb.run_stats(t)
    assert s["trials"] == 6 and s["real_evaluations"] == 4
    assert s["distinct_measured"] == 3 and s["measured_twice"] == 1
    assert s["cache_hits"] == 2 and s["cross_worker_hits"] == 1
    assert s["evals_per_worker"] == {"0": 2, "1": 2}
    empty = pb.run_stats(pd.DataFrame())
    assert empty["real_evaluations"] == 0 and empty["cache_hits"] == 0


def _run(rep, setting, wall, span, evals=24, **kw):
    workers = 2 if setting == pb.PAR else 1
    threads = 2 if setting == pb.BASE_2T else 1
    return {"repeat": rep, "setting": setting, "workers": workers, "threads": threads, "wall_s": wall,
            "span_s": span, "real_evaluations": evals, "trials": evals + 1, "distinct_measured": evals,
            "measured_twice": 0, "cache_hits": 1, "cross_worker_hits": 0, "hypervolume": 0.5, **kw}  # fmt: skip


FAKE = [
    _run(0, pb.BASE, 40.0, 38.0),
    _run(0, pb.BASE_2T, 32.0, 30.0),
    _run(0, pb.PAR, 25.0, 20.0, evals=25, cross_worker_hits=1),
    _run(1, pb.BASE_2T, 34.0, 32.0),
    _run(1, pb.PAR, 20.0, 16.0),
    _run(1, pb.BASE, 44.0, 42.0),
]


def test_speedups_pair_runs_of_the_same_repeat():
    s = pb.speedup(FAKE, pb.BASE, pb.PAR)
    assert s["repeats"] == 2
    assert s["wall"]["min"] == pytest.approx(40 / 25) and s["wall"]["max"] == pytest.approx(44 / 20)
    assert s["wall"]["median"] == pytest.approx((40 / 25 + 44 / 20) / 2)
    # throughput discounts the extra trial past the budget: (25/25) / (24/40) in repeat 0
    assert s["throughput"]["min"] == pytest.approx((25 / 25) / (24 / 40))
    assert s["span"]["max"] == pytest.approx(42 / 16)
    vs2 = pb.speedup(FAKE, pb.BASE_2T, pb.PAR)
    assert vs2["wall"]["median"] == pytest.approx((32 / 25 + 34 / 20) / 2)
    assert pb.speedup(FAKE, pb.BASE, pb.PAR_PG) is None
    assert (
        pb.speedup([r for r in FAKE if r["repeat"] == 1 or r["setting"] != pb.PAR], pb.BASE, pb.PAR)[
            "repeats"
        ]
        == 1
    )


def test_summary_rows_and_section_render():
    rows = pb.summarise(FAKE)
    assert [r["setting"] for r in rows] == [pb.BASE, pb.BASE_2T, pb.PAR]  # first-seen order
    par = rows[2]
    assert par["wall_s"] == {"median": 22.5, "min": 20.0, "max": 25.0}
    assert par["real_evaluations"] == {"median": 24.5, "min": 24.0, "max": 25.0}
    assert par["evals_per_s"] == pytest.approx((25 / 25 + 24 / 20) / 2)
    assert par["overhead_s"] == pytest.approx(4.5) and par["cross_worker_hits"] == 0.5
    speedups = [
        pb.speedup(FAKE, a, b) for a, b in ((pb.BASE, pb.PAR), (pb.BASE_2T, pb.PAR), (pb.BASE, pb.BASE_2T))
    ]
    meta = {"command": "python bench/parallel_bench.py", "total_s": 300.0, "cpu": "test cpu", "cores": 2,
            "date_utc": "2026-01-01 00:00", "model": "digits_resnet", "strategy": "tpe", "budget": 24, "seed": 0,
            "repeats": 2, "main_threads": 1, "notes": pb.notes_for(rows, speedups)}  # fmt: skip
    lines = pb.section(rows, speedups, meta)
    text = "\n".join(lines)
    assert lines[0] == pb.HEADING and not any(line.startswith("## ") for line in lines[1:])
    assert "`python bench/parallel_bench.py`" in text and "2 cores" in text
    table = [line for line in lines if line.startswith(f"| {pb.PAR} |")]
    assert len(table) == 1 and "| 22.5 | 20.0 | 25.0 |" in table[0] and "24 (24-25)" in table[0]
    assert f"| {pb.PAR} vs {pb.BASE} | 2 | 1.90x | 1.60x | 2.20x |" in text
    prose = " ".join(line.strip() for line in lines)  # notes are wrapped
    assert "2 workers x 1 thread vs 1 worker x 2 threads (both use 2 cores): 1.49x" in prose
    assert all(len(line) <= 110 for line in lines if not line.startswith("|"))
    # every table row has as many cells as its header
    for block in (pb.md_table(rows), pb.speedup_lines(speedups)):
        assert len({line.count("|") for line in block}) == 1


def test_rotation_changes_who_runs_first():
    order = [pb.rotated(pb.SETTINGS, r)[0].label for r in range(3)]
    assert sorted(order) == sorted(s.label for s in pb.SETTINGS)


@pytest.mark.slow
def test_real_run_two_workers_share_the_study_and_cache(tmp_path, one_torch_thread):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    out = tmp_path / "parallel.json"
    pb.main(
        ["--model", "digits_cnn", "--budget", "4", "--repeats", "1", "--out", str(doc), "--json", str(out)]
    )
    d = json.loads(out.read_text())
    runs = {r["setting"]: r for r in d["runs"]}
    assert set(runs) == {pb.BASE, pb.BASE_2T, pb.PAR}
    par = runs[pb.PAR]
    assert par["workers"] == 2 and set(par["evals_per_worker"]) <= {"0", "1"}
    # (on digits_cnn a measurement takes ~0.05 s: the worker that starts first may do them all)
    assert sum(par["evals_per_worker"].values()) == par["real_evaluations"]
    assert par["measured_twice"] == 0  # the shared cache: no plan measured by both workers
    assert par["distinct_measured"] == par["real_evaluations"]
    # the budget counts real evaluations across workers; a worker that started its trial while the other one
    # finished the last evaluation of the budget completes it (at most workers - 1 past the budget)
    assert 4 <= par["real_evaluations"] <= 5
    for label in (pb.BASE, pb.BASE_2T):
        assert runs[label]["real_evaluations"] == 4 and runs[label]["measured_twice"] == 0
    assert {s["other"] for s in d["speedups"]} == {pb.PAR, pb.BASE_2T}
    text = doc.read_text()
    assert pb.HEADING in text and "kept" in text
    assert d["meta"]["command"] == "python bench/parallel_bench.py --model digits_cnn --budget 4 --repeats 1"


def test_break_even_budget():
    def row(span, evals, overhead):
        return {"span_s": {"median": span}, "real_evaluations": {"median": evals}, "overhead_s": overhead}

    # 1 s per evaluation against 0.5 s, 6 s more fixed cost: 2 workers win past 12 evaluations
    assert pb.break_even(row(24.0, 24, 1.0), row(12.0, 24, 7.0)) == pytest.approx(12.0)
    assert pb.break_even(row(24.0, 24, 1.0), row(24.0, 24, 7.0)) == float("inf")
    assert pb.break_even(row(24.0, 24, 7.0), row(12.0, 24, 1.0)) is None  # no extra fixed cost
    assert pb.break_even(None, row(12.0, 24, 7.0)) is None
