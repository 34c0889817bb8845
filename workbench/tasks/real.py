"""Real-model tasks: an ImageNet-pretrained EfficientNet-Lite (:mod:`workbench.real_models`) on seeded crops of
the photos shipped with scikit-image / scikit-learn (:mod:`workbench.tasks.photos`), scored by fidelity to the
FP32 model (there are no labels).

The task's :attr:`~workbench.tasks.Task.metric` is the primary fidelity figure that search and the other
stages optimise (logit cosine by default); :func:`task_fidelity_report` gives every figure side by side on a
whole split: cosine, KL(FP32 || model), top-5 overlap and top-1 agreement. Many of these photos are far from
ImageNet (textures, microscopy), so the FP32 model's top-1 margin is small and top-1 agreement flips under tiny
perturbations: never read it alone.
"""

from __future__ import annotations

import copy
from dataclasses import asdict

from torch import nn

from workbench.real_models import REAL_MODELS, build_real_model, real_weights_path
from workbench.tasks.metrics import FIDELITY_KINDS, FidelityMetric, fidelity_metric, fidelity_report
from workbench.tasks.photos import PhotoCropConfig, photo_crops
from workbench.tasks.task import Task

__all__ = ["task_fidelity_report", "real_task"]


def real_task(
    name: str = "efficientnet_lite1",
    *,
    crops: PhotoCropConfig | None = None,
    pretrained: bool = True,
    metric: str = "cosine",
    model: nn.Module | None = None,
) -> Task:
    """The task of real model ``name`` (a key of :data:`~workbench.real_models.REAL_MODELS`) on photo crops.

    ``crops`` defaults to ``PhotoCropConfig(image_size=<the model's input side>)`` (240 for Lite1, 260 for
    Lite2; 128 / 128 / 256 calib / val / test crops, batches of 32); the model is built for ``crops.image_size``
    (its "SAME" padding depends on it). ``pretrained=False`` gives the same architecture with random weights
    (seeded by ``crops.seed``; for tests). ``model`` replaces the built model (e.g. your fine-tuned copy of the
    architecture; it is not modified). The metric is the fidelity ``metric`` (a kind of
    :data:`~workbench.tasks.FIDELITY_KINDS`, default ``"cosine"``) against a frozen FP32 copy of the model:
    quantized models are compared with it, not with labels. Calib / val / test are different crops of the same
    photos (``info["crops"]["note"]``).
    """
    if name not in REAL_MODELS:
        raise ValueError(f"unknown real model {name!r}; choose one of {list(REAL_MODELS)}")
    if metric not in FIDELITY_KINDS:
        raise ValueError(f"unknown fidelity metric {metric!r}; choose one of {list(FIDELITY_KINDS)}")
    if crops is None:
        crops = PhotoCropConfig(image_size=REAL_MODELS[name].input_size)
    if not isinstance(crops, PhotoCropConfig):
        raise TypeError(f"crops must be a PhotoCropConfig, got {type(crops).__name__}")
    built = model is None
    if model is None:
        model = build_real_model(
            name, pretrained=pretrained, image_size=crops.image_size, seed=None if pretrained else crops.seed
        )
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    data = photo_crops(crops)
    reference = copy.deepcopy(
        model
    ).eval()  # the FP32 reference stays as built, whatever happens to the model
    for p in reference.parameters():
        p.requires_grad_(False)
    info = {
        "model": name,
        "pretrained": pretrained and built,
        "weights": str(real_weights_path(name)) if pretrained and built else None,
        "crops": {**data.info(), "config": asdict(crops)},
        "metric": f"fidelity to FP32: {metric} (report: cosine, kl, top5_overlap, top1_agreement)",
    }
    return Task(
        name=name,
        model=model,
        calib_loader=data.loader("calib"),
        val_loader=data.loader("val"),
        test_loader=data.loader("test"),
        input_shape=(3, crops.image_size, crops.image_size),
        num_classes=REAL_MODELS[name].num_classes if built else None,
        metric=fidelity_metric(reference, metric),
        info=info,
    )


def task_fidelity_report(
    task: Task, model: nn.Module, split: str = "test", *, k: int = 5
) -> dict[str, float]:
    """Every fidelity figure of ``model`` against ``task``'s FP32 reference on the whole ``split``: ``cosine``,
    ``kl``, ``top5_overlap``, ``top1_agreement`` and ``samples`` (see :func:`~workbench.tasks.fidelity_report`).
    Works for any task whose metric is a :func:`~workbench.tasks.fidelity_metric`."""
    metric = task.metric
    if not isinstance(metric, FidelityMetric):
        raise ValueError(
            f"task {task.name!r} is scored by {task.metric_name!r}, not a fidelity metric; use "
            "fidelity_report(model, reference_model, loader)"
        )
    if k != metric.k:
        metric = FidelityMetric(metric.reference_model, metric.kind, output_key=metric.output_key, k=k)
    return fidelity_report(model, metric, task.loader(split))
