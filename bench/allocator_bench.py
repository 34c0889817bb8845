"""Deployed-model latency with glibc's default malloc against freed memory kept for reuse (``keep_freed_memory``).

Each mode runs in a fresh process (the setting is process-wide and cannot be undone): EfficientNet-Lite1 FP32 and
uniform int8 (W8A8 per channel) deployed, timed side by side at ``--batch`` for ``--rounds`` rounds of
``--repeats`` interleaved runs, with the minor page faults and system CPU seconds of each round. Prints a markdown
table and one JSON line per mode.

Run: ``python bench/allocator_bench.py [--batch 8] [--rounds 3] [--repeats 7] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import warnings

CHILD = "--child"


def child(args: argparse.Namespace) -> dict:

    from workbench.hardware.deploy import deploy, keep_freed_memory, time_side_by_side
    from workbench.quant import QuantPlan
    from workbench.tasks import load_task

    warnings.simplefilter("ignore")
    kept = keep_freed_memory() if args.mode == "keep" else False
    task = load_task("efficientnet_lite1", progress=False)
    model, x = task.model.eval(), task.example_input(args.batch)
    deps = {"fp32": deploy(model, QuantPlan({}), task.calib_loader),
            "int8": deploy(model, QuantPlan.from_shorthand("uniform:w8a8:per_channel", model), task.calib_loader)}  # fmt: skip
    rounds = []
    for _ in range(args.rounds):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        st = time_side_by_side(
            deps, x, repeats=args.repeats, warmup=2, threads=args.threads, keep_memory=False
        )
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        rounds.append({**{k: s.median_ms for k, s in st.items()}, "minor_faults": r1.ru_minflt - r0.ru_minflt,
                       "sys_s": r1.ru_stime - r0.ru_stime, "user_s": r1.ru_utime - r0.ru_utime})  # fmt: skip
    return {"mode": args.mode, "kept": kept, "torch_threads": args.threads, "batch": args.batch,
            "rounds": rounds, **{f"{k}_ms": statistics.median(r[k] for r in rounds) for k in deps}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", default="default", help=argparse.SUPPRESS)
    ap.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results = []
    for mode in ("default", "keep"):
        cmd = [sys.executable, __file__, CHILD, "--mode", mode, "--batch", str(args.batch), "--rounds",
               str(args.rounds), "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    print("| malloc | FP32 ms | int8 ms | minor page faults per round | system CPU s per round |")
    print("|---|---|---|---|---|")
    for r in results:
        faults = statistics.median(x["minor_faults"] for x in r["rounds"])
        sys_s = statistics.median(x["sys_s"] for x in r["rounds"])
        label = "freed memory kept (keep_freed_memory)" if r["mode"] == "keep" else "glibc default"
        print(f"| {label} | {r['fp32_ms']:.1f} | {r['int8_ms']:.1f} | {faults:.0f} | {sys_s:.2f} |")


if __name__ == "__main__":
    main()
