"""The suites: which benchmark scripts run, with which arguments, in which order."""

from __future__ import annotations

import dataclasses
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the source checkout holding bench/ and docs/
SUITES = ("quick", "full")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One benchmark script with its arguments; ``results``: the JSON it writes (relative to the root)."""

    name: str
    script: str
    args: tuple[str, ...] = ()
    results: str | None = None
    optional_input: str | None = None  # skipped (and said so) when this file is missing
    skip_reason: str = ""

    def command(self) -> list[str]:
        return ["python", self.script, *self.args]


def suite_stages(suite: str) -> list[Stage]:
    """The stages of ``suite`` (``quick``: under 20 minutes on 2 cores from a cold cache; ``full``: the numbers
    quoted in docs/BENCHMARKS.md at their full repeat counts, about an hour)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; valid choices: {', '.join(SUITES)}")
    quick = suite == "quick"
    # the peers run in their own venv (.venv-peers, set up on first use), then are compared with ours
    peers = Stage(
        "peers (AIMET AMP, NNCF HAWQ: setup if needed, run, compare)",
        "bench/peers_bench.py",
        ("--run-peers",),
        results="bench/out/peers_bench.json",
    )
    return [
        Stage(
            "ptq, timings, sensitivity, predictor",
            "bench/run_benchmarks.py",
            ("--repeats", "3", "--plans", "150") if quick else ("--repeats", "5", "--plans", "300"),
        ),
        Stage(
            "fronts (both models, every strategy)",
            "bench/fronts_bench.py",
            ("--budget", "20", "--seeds", "3", "--qat-epochs", "3", "--predictor-plans", "150")
            if quick
            else ("--budget", "40", "--seeds", "3", "--qat-epochs", "8", "--predictor-plans", "300"),
            results="bench/out/fronts.json",
        ),
        *(
            []
            if quick
            else [
                Stage(
                    "search variants (digits_resnet)",
                    "bench/search_bench.py",
                    results="bench/out/search.json",
                ),
                Stage("qat (digits_resnet)", "bench/qat_bench.py", results="bench/out/qat_bench.json"),
                Stage(
                    "bring your own model: DigitsBert on dynamic int8 / bf16",
                    "bench/transformer_bench.py",
                    results="bench/out/transformer.json",
                ),
                Stage(
                    "bring your own model: weight-only mixed precision on DigitsBert",
                    "bench/byom_bench.py",
                    results="bench/out/byom.json",
                ),
            ]
        ),
        Stage(
            "hardware deployment and estimator",
            "bench/hardware_bench.py",
            ("--repeats", "3", "--skip-resnet18") if quick else (),
            results="bench/out/hardware_bench.json",
        ),
        Stage(
            "runtime adaptation",
            "bench/runtime_bench.py",
            ("--models", "digits_resnet", "--budgets", "0.45") if quick else (),
            results="bench/out/runtime_bench.json",
        ),
        Stage(
            "parallel plan evaluation (1 vs 2 workers)",
            "bench/parallel_bench.py",
            ("--budget", "48", "--repeats", "2") if quick else ("--budget", "64", "--repeats", "5"),
            results="bench/out/parallel.json",
        ),
        Stage("hawq-v3 replication", "bench/hawq_bench.py", results="bench/out/hawq.json"),
        peers,
    ]
