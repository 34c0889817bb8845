"""Constants of the predictor and :class:`PlanDatasetConfig`, which plans a dataset build measures."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.quant import VALID_BITS

MIN_FIT_PLANS = 10
TARGETS: tuple[str, ...] = ("acc_drop", "kl", "logit_mse")
TRANSFORMS: tuple[str, ...] = ("signed_log1p", "none")
STRATIFY_METRICS: tuple[str, ...] = ("omega", "output_mse", "output_kl", "acc_drop")
FRAME_METRICS: tuple[str, ...] = (
    "accuracy", "acc_drop", "kl", "logit_mse", "size_bytes", "avg_weight_bits", "avg_act_bits", "bops",
    "eval_seconds",
)  # fmt: skip


@dataclass(frozen=True)
class PlanDatasetConfig:
    """Which plans :func:`build_plan_dataset` measures (defaults suit the digits task).

    ``n_random`` plans draw every layer's weight bits uniformly from ``w_bits`` (activation bits from
    ``a_bits``). ``n_stratified`` plans follow a sensitivity-guided greedy path (lower the layer with the
    least sensitivity increase per byte saved) to a random budget, random plans when no sensitivity result
    is given; the first ``stratify_anchors`` of them are anchors evenly spaced along the path, whose measured
    metric losses (FP32 metric minus metric; accuracy drop for labelled accuracy) set the budgets of the rest so
    that they spread evenly over log metric loss (see
    :func:`generate_plans`). ``stratify_metric`` picks the sensitivity metric ("auto": the first of omega,
    output_mse, output_kl, acc_drop that the result has per weight bit width); ``stratify_noise`` is the
    standard deviation of the per-layer log-normal jitter of sensitivities that makes stratified plans
    differ. Plans are measured on ``split``;
    every plan is distinct and generated deterministically from ``seed``.
    """

    n_random: int = 150
    n_stratified: int = 150
    w_bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    a_bits: tuple[int, ...] = (8,)
    granularity: str = "per_channel"
    split: str = "val"
    seed: int = 0
    stratify_metric: str = "auto"
    stratify_noise: float = 0.75
    stratify_anchors: int = 8

    def __post_init__(self) -> None:
        for name in ("n_random", "n_stratified", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"PlanDatasetConfig.{name} must be an int >= 0, got {value!r}")
        if self.n_random + self.n_stratified < 1:
            raise ValueError("PlanDatasetConfig needs n_random + n_stratified >= 1")
        for name in ("w_bits", "a_bits"):
            value = tuple(getattr(self, name))
            object.__setattr__(self, name, value)
            bad = [b for b in value if b not in VALID_BITS]
            if not value or bad:
                raise ValueError(
                    f"PlanDatasetConfig.{name}={value!r}: needs at least one bit width from {VALID_BITS}"
                )
            if len(set(value)) != len(value):
                raise ValueError(f"PlanDatasetConfig.{name}={value!r} repeats a bit width")
        if self.granularity not in ("per_tensor", "per_channel"):
            raise ValueError(
                f"PlanDatasetConfig.granularity={self.granularity!r}; choose 'per_tensor' or 'per_channel'"
            )
        if self.stratify_metric != "auto" and self.stratify_metric not in STRATIFY_METRICS:
            raise ValueError(
                f"PlanDatasetConfig.stratify_metric={self.stratify_metric!r}; choose 'auto' or one of "
                f"{list(STRATIFY_METRICS)}"
            )
        if not self.stratify_noise >= 0:
            raise ValueError(f"PlanDatasetConfig.stratify_noise must be >= 0, got {self.stratify_noise!r}")
        if not isinstance(self.stratify_anchors, int) or self.stratify_anchors < 2:
            raise ValueError(
                f"PlanDatasetConfig.stratify_anchors must be an int >= 2, got {self.stratify_anchors!r}"
            )

    @property
    def n_plans(self) -> int:
        return self.n_random + self.n_stratified
