"""Tasks by name: :func:`load_task` builds the embedded digits task with a zoo model (``digits_cnn``,
``digits_resnet``), trained on the digits data or loaded from the ``data/models`` cache, or the photo-crop task
of a real pretrained model (``efficientnet_lite1``, ``efficientnet_lite2``; :func:`~workbench.tasks.real_task`).
"""

from __future__ import annotations

from pathlib import Path

from workbench.data import DigitsConfig, digits_data
from workbench.models import MODEL_INPUT_SIZE, ZOO_MODELS, get_trained_model
from workbench.real_models import REAL_MODELS
from workbench.tasks.task import Task
from workbench.training import TrainConfig

__all__ = ["load_task"]


def _real_task(model_name: str, *, data_config: object, train_config: object, retrain: bool) -> Task:
    """The pretrained photo-crop task of a real model; digits-only options are refused, not ignored."""
    given = [n for n, v in (("data_config", data_config), ("train_config", train_config)) if v is not None]
    given += ["retrain=True"] if retrain else []
    if given:
        raise ValueError(
            f"{model_name} is pretrained on ImageNet and scored on photo crops: {', '.join(given)} only apply "
            "to the digits zoo models; use workbench.tasks.real_task(name, crops=PhotoCropConfig(...))"
        )
    from workbench.tasks.real import real_task

    return real_task(model_name)


def load_task(
    model_name: str = "digits_resnet",
    *,
    data_config: DigitsConfig | None = None,
    train_config: TrainConfig | None = None,
    retrain: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> Task:
    """The digits task with a zoo model, trained (or loaded from ``data/models``) via ``get_trained_model``.

    ``data_config`` defaults to ``DigitsConfig(image_size=MODEL_INPUT_SIZE[model_name])``. A real model name
    (``efficientnet_lite1``, ``efficientnet_lite2``) gives its pretrained photo-crop task with the defaults of
    :func:`~workbench.tasks.real_task` (call that for other crops). For torchvision models use
    :func:`torchvision_task`; for your own model :func:`task_from_model`.
    """
    if model_name in REAL_MODELS:
        return _real_task(model_name, data_config=data_config, train_config=train_config, retrain=retrain)
    if model_name not in ZOO_MODELS:
        raise ValueError(
            f"load_task knows the digits zoo models {list(ZOO_MODELS)} and the real models "
            f"{list(REAL_MODELS)}, got {model_name!r}; for torchvision "
            "models use torchvision_task(name, dataset=..., root=...), for your own model task_from_model(...)"
        )
    if data_config is None:
        data_config = DigitsConfig(image_size=MODEL_INPUT_SIZE[model_name])
    train_config = train_config if train_config is not None else TrainConfig()
    model, model_info = get_trained_model(
        model_name,
        config=train_config,
        data_config=data_config,
        cache_dir=cache_dir,
        retrain=retrain,
        progress=progress,
    )
    data = digits_data(data_config)
    loaders = data.loaders(train_batch_size=train_config.batch_size)
    info = {**model_info, "dataset": "digits", "sizes": data.sizes()}
    return Task(
        name=model_name,
        model=model,
        train_loader=loaders.train,
        calib_loader=loaders.calib,
        val_loader=loaders.val,
        test_loader=loaders.test,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        info=info,
    )
