"""``workbench bench``: run the benchmark suite (:mod:`workbench.benchsuite`) and rewrite docs/BENCHMARKS.md's
sections."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="run the benchmark suite (bench/*.py) and rewrite docs/BENCHMARKS.md's sections"
    )
    p.add_argument("--suite", choices=["quick", "full"], default="quick")
    p.add_argument("--only", nargs="+", metavar="SCRIPT", help="stage scripts to run, e.g. fronts_bench")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep stages finished by an earlier (interrupted) run whose command, inputs and results still match",
    )
    p.add_argument("--json", metavar="PATH", help="write every stage's results as one JSON to PATH")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.benchsuite import run_suite

    result = run_suite(args.suite, only=args.only, resume=args.resume)
    print(f"\n{result.command}: {result.seconds / 60:.1f} min")
    for s in result.stages:
        print(f"  {s.status:<12.12} {s.seconds:7.0f} s  {s.name}  ({s.command})")
        if s.status.startswith("skipped"):
            print(f"    {s.status}")
    print("docs/BENCHMARKS.md updated")
    if not result.ok:
        raise ValueError(
            "some benchmark stages failed (see above); the document keeps their earlier sections"
        )
    return result.to_dict()
