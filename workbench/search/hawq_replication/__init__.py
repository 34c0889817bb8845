"""HAWQ-V3's integer linear program on its own published inputs: replicate the ResNet18 / ResNet50 bit
allocations, verify them independently, and compare a multi-objective search's front with the exact one.

Inputs (``data/hawq_v3_ilp_inputs.json``, the arrays of the public notebook ``ILP.ipynb`` of Zhen-Dong/HAWQ,
HAWQ-V3, Yao, Dong et al., ICML 2021): per layer the Hessian trace (per parameter), ``||W - Q(W)||^2`` at 4 and
8 bits, parameter and BOP counts, and T4 latencies at INT4 / INT8; plus the layer pairs that must share a bit
width (a residual block's first conv and its downsample conv read the same input). The first and last layers of
the networks are not in the program (the notebook says the paper adds them back by hand).

The notebook's program, per model, constraint (``size``, ``bops``, ``latency``) and budget fraction ``alpha``:

* one bit width per layer in {4, 8}; tied layers get the same one;
* per-layer cost at ``b`` bits: size ``params * b / 8`` MB with ``params`` in the notebook's millions
  (ResNet18 counts / 2**20, ResNet50 as published, i.e. / 1e6), BOPs ``bops / 64`` at 4 bits and ``bops / 16`` at
  8 bits in millions (weights and activations at ``b`` bits), latency ``latency_int{b}`` in ms;
* ``limit = cost(all 4) + alpha * (cost(all 8) - cost(all 4))``;
* minimise ``sum trace * ||dW||^2`` at the chosen bits (the notebook minimises this sum minus the constant
  all-4-bit sum: same minimiser).

Here every program is solved with the exact :func:`~workbench.search.baselines.ilp_solve` (HiGHS, zero gap) on
tie-merged rows (tied layers summed into one row, expanded back afterwards), then checked by up to three
independent exact methods: brute force (few merged rows), a depth-first branch and bound on the equivalent 0/1
knapsack, and a dynamic program over integer costs (when the costs lie on a small integer grid). The published
allocations (:data:`PUBLISHED_ALLOCATIONS`) are compared bit by bit and evaluated under the same cost model.

Fronts: the ILP swept over many budgets gives exact points of the (objective, cost) Pareto front; brute force or
the integer DP gives the complete exact front where feasible; a seeded NSGA-II study (Optuna, lookup-table
evaluation) gives a search front. The ILP is exact for each budget, so under this cost model no search can beat
it at the same budget: a search can at most match it.

Parts: :mod:`.inputs` (data file, published allocations), :mod:`.ilp` (the program and its cost model),
:mod:`.exact` (independent exact checks), :mod:`.fronts` (exact, ILP-sweep and search fronts), :mod:`.config`,
:mod:`.result` and :mod:`.replication` (:func:`run_replication`).
"""

from workbench.search.hawq_replication.config import ReplicationConfig
from workbench.search.hawq_replication.exact import bruteforce, integer_dp, knapsack_bnb
from workbench.search.hawq_replication.fronts import normalised_hypervolume, pareto_front_2d, search_front
from workbench.search.hawq_replication.ilp import (
    bits_string,
    budget_limit,
    evaluate_bits,
    merge_rows,
    parse_bits,
    solve_allocation,
    solve_allocation_at,
)
from workbench.search.hawq_replication.inputs import (
    BITS,
    CONSTRAINTS,
    DEFAULT_DATA,
    MODELS,
    PAPER_ALPHAS,
    PUBLISHED_ALLOCATIONS,
    REFERENCE_SOURCE,
    HawqModel,
    load_hawq_inputs,
    load_raw,
)
from workbench.search.hawq_replication.replication import run_replication
from workbench.search.hawq_replication.result import HawqReplication

__all__ = [
    "BITS",
    "CONSTRAINTS",
    "DEFAULT_DATA",
    "MODELS",
    "PAPER_ALPHAS",
    "PUBLISHED_ALLOCATIONS",
    "REFERENCE_SOURCE",
    "HawqModel",
    "HawqReplication",
    "ReplicationConfig",
    "bits_string",
    "bruteforce",
    "budget_limit",
    "evaluate_bits",
    "integer_dp",
    "knapsack_bnb",
    "load_hawq_inputs",
    "load_raw",
    "merge_rows",
    "normalised_hypervolume",
    "parse_bits",
    "pareto_front_2d",
    "run_replication",
    "search_front",
    "solve_allocation",
    "solve_allocation_at",
]
