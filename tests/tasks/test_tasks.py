"""Task, the digits / torchvision / custom task builders (the digits data itself: tests/test_data.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from workbench.models import build_model
from workbench.tasks import (
    DigitsConfig,
    Task,
    digits_data,
    load_task,
    task_from_model,
    torchvision_task,
)


def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same folder as tests/test_models.py uses, so each zoo model trains once per session."""
    return tmp_path_factory.getbasetemp() / "workbench-models"


@pytest.fixture(scope="module")
def cnn_task(tmp_path_factory) -> Task:
    return load_task("digits_cnn", cache_dir=shared_cache_dir(tmp_path_factory), progress=False)


# --------------------------------------------------------------------------------------------- Task


def test_load_task_digits_cnn(cnn_task: Task) -> None:
    assert cnn_task.name == "digits_cnn"
    assert cnn_task.input_shape == (1, 8, 8) and cnn_task.num_classes == 10
    assert not cnn_task.model.training
    acc = cnn_task.evaluate()
    assert acc >= 0.97
    assert acc == pytest.approx(cnn_task.info["test_accuracy"])
    assert cnn_task.evaluate(split="val") >= 0.95
    assert cnn_task.evaluate(split="calib") >= 0.97
    assert cnn_task.info["sizes"]["test"] == 450


def test_task_evaluate_rejects_bad_split(cnn_task: Task) -> None:
    with pytest.raises(ValueError, match="'calib', 'val', 'test', 'train'"):
        cnn_task.evaluate(split="holdout")


def test_task_evaluate_other_model(cnn_task: Task) -> None:
    torch.manual_seed(0)
    assert cnn_task.evaluate(build_model("digits_cnn")) < 0.4


def test_example_input(cnn_task: Task) -> None:
    one = cnn_task.example_input()
    assert one.shape == (1, 1, 8, 8)
    many = cnn_task.example_input(batch=100)  # spans two calibration batches of 64
    assert many.shape == (100, 1, 8, 8)
    x_train = digits_data(DigitsConfig()).x_train
    assert torch.equal(many, x_train[:100])
    with pytest.raises(ValueError, match="256"):
        cnn_task.example_input(batch=1000)


def test_load_task_rejects_torchvision_name() -> None:
    with pytest.raises(ValueError, match="torchvision_task"):
        load_task("resnet18")


@pytest.mark.slow
def test_load_task_default_is_digits_resnet(tmp_path_factory) -> None:
    task = load_task(cache_dir=shared_cache_dir(tmp_path_factory), progress=False)
    assert task.name == "digits_resnet"
    assert task.input_shape == (1, 16, 16)
    assert task.example_input(batch=2).shape == (2, 1, 16, 16)
    assert task.evaluate() >= 0.97


# --------------------------------------------------------------------------------------------- custom


def _loader(n: int, *, shape: tuple[int, ...] = (3, 4)) -> DataLoader:
    g = torch.Generator().manual_seed(n)
    return DataLoader(TensorDataset(torch.randn(n, *shape, generator=g), torch.arange(n) % 2), batch_size=4)


def test_task_from_model() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    loader = _loader(10)
    task = task_from_model(model, calib_loader=loader, val_loader=loader, test_loader=loader, name="tiny")
    assert task.input_shape == (3, 4) and task.num_classes == 2 and task.name == "tiny"
    assert 0.0 <= task.evaluate() <= 1.0
    scored = task_from_model(
        model, calib_loader=loader, val_loader=loader, test_loader=loader, metric=lambda m, dl: 0.25
    )
    assert scored.evaluate(split="val") == 0.25
    with pytest.raises(ValueError, match="no train loader"):
        task.evaluate(split="train")


def test_task_from_model_rejects_bad_input() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    good, empty = _loader(8), _loader(0)
    with pytest.raises(ValueError, match="val_loader is empty"):
        task_from_model(model, calib_loader=good, val_loader=empty, test_loader=good)
    with pytest.raises(TypeError, match="str"):
        task_from_model("resnet18", calib_loader=good, val_loader=good, test_loader=good)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        task_from_model(model, calib_loader=[torch.zeros(2, 3, 4)], val_loader=good, test_loader=good)
    with pytest.raises(ValueError, match="model failed"):
        task_from_model(model, calib_loader=_loader(4, shape=(5,)), val_loader=good, test_loader=good)


# --------------------------------------------------------------------------------------------- torchvision


def test_torchvision_task_missing_cifar(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        torchvision_task("resnet18", dataset="cifar10", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    assert "cifar-10-python.tar.gz" in message
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message


def test_torchvision_task_missing_imagefolder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train/<class_name>/\*\.png"):
        torchvision_task("resnet18", dataset="imagefolder", root=tmp_path)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "val" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no image files"):
        torchvision_task("resnet18", dataset="imagefolder", root=tmp_path)


def test_torchvision_task_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'cifar10', 'imagefolder'"):
        torchvision_task("resnet18", dataset="mnist", root=tmp_path)


def _write_imagefolder(root: Path, *, per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_torchvision_task_imagefolder_with_weights(tmp_path: Path) -> None:
    _write_imagefolder(tmp_path)
    torch.manual_seed(0)
    reference = build_model("resnet18", num_classes=2).eval()
    weights = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), weights)

    task = torchvision_task(
        "resnet18",
        dataset="imagefolder",
        root=tmp_path,
        image_size=32,
        batch_size=4,
        calib_size=4,
        weights_path=weights,
    )
    assert task.num_classes == 2 and task.input_shape == (3, 32, 32)
    assert task.info["classes"] == ["cat", "dog"] and task.info["pretrained"]
    assert task.info["sizes"] == {"train": 6, "calib": 4, "val": 3, "test": 3}
    x = task.example_input(batch=2)
    assert x.shape == (2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(task.model(x), reference(x))
    assert task.evaluate(split="val") in {0.0, 1 / 3, 2 / 3, 1.0}
    xb, yb = next(iter(task.train_loader))
    assert xb.shape == (4, 3, 32, 32) and set(yb.tolist()) <= {0, 1}

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        torchvision_task(
            "resnet18", dataset="imagefolder", root=tmp_path, weights_path=tmp_path / "missing.pt"
        )
    with pytest.raises(ValueError, match="do not fit"):
        torchvision_task(
            "resnet18", dataset="imagefolder", root=tmp_path, num_classes=3, weights_path=weights
        )
