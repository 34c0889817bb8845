"""Runtime adaptation on real kernels (issue 26): a deployed ladder served input by input on this CPU.

Candidates: QuantPlans of digits_resnet deployed once each (torch.ao int8 static, bf16, fp32 with baked weights).
Measured, serving the test split one input at a time (torch threads as set): per rung, median and p95 seconds per
input and accuracy; the cascade (fastest rung, escalating to the most accurate one on low margin, threshold
calibrated on the calibration split to a target agreement with it) beside the best static deployed plan; and a
competing CPU load (a bounded busy-loop process, started mid-stream) with the static best plan and
the managed runtime under a p95 target. Run through ``python bench/runtime_bench.py --deployed``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from workbench.quant.spec import QuantPlan
from workbench.runtime import (
    ConfidenceCascade,
    DeployedLadder,
    ManagedRuntime,
    SLOConfig,
    stack_inputs,
    stack_labels,
    stream_summary,
    stream_table,
)

CANDIDATES = {
    "fp32": None,
    "bf16": "uniform:w16a16",
    "int8 w8a8": "uniform:w8a8:per_channel",
    "int8 w4a8": "uniform:w4a8:per_channel",
    "fp32 w4 weight-only": "uniform:w4a32:per_channel",
}


def _plan(model, text: str | None) -> QuantPlan:
    return QuantPlan({}) if text is None else QuantPlan.from_shorthand(text, model)


def _serve(rt: ManagedRuntime, xs: torch.Tensor, ys: torch.Tensor) -> dict[str, Any]:
    items = list(rt.serve(xs))
    tab = stream_table(items)
    acc = float(np.mean([int(it.output.argmax()) == int(y) for it, y in zip(items, ys, strict=True)]))
    s = stream_summary(tab)
    return {
        "accuracy": acc,
        "median_ms": 1e3 * float(tab["seconds"].median()),
        "p95_ms": 1e3 * s["p95_s"],
        "mean_ms": 1e3 * s["mean_s"],
        "overhead_pct": 100 * float((tab["seconds"] - tab["inference_s"]).sum() / tab["inference_s"].sum()),
        "rungs": s["rungs"],
        "table": tab,
    }


def _repeated(rt: ManagedRuntime, xs: torch.Tensor, ys: torch.Tensor, repeats: int) -> dict[str, Any]:
    """A warm-up pass, then ``repeats`` passes over ``xs``: the median of each timing figure over the passes."""
    _serve(rt, xs[:64], ys[:64])
    runs = [_serve(rt, xs, ys) for _ in range(repeats)]
    out = {
        k: float(np.median([r[k] for r in runs])) for k in ("median_ms", "p95_ms", "mean_ms", "overhead_pct")
    }
    return {**runs[-1], **out, "repeats": repeats}


def measure_rungs(task, names: list[str], *, repeats: int = 3) -> tuple[DeployedLadder, list[dict[str, Any]]]:
    """Each candidate deployed and served alone on the test split: a warm-up pass each, then ``repeats`` rounds of
    one pass per rung (interleaved, so that a change of the machine's load hits every rung alike); medians."""
    ladder = DeployedLadder(
        task.model, [_plan(task.model, CANDIDATES[n]) for n in names], task.calib_loader, names=names
    )
    xs, ys = stack_inputs(task.test_loader), stack_labels(task.test_loader)
    rts = [ManagedRuntime(ladder, start=r) for r in range(len(ladder))]
    for rt in rts:
        _serve(rt, xs[:64], ys[:64])
    runs = [[_serve(rt, xs, ys) for rt in rts] for _ in range(repeats)]
    rows = []
    for r, name in enumerate(ladder.names):
        per = [round_[r] for round_ in runs]
        med = {
            k: float(np.median([p[k] for p in per]))
            for k in ("median_ms", "p95_ms", "mean_ms", "overhead_pct")
        }
        res = {**per[-1], **med, "repeats": repeats}
        res.pop("table")
        kernels = ladder.table()["kernels"][r]
        rows.append({"rung": name, "kernels": kernels, "fallback": ladder.rungs[r].fallback or "", **res})
    return ladder, rows


def cascade_row(
    task, ladder: DeployedLadder, *, target: float, min_escalation: float = 0.0, repeats: int = 3
) -> dict[str, Any]:
    """The cascade from rung 0 to the top rung, calibrated on the calibration split, served on the test split in
    rounds interleaved with the top rung alone (``paired_static_ms``: its median time in the same rounds)."""
    x_cal = stack_inputs(task.calib_loader)
    cas = ConfidenceCascade.calibrate(ladder, x_cal, target_agreement=target, min_escalation=min_escalation)
    xs, ys = stack_inputs(task.test_loader), stack_labels(task.test_loader)
    rts = [ManagedRuntime(ladder, cascade=cas), ManagedRuntime(ladder, start=len(ladder) - 1)]
    for rt in rts:
        _serve(rt, xs[:64], ys[:64])
    runs = [[_serve(rt, xs, ys) for rt in rts] for _ in range(repeats)]
    res = {**runs[-1][0]}
    for k in ("median_ms", "p95_ms", "mean_ms", "overhead_pct"):
        res[k] = float(np.median([r[0][k] for r in runs]))
    tab = res.pop("table")
    return {
        "rung": f"cascade {ladder.names[0]} -> {ladder.names[-1]} (margin, calib agreement >= {target}, "
        f"escalating >= {100 * min_escalation:g} %)",
        "kernels": "",
        "fallback": "",
        **res,
        "paired_static_ms": float(np.median([r[1]["median_ms"] for r in runs])),
        "escalated": float((tab["runs"] > 1).mean()),
        "calib_escalated": cas.calib_escalation,
        "calibration_s": cas.calibration_s,
        "threshold": cas.threshold,
    }


def _load(seconds: float, processes: int) -> list[subprocess.Popen]:
    """``processes`` bounded busy-loop processes, each ending by itself after ``seconds``."""
    code = f"import time\nt=time.time()\nwhile time.time()-t<{seconds}: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(processes)]


def loaded_stream(
    rt: ManagedRuntime, xs: torch.Tensor, ys: torch.Tensor, *, start: int, seconds: float, processes: int
) -> dict[str, Any]:
    """Serve ``xs`` in order; at item ``start`` the competing load begins (bounded: ``seconds``); per phase
    (before / during / after the load) the p95 and the rung mix."""
    procs: list[subprocess.Popen] = []
    phase = []

    def items():
        for i, x in enumerate(xs):
            if i == start:
                procs.extend(_load(seconds, processes))
            phase.append(
                "before" if not procs else ("during" if any(p.poll() is None for p in procs) else "after")
            )
            yield x

    try:
        out = list(rt.serve(items()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    tab = stream_table(out)
    tab["phase"] = phase
    tab["correct"] = [int(it.output.argmax()) == int(y) for it, y in zip(out, ys, strict=True)]
    res = {}
    for ph, g in tab.groupby("phase"):
        res[ph] = {
            "n": len(g),
            "p95_ms": 1e3 * float(g["seconds"].quantile(0.95)),
            "accuracy": float(g["correct"].mean()),
            "rungs": {int(k): int(v) for k, v in g["rung"].value_counts().sort_index().items()},
        }
    res["moves"] = [m for m in tab["move"] if m]
    return res


def run(
    task, *, target_agreement: float = 1.0, load_seconds: float = 4.0, load_processes: int = 1
) -> dict[str, Any]:
    """Every measurement of this module on ``task``: rungs, cascade, competing load (static vs managed)."""
    t0 = time.time()
    _, rows = measure_rungs(task, list(CANDIDATES))
    by_time = sorted(rows, key=lambda r: r["median_ms"])
    best = max(rows, key=lambda r: (r["accuracy"], -r["median_ms"]))  # the best static deployed plan
    # the managed ladder: the faster rungs, fastest first, up to the best static plan
    names = [r["rung"] for r in by_time if r["median_ms"] <= best["median_ms"]]
    ladder = DeployedLadder(
        task.model, [_plan(task.model, CANDIDATES[n]) for n in names], task.calib_loader, names=names
    )
    # the cascade: from the fastest other plan to the best one (slower than the best when no plan is faster)
    cheap = next(r["rung"] for r in by_time if r["rung"] != best["rung"])
    pair = [cheap, best["rung"]]
    cas_ladder = DeployedLadder(
        task.model, [_plan(task.model, CANDIDATES[n]) for n in pair], task.calib_loader, names=pair
    )
    cas = [cascade_row(task, cas_ladder, target=target_agreement, min_escalation=m) for m in (0.0, 0.05)]
    xs = stack_inputs(task.test_loader)
    ys = stack_labels(task.test_loader)
    xs, ys = torch.cat([xs, xs]), torch.cat([ys, ys])
    slo = SLOConfig(target_s=1.25 * best["p95_ms"] / 1e3, window=16, slack=0.6)
    static = ManagedRuntime(ladder, start=len(ladder) - 1)
    managed = ManagedRuntime(ladder, slo=slo)
    load = {
        "target_ms": 1e3 * slo.target_s,
        "static": loaded_stream(
            static, xs, ys, start=len(xs) // 3, seconds=load_seconds, processes=load_processes
        ),
        "managed": loaded_stream(
            managed, xs, ys, start=len(xs) // 3, seconds=load_seconds, processes=load_processes
        ),
    }
    return {
        "rows": rows,
        "best": best["rung"],
        "ladder": names,
        "cascade": cas,
        "load": load,
        "wall_s": time.time() - t0,
        "threads": torch.get_num_threads(),
    }


def _cascade_lines(res: dict[str, Any]) -> list[str]:
    """Each cascade against the best static plan measured in the same rounds: median time per input, accuracy."""
    best = next(r for r in res["rows"] if r["rung"] == res["best"])
    out = []
    for c in res["cascade"]:
        dt = 100 * (c["median_ms"] / c["paired_static_ms"] - 1)
        da = 100 * (c["accuracy"] - best["accuracy"])
        out.append(
            f"- {c['rung']}: median time per input {dt:+.1f} % against the best static plan served in the same "
            f"rounds ({c['paired_static_ms']:.3f} ms), accuracy {da:+.2f} pp."
        )
    out.append(
        "- `fp32` and `fp32 w4 weight-only` run the same float kernels on the same shapes (the 4-bit weights are "
        "baked into float32): a time difference between them is the noise of this shared machine."
    )
    return [*out, ""]


def _load_line(load: dict[str, Any]) -> str:
    """Static vs managed while the load ran: p95 against the target, and what the managed runtime gave up."""
    st, mg = load["static"].get("during"), load["managed"].get("during")
    if not (st and mg):
        return "The load did not overlap the stream."
    return (
        f"During the load: static p95 {st['p95_ms']:.2f} ms, managed {mg['p95_ms']:.2f} ms against the target "
        f"{load['target_ms']:.2f} ms; the managed runtime gave up {100 * (st['accuracy'] - mg['accuracy']):.2f} pp "
        f"of accuracy (rung mix {mg['rungs']} against {st['rungs']})."
    )


DEPLOYED_HEADING = "## Runtime adaptation on real kernels (deployed ladder, issue 26)"


def section(model: str, res: dict[str, Any], md_table, machine: str) -> list[str]:
    """The BENCHMARKS.md section of :func:`run`'s result (``md_table``: the bench suite's table writer)."""
    import pandas as pd

    keep = ["rung", "kernels", "accuracy", "median_ms", "p95_ms", "mean_ms", "overhead_pct"]
    rows = [{**{k: r[k] for k in keep}, "fallback / notes": r["fallback"]} for r in res["rows"]]
    for c in res["cascade"]:
        rows.append(
            {
                **{k: c[k] for k in keep},
                "fallback / notes": f"escalated {100 * c['escalated']:.1f} % (calibration "
                f"{100 * c['calib_escalated']:.1f} %), "
                f"calibration {c['calibration_s']:.2f} s, rungs {c['rungs']}",
            }
        )
    load = res["load"]
    lrows = []
    for mode in ("static", "managed"):
        for ph in ("before", "during", "after"):
            d = load[mode].get(ph)
            if d:
                lrows.append(
                    {
                        "runtime": mode,
                        "phase": ph,
                        "items": d["n"],
                        "p95_ms": d["p95_ms"],
                        "within target": "yes" if d["p95_ms"] <= load["target_ms"] else "no",
                        "accuracy": d["accuracy"],
                        "rungs (index: items)": d["rungs"],
                    }
                )
    return [
        DEPLOYED_HEADING,
        "",
        f"Command: `OMP_NUM_THREADS=1 python bench/runtime_bench.py --deployed --models {model}`. Machine: "
        f"{machine}, {os.cpu_count()} cores, {res['threads']} torch thread, load average "
        f"{os.getloadavg()[0]:.1f} at the end (per-rung and cascade figures are medians of 3 passes, the load "
        "scenario is one run). "
        f"Whole run {res['wall_s']:.0f} s. Each plan deployed once (`DeployedLadder`, torch.ao kernels through "
        "`workbench.hardware.deploy.deploy`, engine auto), the test split (450 images) served one input at a time "
        "(`ManagedRuntime.serve`); seconds per input measured around input checks, rung choice, machine readings "
        "and the forward pass(es); `overhead_pct`: the time outside forward passes over the forward-pass time.",
        "",
        f"### {model}: static deployed plans and the cascade",
        "",
        md_table(pd.DataFrame(rows)),
        "",
        *_cascade_lines(res),
        f"Best static deployed plan (most accurate, then fastest): {res['best']}. Managed ladder (fastest first, "
        f"up to it): {res['ladder']}."
        + (
            " No deployed plan is faster than it on this CPU, so the managed runtime has no cheaper rung to step "
            "down to, and the cascade starts from a rung that is not cheaper in time."
            if len(res["ladder"]) == 1
            else ""
        ),
        "",
        f"### {model}: competing CPU load mid-stream (target p95 {load['target_ms']:.2f} ms = 1.25 x the best "
        "static plan's unloaded p95)",
        "",
        "Two passes over the test split per runtime; at a third of the stream a bounded busy-loop process "
        "starts (4 s). Static: the best static plan throughout. Managed: p95 over a 16-item window against "
        "the target, step down on a miss, up at <= 0.6 x target.",
        "",
        md_table(pd.DataFrame(lrows)),
        "",
        _load_line(load),
        "",
        f"Managed moves: {len(load['managed']['moves'])}"
        + (f" (first: {load['managed']['moves'][0]})" if load["managed"]["moves"] else "")
        + ".",
        "",
    ]
