"""Tasks: a model together with its calibration / validation / test data and a metric.

Three ways to get one:

* :func:`load_task` — the embedded digits task (``sklearn.datasets.load_digits``, 1797 8x8 grey images,
  bundled with scikit-learn, nothing downloaded) with a zoo model trained on it or loaded from the cache.
* :func:`torchvision_task` — a torchvision classification model on CIFAR-10 or an image folder that is
  already on disk (this module never downloads anything).
* :func:`task_from_model` — any ``nn.Module`` with your own loaders, scored by top-1 accuracy, your own
  ``metric(model, loader)``, ``eval_fn(model)``, or a :func:`fidelity_metric` against the FP32 model.
* :func:`load_task_file` — the Task a function in a Python file returns (the CLI's ``--task FILE.py:FUNC``).
* :func:`real_task` — an ImageNet-pretrained EfficientNet-Lite1 / -Lite2 (optional ``[real]`` extra) on seeded
  crops of the photos shipped in scikit-image / scikit-learn (:func:`photo_crops`), scored by fidelity to FP32
  (:func:`fidelity_report`: cosine, KL, top-5 overlap, top-1 agreement).

The built-in loaders yield ``(x, y)`` tuples (the calibration loader is a deterministic subset of the training
data). Your own may yield ``(inputs, targets)`` or the inputs alone, the inputs a tensor, a tuple or a dict of
tensors (see :mod:`workbench.quant.inputs`).

Parts: :mod:`~workbench.tasks.task` (:class:`Task`, :class:`TaskLike`, :func:`check_task`),
:mod:`~workbench.tasks.metrics` (accuracy, ``eval_fn`` and fidelity metrics), :mod:`~workbench.tasks.load`
(:func:`load_task`), :mod:`~workbench.tasks.vision` (:func:`torchvision_task`), :mod:`~workbench.tasks.byom`
(:func:`task_from_model`, task files) and :mod:`~workbench.tasks.digits_bert` (the local transformer task).
The digits data itself lives in :mod:`workbench.data` and is re-exported here.
"""

from __future__ import annotations

from workbench.data import (
    DIGITS_IMAGE_SIZES,
    SPLITS,
    DigitsConfig,
    DigitsData,
    DigitsLoaders,
    digits_data,
)
from workbench.tasks.byom import TaskFileError, load_task_file, task_from_model
from workbench.tasks.finite import NonFiniteOutputError
from workbench.tasks.metrics import (
    FIDELITY_KINDS,
    EvalFnMetric,
    FidelityMetric,
    Metric,
    evaluate_accuracy,
    fidelity_metric,
    fidelity_report,
    metric_name,
)
from workbench.tasks.task import TASK_DEFAULTS, Task, TaskLike, check_task
from workbench.training import TrainConfig

# the model zoo and torchvision come only with the names that need them: a stage that only reads TaskLike /
# check_task (every stage does) does not import torchvision
_LAZY = {
    "MODEL_INPUT_SIZE": "workbench.models",
    "ZOO_MODELS": "workbench.models",
    "build_model": "workbench.models",
    "get_trained_model": "workbench.models",
    "load_task": "workbench.tasks.load",
    "DATASETS": "workbench.tasks.vision",
    "_load_weights": "workbench.tasks.vision",
    "torchvision_task": "workbench.tasks.vision",
    "REAL_MODELS": "workbench.real_models",
    "MissingOptionalPackageError": "workbench.real_models",
    "build_real_model": "workbench.real_models",
    "PHOTO_SOURCES": "workbench.tasks.photos",
    "PhotoCropConfig": "workbench.tasks.photos",
    "PhotoCrops": "workbench.tasks.photos",
    "photo_crops": "workbench.tasks.photos",
    "real_task": "workbench.tasks.real",
    "task_fidelity_report": "workbench.tasks.real",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "DIGITS_IMAGE_SIZES",
    "FIDELITY_KINDS",
    "MODEL_INPUT_SIZE",
    "PHOTO_SOURCES",
    "REAL_MODELS",
    "SPLITS",
    "TASK_DEFAULTS",
    "ZOO_MODELS",
    "DigitsConfig",
    "DigitsData",
    "DigitsLoaders",
    "EvalFnMetric",
    "FidelityMetric",
    "Metric",
    "MissingOptionalPackageError",
    "NonFiniteOutputError",
    "PhotoCropConfig",
    "PhotoCrops",
    "Task",
    "TaskFileError",
    "TaskLike",
    "TrainConfig",
    "_load_weights",
    "build_model",
    "build_real_model",
    "check_task",
    "digits_data",
    "evaluate_accuracy",
    "fidelity_metric",
    "fidelity_report",
    "get_trained_model",
    "load_task",
    "load_task_file",
    "metric_name",
    "photo_crops",
    "real_task",
    "task_fidelity_report",
    "task_from_model",
    "torchvision_task",
]
