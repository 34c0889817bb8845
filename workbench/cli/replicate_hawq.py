"""``workbench replicate-hawq``: HAWQ-V3's ILP on its published ResNet18/50 inputs
(:mod:`workbench.search.hawq_replication`); flags map onto its ``ReplicationConfig``."""

from __future__ import annotations

import argparse
from typing import Any

from workbench.cli.common import config_from_args, print_table

FRONT_COLUMNS = ["model", "constraint", "hv_exact", "hv_ilp_sweep", "hv_search", "search_front_points"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replicate-hawq",
        help="HAWQ-V3's ILP on its published ResNet18/50 inputs: allocations, checks, fronts vs a search",
    )
    p.add_argument(
        "--data",
        dest="data_path",
        metavar="DATA",
        help="HAWQ-V3 ILP inputs JSON (default: the copy shipped with the package)",
    )
    p.add_argument("--search-trials", type=int, default=300, help="NSGA-II trials per model and constraint")
    p.add_argument("--front-alphas", type=int, default=50, help="budgets of the exact ILP front sweep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON to PATH")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.search.hawq_replication import ReplicationConfig, run_replication

    config = config_from_args(ReplicationConfig, args, ("data_path", "search_trials", "front_alphas", "seed"))
    result = run_replication(config)
    print_table(result.table())
    if not result.search_vs_ilp.empty:
        print_table(result.fronts[FRONT_COLUMNS])
    for note in result.notes:
        print(note)
    print(f"({result.seconds:.1f} s)")
    return result.to_dict()
