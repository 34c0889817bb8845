"""The search's configuration: :class:`SearchConfig` (validated once, at construction), its error type, the strategy
names it accepts, and the study constants the other parts share."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from workbench.search.objectives import ACCURACY_MODES, OBJECTIVES, HypervolumeRef
from workbench.search.space import SpaceConfig

SAMPLER_STRATEGIES: tuple[str, ...] = ("tpe", "nsga2", "rl", "random")
BASELINE_STRATEGIES: tuple[str, ...] = ("uniform", "greedy", "ilp", "aimet", "control")
STRATEGIES: tuple[str, ...] = ("auto", *SAMPLER_STRATEGIES, *BASELINE_STRATEGIES)
WARM_STARTS: tuple[str, ...] = ("auto", "uniform", "greedy", "ilp", "aimet")
MEMORY = ":memory:"
CONFIG_ATTR = "workbench_config"
TASK_ATTR = "workbench_task"  # the task's name and evaluation fingerprint: resume / join must match it
PARENT_RUN_ATTR = "workbench_mlflow_run"  # the study's MLflow parent run: a resume continues it


class SearchError(ValueError):
    """A search that cannot run as asked; the message names the bad value and the valid choices."""


@dataclass(frozen=True)
class SearchConfig:
    """Knobs of :func:`run_search` (defaults work on digits).

    ``objectives``: from ``accuracy`` (maximised), ``size`` (whole-model bytes), ``weight_size`` (bytes of the
    Conv / Linear weights with their scales), ``bops``, ``latency`` (ms per sample: estimated on ``profile``, a
    hardware precision profile name or path, or ``"in_context"``: per-layer costs of the task's model measured
    on this machine, :func:`~workbench.hardware.layer_costs.measure_layer_costs`, at ``latency_batch_size``
    (default 32); a BOPs proxy without a profile),
    ``energy`` (mJ per sample on ``profile``). Constraints:
    ``max_weight_fraction`` (weight bytes over FP32 weight bytes), ``max_size_bytes``, ``max_avg_weight_bits``
    (weight bits averaged over the layers of the search space, the searched units, with their element counts as
    weights; a unit left float counts 32; layers outside the space do not count), ``max_avg_mac_bits`` (the same
    average weighted by each layer's multiply-accumulates: proportional to BOPs at fixed activation bits),
    any combination; ``max_accuracy_drop`` (the metric loss in
    percentage points against FP32 on ``split``: accuracy drop for labelled accuracy); infeasible plans are
    reported to the sampler through Optuna's constraint support, and plans over a size budget (weight fraction,
    bytes or average bits) are not measured (they cost no evaluation).
    ``complexity_penalty`` / ``diversity_penalty``: reward shaping (seed 001) subtracted from the accuracy the
    sampler sees: weight x (distinct specs - 1) / layers, and weight x similarity to the closest earlier plan.
    ``final_split``: the front's plans are measured again on this split (None: skip).
    ``max_trials``: safety cap on trials (duplicates cost trials but no evaluation); default 20 x budget.
    ``strategy``: ``auto`` (default: sensitivity-first allocation, :mod:`workbench.search.auto`; with predicted
    or multi-fidelity accuracy it becomes ``tpe`` warm-started from the allocated front), a sampler or a
    baseline (:data:`STRATEGIES`). ``sensitivity_metric``: the sensitivity metric allocations minimise (``auto``:
    an output error for ``auto``, HAWQ's ``omega`` for ``ilp`` when the result has it). ``probe_bits``: the weight
    widths ``auto``'s sensitivity pass probes each layer at (the space's narrowest width and the one nearest to
    each); the other widths are scaled from the nearest probed one by the layer's weight quantization noise
    (:class:`~workbench.sensitivity.scaled.ScaledSensitivity`); None probes every width (slower, exact).
    ``warm_start``: ``auto`` (default: the allocated front) or a baseline (``uniform``, ``greedy``, ``ilp``,
    ``aimet``) whose first ``warm_start_plans`` (default 4, at most the budget) plans (spread along its curve, within the size constraint) are
    the first trials of a sampler strategy (other strategies ignore the default and refuse another value);
    they count against the budget like any other trial (with ``multifidelity`` they seed the screening).
    ``workers``: processes evaluating trials of the study at once (spawned on this machine; they share the study
    and its evaluation cache). ``worker_threads``: torch intra-op threads of each worker while it evaluates
    trials (the calling process too when it is the only worker, restored afterwards); None keeps torch's default,
    which in a spawned process is every core, so give ``workers`` x ``worker_threads`` <= cores to avoid
    oversubscription (``bench/parallel_bench.py`` uses 1).
    """

    strategy: str = "auto"
    budget: int = 40
    accuracy: str = "measured"
    objectives: tuple[str, ...] = ("accuracy", "weight_size")
    split: str = "val"
    final_split: str | None = "test"
    seed: int = 0
    max_weight_fraction: float | None = None
    max_size_bytes: int | None = None
    max_avg_weight_bits: float | None = None
    max_avg_mac_bits: float | None = None
    max_accuracy_drop: float | None = None
    complexity_penalty: float = 0.0
    diversity_penalty: float = 0.0
    screen_trials: int = 300
    max_trials: int | None = None
    n_startup_trials: int = 10
    population_size: int = 16
    sensitivity_metric: str = "auto"
    probe_bits: tuple[int, ...] | None = (2, 4)
    ilp_cost: str = "weight_size"
    warm_start: str | None = "auto"
    warm_start_plans: int | None = None
    profile: str | None = None
    latency_batch_size: int | None = None
    hv_ref: HypervolumeRef = field(default_factory=HypervolumeRef)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    study_name: str | None = None
    storage: str | None = None
    resume: bool = False
    workers: int = 1
    worker_threads: int | None = None
    track: bool = True
    log_trials: bool = True
    progress: bool = True
    ptq: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_ptq(self)
        _check_probe_bits(self)
        _check_choices(self)
        _check_budgets(self)
        _check_counts(self)
        _check_warm_start(self)
        _check_hardware(self)

    def trial_cap(self) -> int:
        return self.max_trials if self.max_trials is not None else max(20 * self.budget, 50)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["space"] = self.space.to_dict()
        d["hv_ref"] = self.hv_ref.to_dict()
        d["objectives"] = list(self.objectives)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        """Rebuild a config written by :meth:`to_dict` (the one stored with a study)."""
        from workbench.quant.spec import QuantSpec

        d = dict(d)
        sp = dict(d.pop("space", {}))
        for key in ("w_bits", "a_bits", "granularities", "methods", "sparsities", "structures", "rank_ratios",
                    "skip"):  # fmt: skip
            if key in sp:
                sp[key] = tuple(sp[key])
        if "base_spec" in sp:
            sp["base_spec"] = QuantSpec.from_dict(sp["base_spec"])
        hv = d.pop("hv_ref", None)
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "ptq" in kw:
            kw["ptq"] = tuple(kw["ptq"])
        if isinstance(kw.get("probe_bits"), list):
            kw["probe_bits"] = tuple(kw["probe_bits"])
        if "objectives" in kw:
            kw["objectives"] = tuple(kw["objectives"])
        return cls(space=SpaceConfig(**sp), hv_ref=HypervolumeRef(**hv) if hv else HypervolumeRef(), **kw)


def _not_int(value: Any, low: int) -> bool:
    """True unless ``value`` is an int (not a bool) >= ``low``."""
    return isinstance(value, bool) or not isinstance(value, int) or value < low


def _check_choices(c: SearchConfig) -> None:
    """Strategy, budget, accuracy mode and objectives (put in order: accuracy first)."""
    if c.strategy not in STRATEGIES:
        raise SearchError(f"unknown strategy {c.strategy!r}; choose one of {list(STRATEGIES)}")
    if _not_int(c.budget, 1):
        raise SearchError(f"budget must be an int >= 1 (evaluations), got {c.budget!r}")
    if c.accuracy not in ACCURACY_MODES:
        raise SearchError(f"unknown accuracy mode {c.accuracy!r}; choose one of {list(ACCURACY_MODES)}")
    objectives = tuple(c.objectives)
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad or not objectives or len(set(objectives)) != len(objectives):
        raise SearchError(
            f"objectives {list(objectives)} not valid; choose distinct names from {list(OBJECTIVES)}"
        )
    if "accuracy" not in objectives:
        raise SearchError(f"objectives {list(objectives)} must include 'accuracy'")
    # accuracy first: samplers (the RL reward) and fronts read it there
    objectives = ("accuracy", *(o for o in objectives if o != "accuracy"))
    object.__setattr__(c, "objectives", objectives)


def _check_budgets(c: SearchConfig) -> None:
    """Size and accuracy constraints, reward-shaping weights."""
    if c.max_weight_fraction is not None and not (0 < c.max_weight_fraction <= 1):
        raise SearchError(f"max_weight_fraction={c.max_weight_fraction!r} must lie in (0, 1]")
    if c.max_size_bytes is not None and c.max_size_bytes <= 0:
        raise SearchError(f"max_size_bytes={c.max_size_bytes!r} must be > 0")
    for name in ("max_avg_weight_bits", "max_avg_mac_bits"):
        value = getattr(c, name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 32
        ):
            raise SearchError(f"{name}={value!r} must be a number in [1, 32]")
    if c.max_accuracy_drop is not None and c.max_accuracy_drop < 0:
        raise SearchError(f"max_accuracy_drop={c.max_accuracy_drop!r} must be >= 0 (pp)")
    for name in ("complexity_penalty", "diversity_penalty"):
        if getattr(c, name) < 0:
            raise SearchError(f"{name}={getattr(c, name)!r} must be >= 0")


def _check_probe_bits(c: SearchConfig) -> None:
    """``probe_bits``: None or integer widths (an int alone is one width)."""
    from workbench.quant.spec.layer import INT_BITS

    if c.probe_bits is None:
        return
    bits = (c.probe_bits,) if isinstance(c.probe_bits, int) else tuple(c.probe_bits)
    if not bits or any(isinstance(b, bool) or b not in INT_BITS for b in bits):
        raise SearchError(f"probe_bits={c.probe_bits!r}; choose widths from {list(INT_BITS)}, or None (all)")
    object.__setattr__(c, "probe_bits", bits)


def _check_ptq(c: SearchConfig) -> None:
    """``ptq``: post-training quantization step names every measured plan gets (workbench.quant.ptq)."""
    from workbench.quant.ptq import resolve_ptq

    if isinstance(c.ptq, str):
        object.__setattr__(c, "ptq", tuple(p.strip() for p in c.ptq.split(",") if p.strip()))
    object.__setattr__(c, "ptq", tuple(c.ptq))
    try:
        resolve_ptq(c.ptq)
    except ValueError as e:
        raise SearchError(str(e)) from None


def _check_counts(c: SearchConfig) -> None:
    """Worker and sampler counts, the trial cap, the final split and the hypervolume reference."""
    for name, low in (("workers", 1), ("n_startup_trials", 1), ("population_size", 2)):
        value = getattr(c, name)
        if _not_int(value, low):
            raise SearchError(f"{name} must be an int >= {low}, got {value!r}")
    if c.worker_threads is not None and _not_int(c.worker_threads, 1):
        raise SearchError(f"worker_threads must be None or an int >= 1, got {c.worker_threads!r}")
    if c.max_trials is not None and _not_int(c.max_trials, c.budget):
        raise SearchError(f"max_trials={c.max_trials!r} must be an int >= budget ({c.budget}) or None")
    if c.final_split not in (None, "calib", "val", "test", "train"):
        raise SearchError(f"final_split={c.final_split!r}; choose calib, val, test, train or None")
    if not (0 < c.hv_ref.size_fraction <= 1) or c.hv_ref.max_drop_pp <= 0:
        raise SearchError(
            f"hv_ref={c.hv_ref.to_dict()}: size_fraction must lie in (0, 1] and max_drop_pp be > 0"
        )


def _check_warm_start(c: SearchConfig) -> None:
    """The warm start (a baseline seeding a sampler), multi-fidelity screening, screen_trials and the split."""
    if c.strategy == "auto" and c.accuracy != "measured":
        # auto measures its plans: on the predictor, TPE searches from auto's allocated front instead
        object.__setattr__(c, "strategy", "tpe")
    if c.warm_start == "auto" and c.strategy not in SAMPLER_STRATEGIES:
        object.__setattr__(c, "warm_start", None)  # the default seeds samplers only
    if c.warm_start_plans is None:  # the default: 4, within any budget
        object.__setattr__(c, "warm_start_plans", min(4, c.budget) if isinstance(c.budget, int) else 4)
    if c.warm_start is not None:
        if c.warm_start not in WARM_STARTS:
            raise SearchError(f"warm_start={c.warm_start!r}; choose one of {list(WARM_STARTS)} or None")
        if c.strategy not in SAMPLER_STRATEGIES:
            raise SearchError(
                f"warm_start seeds a sampler strategy ({list(SAMPLER_STRATEGIES)}), not {c.strategy!r}"
            )
        if not isinstance(c.warm_start_plans, int) or not 1 <= c.warm_start_plans <= c.budget:
            raise SearchError(
                f"warm_start_plans={c.warm_start_plans!r} must be an int in [1, budget={c.budget}]"
            )
    if c.strategy in BASELINE_STRATEGIES and c.accuracy == "multifidelity":
        raise SearchError(
            f"strategy {c.strategy!r} already proposes a fixed list of plans; multifidelity screening "
            f"needs a sampler strategy ({list(SAMPLER_STRATEGIES)}). Use accuracy='measured' or 'predicted'"
        )
    if c.screen_trials < 1:
        raise SearchError(f"screen_trials must be >= 1, got {c.screen_trials!r}")
    if c.split not in ("calib", "val", "test", "train"):
        raise SearchError(f"split={c.split!r}; choose calib, val, test or train")


def _check_hardware(c: SearchConfig) -> None:
    """The ILP's cost, the hardware profile (loaded once to validate it), the latency batch size and storage."""
    if c.ilp_cost not in ("weight_size", "size", "bops", "latency", "energy"):
        raise SearchError(f"ilp_cost={c.ilp_cost!r}; choose weight_size, size, bops, latency or energy")
    if c.profile == "in_context":  # workbench.hardware.layer_costs.IN_CONTEXT: no file, no energy figures
        if "energy" in c.objectives or c.ilp_cost == "energy":
            raise SearchError("profile='in_context' measures latency only; the 'energy' objective needs a "
                              "hardware profile with energy figures")  # fmt: skip
    elif c.profile is not None:
        from workbench.hardware.profile import ProfileError, load_profile

        try:
            load_profile(c.profile)
        except ProfileError as e:
            raise SearchError(f"profile={c.profile!r}: {e}") from None
    elif "energy" in c.objectives or c.ilp_cost == "energy":
        raise SearchError("the 'energy' objective needs a hardware profile with energy figures (profile=...)")
    if c.latency_batch_size is not None and _not_int(c.latency_batch_size, 1):
        raise SearchError(f"latency_batch_size={c.latency_batch_size!r} must be None or an integer >= 1")
    if c.workers > 1 and c.storage == MEMORY:
        raise SearchError("workers > 1 need a shared storage (sqlite file or postgresql URL), not ':memory:'")


def constraint_names(config: SearchConfig) -> list[str]:
    """Names of the constraints a trial reports, in the order of :meth:`SearchContext.constraints`."""
    names = []
    if config.max_weight_fraction is not None:
        names.append("weight_fraction")
    if config.max_size_bytes is not None:
        names.append("size_bytes")
    if config.max_avg_weight_bits is not None:
        names.append("avg_weight_bits")
    if config.max_avg_mac_bits is not None:
        names.append("avg_mac_bits")
    if config.max_accuracy_drop is not None:
        names.append("accuracy_drop_pp")
    return names


def n_size_constraints(cfg: SearchConfig) -> int:
    """How many of :meth:`SearchContext.constraints` (the first ones) are size budgets."""
    budgets = (cfg.max_weight_fraction, cfg.max_size_bytes, cfg.max_avg_weight_bits, cfg.max_avg_mac_bits)
    return sum(v is not None for v in budgets)
