"""Accuracy predictor: a dataset of measured plans, cheap plan features, small regressors, rank correlation.

Three parts, each usable alone:

1. **Plan dataset** (:func:`build_plan_dataset`): random plans (each layer's bits drawn uniformly) and
   sensitivity-stratified plans (a greedy walk that lowers the least sensitive layers first, stopped at a
   random sensitivity budget, so the set spans near-lossless to heavily degraded plans) are quantized and
   measured on a split: the task metric (column ``accuracy``), the metric loss (column ``acc_drop``: FP32
   metric minus metric, x 100; accuracy drop in percentage points for labelled accuracy), KL divergence and
   logit MSE vs FP32 (of the output ``task.output_key`` chooses), size, average bits, BOPs. Every measured plan is appended to ``data_dir()/predictor/<key>.jsonl`` at
   once, so an interrupted build resumes where it stopped.
2. **Features** (:class:`PlanFeaturizer`): plans are encoded as ``[n_plans, n_layers]`` arrays of bit indices
   and features are gathered from per-layer lookup tables (bits, sensitivity x quantization noise such as
   omega and output MSE at each bit width, weight and activation noise power, sums over layers, cost shares)
   with numpy.
3. **Models** (``"ridge"``, ``"mlp"``, ``"gbt"``, ``"ensemble"``) behind :class:`AccuracyPredictor`, and
   :func:`evaluate_predictors` (k-fold Spearman / Kendall / MAE on held-out plans, throughput).
"""

from workbench.predictor.cache import CACHE_VERSION as CACHE_VERSION
from workbench.predictor.cache import dataset_key
from workbench.predictor.config import FRAME_METRICS as FRAME_METRICS
from workbench.predictor.config import (
    MIN_FIT_PLANS,
    TARGETS,
    TRANSFORMS,
    PlanDatasetConfig,
)
from workbench.predictor.config import STRATIFY_METRICS as STRATIFY_METRICS
from workbench.predictor.dataset import PlanDataset, build_plan_dataset
from workbench.predictor.evaluate import evaluate_predictors
from workbench.predictor.features import PlanFeaturizer
from workbench.predictor.features import _log_floor as _log_floor  # used by tests
from workbench.predictor.measure import measure_plan
from workbench.predictor.models import (
    _MLP,
    MODEL_NAMES,
    EnsembleModel,
    GBTModel,
    MLPModel,
    RidgeModel,
    make_model,
)
from workbench.predictor.plans import _drop_map as _drop_map  # used by tests
from workbench.predictor.plans import generate_plans, plan_id
from workbench.predictor.predictor import AccuracyPredictor

__all__ = [
    "MIN_FIT_PLANS",
    "MODEL_NAMES",
    "TARGETS",
    "TRANSFORMS",
    "AccuracyPredictor",
    "EnsembleModel",
    "GBTModel",
    "MLPModel",
    "PlanDataset",
    "PlanDatasetConfig",
    "PlanFeaturizer",
    "RidgeModel",
    "build_plan_dataset",
    "dataset_key",
    "evaluate_predictors",
    "generate_plans",
    "make_model",
    "measure_plan",
    "plan_id",
]

# A saved predictor (AccuracyPredictor.save) is a pickle, which names the class of every object in it by module
# and name. The classes it holds keep the module they had before the split, ``workbench.predictor`` (where they
# are re-exported), so files saved earlier load, and files saved now are byte for byte what they were.
for _cls in (PlanFeaturizer, RidgeModel, _MLP, MLPModel, GBTModel, EnsembleModel, AccuracyPredictor):
    _cls.__module__ = __name__
del _cls
