"""Parallel plan evaluation: the same search with 1 and 2 worker processes on one Optuna study.

Each run is a fresh study in a fresh sqlite file (so the evaluation cache shared through the study's database
starts empty) under a temporary directory. Configurations, interleaved in every repeat (the order rotates):

* ``1 worker x 1 thread``: the search in this process, torch on 1 thread;
* ``1 worker x 2 threads``: the same, torch on 2 threads (the fair single-process baseline on 2 cores);
* ``2 workers x 1 thread``: two spawned worker processes on the study, torch on 1 thread each;
* with ``--postgres``: ``2 workers x 1 thread`` again on a throwaway local PostgreSQL server (a fresh database
  per run).

Writes the "## Parallel plan evaluation (workers on one study)" section of docs/BENCHMARKS.md (replacing it in
place; the rest of the file is kept) and bench/out/parallel.json. Run: ``python bench/parallel_bench.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.benchsuite import splice_section

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Parallel plan evaluation (workers on one study)"
BASE = "1 worker x 1 thread"
BASE_2T = "1 worker x 2 threads"
PAR = "2 workers x 1 thread"
PAR_PG = "2 workers x 1 thread, PostgreSQL"
WIDTH = 110  # prose line width in BENCHMARKS.md


@dataclass(frozen=True)
class Setting:
    """One configuration of the comparison: ``workers`` processes with ``threads`` torch threads each."""

    label: str
    workers: int
    threads: int
    backend: str = "sqlite"  # or "postgresql"


SETTINGS: tuple[Setting, ...] = (Setting(BASE, 1, 1), Setting(BASE_2T, 1, 2), Setting(PAR, 2, 1))


# ============================================================================================ pure helpers


def run_stats(trials: pd.DataFrame) -> dict[str, Any]:
    """What a finished search did, from its trials frame (``SearchResult.trials``): trials, real evaluations,
    distinct plans measured, plans measured more than once, cache hits (a plan served from the shared cache
    instead of measured again), cache hits on a plan another worker measured, real evaluations per worker."""
    if trials.empty:
        return {"trials": 0, "real_evaluations": 0, "distinct_measured": 0, "measured_twice": 0,
                "cache_hits": 0, "cross_worker_hits": 0, "evals_per_worker": {}}  # fmt: skip
    t = trials.sort_values("trial")
    measured = t[t["real_eval"] > 0]
    first_by = measured.drop_duplicates("plan_key").set_index("plan_key")["worker"]
    hits = t[t["cache_hit"].astype(bool)]
    cross = sum(
        1 for _, r in hits.iterrows() if r["plan_key"] in first_by and first_by[r["plan_key"]] != r["worker"]
    )
    per_worker = measured.groupby("worker")["real_eval"].sum()
    return {
        "trials": len(t),
        "real_evaluations": int(t["real_eval"].sum()),
        "distinct_measured": int(measured["plan_key"].nunique()),
        "measured_twice": int(len(measured) - measured["plan_key"].nunique()),
        "cache_hits": len(hits),
        "cross_worker_hits": int(cross),
        "evals_per_worker": {str(int(k)): int(v) for k, v in per_worker.items()},
    }


def rotated(settings: Sequence[Setting], repeat: int) -> list[Setting]:
    """The settings in the order of repeat ``repeat`` (rotated by one each repeat, so none always runs first)."""
    k = repeat % len(settings)
    return [*settings[k:], *settings[:k]]


def _mmm(values: Sequence[float]) -> dict[str, float]:
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def summarise(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting (in first-seen order) over its repeats: wall seconds (median / min / max), the trial
    span (first trial start to last trial end: the search itself, without setup or process start), real
    evaluations per second of wall time, and the run statistics (medians; plans measured twice: the sum)."""
    order: list[str] = []
    for r in runs:
        if r["setting"] not in order:
            order.append(r["setting"])
    rows = []
    for label in order:
        g = [r for r in runs if r["setting"] == label]
        rows.append(
            {
                "setting": label,
                "workers": g[0]["workers"],
                "threads": g[0]["threads"],
                "repeats": len(g),
                "wall_s": _mmm([r["wall_s"] for r in g]),
                "span_s": _mmm([r["span_s"] for r in g]),
                "overhead_s": float(statistics.median(r["wall_s"] - r["span_s"] for r in g)),
                "evals_per_s": float(statistics.median(r["real_evaluations"] / r["wall_s"] for r in g)),
                "real_evaluations": _mmm([r["real_evaluations"] for r in g]),
                "trials": float(statistics.median(r["trials"] for r in g)),
                "distinct_measured": float(statistics.median(r["distinct_measured"] for r in g)),
                "measured_twice": int(sum(r["measured_twice"] for r in g)),
                "cache_hits": float(statistics.median(r["cache_hits"] for r in g)),
                "cross_worker_hits": float(statistics.median(r["cross_worker_hits"] for r in g)),
                "hypervolume": float(statistics.median(r["hypervolume"] for r in g)),
            }
        )
    return rows


def speedup(runs: Sequence[dict[str, Any]], base: str, other: str) -> dict[str, Any] | None:
    """``other`` against ``base``, repeat by repeat (runs of the same repeat were measured side by side):
    wall-time ratio base / other and throughput ratio (real evaluations per second, which discounts a trial a
    second worker finishes past the budget), each as median / min / max; None when either is missing."""
    by = {(r["repeat"], r["setting"]): r for r in runs}
    reps = sorted({r["repeat"] for r in runs if (r["repeat"], base) in by and (r["repeat"], other) in by})
    if not reps:
        return None
    wall = [by[i, base]["wall_s"] / by[i, other]["wall_s"] for i in reps]
    thr = [
        (by[i, other]["real_evaluations"] / by[i, other]["wall_s"])
        / (by[i, base]["real_evaluations"] / by[i, base]["wall_s"])
        for i in reps
    ]
    span = [by[i, base]["span_s"] / by[i, other]["span_s"] for i in reps]
    return {"base": base, "other": other, "repeats": len(reps), "wall": _mmm(wall), "throughput": _mmm(thr),
            "span": _mmm(span)}  # fmt: skip


def _f(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def md_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    head = ["setting", "wall s (median)", "min", "max", "search span s (median)", "setup + start s",
            "real evals", "evals / s", "trials", "distinct plans measured", "measured twice", "cache hits",
            "of which another worker's plan", "hypervolume"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ev = r["real_evaluations"]
        evals = (
            f"{ev['median']:.0f}"
            if ev["min"] == ev["max"]
            else f"{ev['median']:.0f} ({ev['min']:.0f}-{ev['max']:.0f})"
        )
        cells = [r["setting"], _f(r["wall_s"]["median"]), _f(r["wall_s"]["min"]), _f(r["wall_s"]["max"]),
                 _f(r["span_s"]["median"]), _f(r["overhead_s"]), evals, _f(r["evals_per_s"], 2),
                 f"{r['trials']:.0f}", f"{r['distinct_measured']:.0f}", str(r["measured_twice"]),
                 f"{r['cache_hits']:g}", f"{r['cross_worker_hits']:g}", _f(r["hypervolume"], 3)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def speedup_lines(speedups: Sequence[dict[str, Any]]) -> list[str]:
    head = ["comparison", "repeats", "wall-time speed-up (median)", "min", "max", "throughput speed-up (median)",
            "search-span speed-up (median)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in speedups:
        w = s["wall"]
        cells = [f"{s['other']} vs {s['base']}", str(s["repeats"]), f"{w['median']:.2f}x", f"{w['min']:.2f}x",
                 f"{w['max']:.2f}x", f"{s['throughput']['median']:.2f}x", f"{s['span']['median']:.2f}x"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def section(
    rows: Sequence[dict[str, Any]], speedups: Sequence[dict[str, Any]], meta: dict[str, Any]
) -> list[str]:
    """The BENCHMARKS.md section: what was run, on what, the per-setting table and the speed-ups."""
    intro = (
        f"The same search ({meta['model']}, strategy {meta['strategy']}, measured accuracy on val, a budget of "
        f"{meta['budget']} real evaluations, seed {meta['seed']}; no final test-split pass, no tracking) with one "
        "worker in this process or with two worker processes spawned on one Optuna study. Every run gets a fresh "
        "study in a fresh sqlite file (PostgreSQL: a fresh database on a local throwaway server), so the "
        "evaluation cache shared through the study's database starts empty. `threads`: torch intra-op threads "
        "of each worker (`SearchConfig.worker_threads`); the calling process sets up at "
        f"{meta['main_threads']} thread(s). {meta['repeats']} repeat(s); in each, every setting runs once, side "
        "by side, in an order rotated every repeat (after one untimed warm-up search)."
    )
    legend = (
        "Wall: `run_search` end to end (setup: FP32 accuracy, space check; for 2 workers also starting two "
        "Python processes that import torch and load the task; then the trials). Search span: first trial start "
        "to last trial end in the study. Setup + start: wall minus search span. Real evals: distinct plans "
        "measured by the study (with 2 workers, one may finish the trial it has in flight when the other "
        "completes the budget). Cache hits: trials whose plan was already in the shared cache (asked twice), "
        "served without measuring; `of which another worker's plan`: the first measurement was by the other "
        "worker. Measured twice: plans measured by two workers at once (summed over repeats)."
    )
    speed = (
        "Speed-ups, repeat by repeat (ratios of runs measured side by side; throughput: real evaluations per "
        "second of wall time, so a trial finished past the budget does not count as speed):"
    )
    lines = [
        HEADING,
        "",
        *textwrap.wrap(
            f"Command: `{meta['command']}`; {meta['total_s']:.0f} s in all on this machine ({meta['cpu']}, "
            f"{meta['cores']} cores, {meta['date_utc']} UTC).",
            WIDTH,
        ),
        "",
        *textwrap.wrap(intro, WIDTH),
        "",
        *textwrap.wrap(legend, WIDTH),
        "",
        *md_table(rows),
        "",
        *textwrap.wrap(speed, WIDTH),
        "",
        *speedup_lines(speedups),
        "",
    ]
    notes = meta.get("notes") or []
    if notes:
        for n in notes:
            lines += textwrap.wrap(n, WIDTH, initial_indent="- ", subsequent_indent="  ")
        lines.append("")
    return lines


def notes_for(rows: Sequence[dict[str, Any]], speedups: Sequence[dict[str, Any]]) -> list[str]:
    """Plain-words findings from the numbers (nothing here is asserted in advance)."""
    by = {r["setting"]: r for r in rows}
    sp = {(s["base"], s["other"]): s for s in speedups}
    out = []
    s1 = sp.get((BASE, PAR))
    if s1:
        out.append(
            f"2 workers x 1 thread vs 1 worker x 1 thread: {s1['wall']['median']:.2f}x on wall time, "
            f"{s1['throughput']['median']:.2f}x in evaluations per second, {s1['span']['median']:.2f}x on the "
            "search span alone."
        )
    s2 = sp.get((BASE_2T, PAR))
    if s2:
        out.append(
            f"2 workers x 1 thread vs 1 worker x 2 threads (both use 2 cores): {s2['wall']['median']:.2f}x on "
            f"wall time, {s2['throughput']['median']:.2f}x in evaluations per second."
        )
    s3 = sp.get((BASE, BASE_2T))
    if s3:
        out.append(f"A second torch thread in one process: {s3['wall']['median']:.2f}x on wall time.")
    for base in (BASE, BASE_2T):
        b = break_even(by.get(base), by.get(PAR))
        if b is not None:
            out.append(
                f"Break-even against {base}: at the median per-evaluation times of the search span and the "
                f"median fixed costs, 2 workers win on wall time past about {b:.0f} real evaluations."
                if math.isfinite(b)
                else f"Against {base}, 2 workers evaluate no faster during the search span: no break-even."
            )
    if PAR in by:
        r = by[PAR]
        out.append(
            f"Shared cache with 2 workers: {r['measured_twice']} plan(s) measured twice over all repeats, "
            f"median {r['cache_hits']:g} cache hit(s) per run ({r['cross_worker_hits']:g} on the other worker's "
            f"plan); fixed cost of the parallel run (setup + process start + finish) {r['overhead_s']:.1f} s "
            f"against {by[BASE]['overhead_s']:.1f} s in one process."
            if BASE in by
            else f"Shared cache with 2 workers: {r['measured_twice']} plan(s) measured twice over all repeats."
        )
    return out


# ============================================================================================ measuring


def break_even(base: dict[str, Any] | None, par: dict[str, Any] | None) -> float | None:
    """The budget past which ``par`` beats ``base`` on wall time: extra fixed cost (setup, process start) over the
    seconds saved per real evaluation during the search span (summary rows); inf when none is saved, None when a
    row is missing or ``par`` has no extra fixed cost."""
    if base is None or par is None:
        return None
    per_base = base["span_s"]["median"] / max(base["real_evaluations"]["median"], 1)
    per_par = par["span_s"]["median"] / max(par["real_evaluations"]["median"], 1)
    extra = par["overhead_s"] - base["overhead_s"]
    if extra <= 0:
        return None
    saved = per_base - per_par
    return extra / saved if saved > 0 else math.inf


def _trial_span(storage: str, study_name: str) -> float:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    done = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    if not done:
        return 0.0
    start = min(t.datetime_start for t in done)
    end = max(t.datetime_complete for t in done)
    return (end - start).total_seconds()


def measure(
    task: Any, setting: Setting, *, storage: str, budget: int, strategy: str, seed: int,
    inputs: tuple[Any, Any] = (None, None),
) -> dict[str, Any]:  # fmt: skip
    """One search with ``setting`` on a fresh study in ``storage``; wall seconds and what it did. ``inputs``:
    the (sensitivity, predictor) the strategy needs (:func:`workbench.pipeline.prepare_search`)."""
    from workbench.search import SearchConfig, run_search

    name = "parallel"
    config = SearchConfig(strategy=strategy, budget=budget, seed=seed, storage=storage, study_name=name,
                          workers=setting.workers, worker_threads=setting.threads, final_split=None,
                          track=False, log_trials=False, progress=False)  # fmt: skip
    t0 = time.perf_counter()
    result = run_search(task, config, sensitivity=inputs[0], predictor=inputs[1])
    wall = time.perf_counter() - t0
    stats = run_stats(result.trials)
    assert stats["real_evaluations"] == result.real_evaluations
    return {
        "setting": setting.label,
        "workers": setting.workers,
        "threads": setting.threads,
        "backend": setting.backend,
        "wall_s": wall,
        "span_s": _trial_span(storage, name),
        "hypervolume": result.hypervolume,
        **stats,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"--postgres needs PostgreSQL's {name} (scripts/install-system-deps.sh installs it)")
    return path


@contextlib.contextmanager
def postgres_server() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields ``fresh_db(name) -> URL`` (a new, empty
    database each call); stopped and removed afterwards."""
    root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="wb-pg-bench-", dir="/tmp"))
    data, sock = base / "data", base / "sock"
    data.mkdir()
    sock.mkdir()
    prefix: list[str] = []
    if root:  # initdb refuses root
        for p in (base, data, sock):
            shutil.chown(p, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*prefix, _pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"
    subprocess.run([*prefix, _pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w",
                    "-t", "60", "start"], check=True, capture_output=True, timeout=90)  # fmt: skip

    def fresh_db(name: str) -> str:
        subprocess.run([_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                        f"create database {name}"], check=True, capture_output=True, timeout=60)  # fmt: skip
        return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{name}"

    try:
        yield fresh_db
    finally:
        subprocess.run([*prefix, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def run_benchmark(task: Any, *, budget: int, repeats: int, strategy: str, seed: int, postgres: bool = False,
                  log: Any = print) -> list[dict[str, Any]]:  # fmt: skip
    """Every setting ``repeats`` times, interleaved; one dict per run (see :func:`measure`)."""
    from workbench.pipeline import prepare_search
    from workbench.search import SearchConfig, run_search

    settings = list(SETTINGS) + ([Setting(PAR_PG, 2, 1, "postgresql")] if postgres else [])
    # one untimed warm-up in this process (first-call costs of the quantization and evaluation paths), after
    # the sensitivity result / predictor the strategy needs are built (untimed too)
    warm = SearchConfig(strategy=strategy, budget=2, seed=seed, storage=":memory:", final_split=None, track=False,
                        progress=False)  # fmt: skip
    inputs = prepare_search(task, warm)
    run_search(task, warm, sensitivity=inputs[0], predictor=inputs[1])
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        fresh_db = stack.enter_context(postgres_server()) if postgres else None
        for rep in range(repeats):
            for setting in rotated(settings, rep):
                with tempfile.TemporaryDirectory(prefix="wb-parallel-") as tmp:
                    if setting.backend == "postgresql":
                        assert fresh_db is not None
                        storage = fresh_db(f"parallel_r{rep}")
                    else:
                        storage = f"sqlite:///{tmp}/study.db"
                    row = measure(task, setting, storage=storage, budget=budget, strategy=strategy, seed=seed,
                                  inputs=inputs)  # fmt: skip
                row["repeat"] = rep
                runs.append(row)
                log(f"repeat {rep}: {setting.label}: {row['wall_s']:.1f} s, {row['real_evaluations']} real evals, "
                    f"{row['cache_hits']} cache hits, {row['measured_twice']} measured twice")  # fmt: skip
    return runs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="digits_resnet")
    parser.add_argument("--budget", type=int, default=64, help="real evaluations per search")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--strategy", default="tpe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this (calling) process")
    parser.add_argument("--postgres", action="store_true",
                        help="also run 2 workers on a throwaway local PostgreSQL server")  # fmt: skip
    parser.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    parser.add_argument("--json", default=str(ROOT / "bench" / "out" / "parallel.json"))
    args = parser.parse_args(argv)
    if args.budget < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--budget, --repeats and --threads must be >= 1")

    import optuna
    import torch

    from workbench.benchsuite import machine_info
    from workbench.tasks import load_task

    t_all = time.perf_counter()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = load_task(args.model, progress=False)
    runs = run_benchmark(task, budget=args.budget, repeats=args.repeats, strategy=args.strategy, seed=args.seed,
                         postgres=args.postgres)  # fmt: skip
    rows = summarise(runs)
    pairs = [(BASE, PAR), (BASE_2T, PAR), (BASE, BASE_2T)] + (
        [(BASE, PAR_PG), (PAR, PAR_PG)] if args.postgres else []
    )
    speedups = [s for s in (speedup(runs, a, b) for a, b in pairs) if s is not None]
    machine = machine_info()
    extra = "".join(
        f" --{flag} {value}"
        for flag, value, default in (
            ("model", args.model, "digits_resnet"),
            ("budget", args.budget, 24),
            ("repeats", args.repeats, 3),
            ("strategy", args.strategy, "tpe"),
            ("seed", args.seed, 0),
            ("threads", args.threads, 1),
        )  # fmt: skip
        if value != default
    )
    meta = {
        "command": f"python bench/parallel_bench.py{extra}{' --postgres' if args.postgres else ''}",
        "model": args.model,
        "strategy": args.strategy,
        "budget": args.budget,
        "seed": args.seed,
        "repeats": args.repeats,
        "main_threads": args.threads,
        "cpu": machine["cpu"],
        "cores": machine["cores"],
        "date_utc": machine["date_utc"],
        "total_s": time.perf_counter() - t_all,
        "notes": notes_for(rows, speedups),
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "machine": machine, "summary": rows, "speedups": speedups,
                               "runs": runs}, indent=1) + "\n")  # fmt: skip
    lines = section(rows, speedups, meta)
    splice_section(Path(args.out), HEADING, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
