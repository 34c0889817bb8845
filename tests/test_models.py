"""Model zoo, training loop, evaluation and the trained-model cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from workbench.data import DigitsConfig, digits_data
from workbench.models import (
    MODEL_INPUT_SIZE,
    TrainConfig,
    build_model,
    evaluate_accuracy,
    get_trained_model,
    list_model_names,
    model_cache_path,
    train_model,
)

ZOO = ("digits_cnn", "digits_resnet")


def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder per pytest session, shared with tests/tasks/test_tasks.py so each model trains once."""
    return tmp_path_factory.getbasetemp() / "workbench-models"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, dict]]:
    cache = shared_cache_dir(tmp_path_factory)
    return {name: get_trained_model(name, cache_dir=cache, progress=False) for name in ZOO}


@pytest.fixture(scope="module")
def digits8():
    return digits_data(DigitsConfig(image_size=8))


# --------------------------------------------------------------------------------------------- building


def test_digits_cnn_shapes_and_named_layers() -> None:
    model = build_model("digits_cnn")
    out = model(torch.randn(4, 1, 8, 8))
    assert out.shape == (4, 10)
    names = dict(model.named_modules())
    for layer in ("conv1", "conv2", "pool", "fc1", "fc2"):
        assert layer in names
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 3 and len({id(m) for m in relus}) == 3
    assert build_model("digits_cnn", num_classes=3)(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_digits_resnet_structure() -> None:
    model = build_model("digits_resnet")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) >= 10
    assert len(convs) == 15
    assert "layer2.0.downsample.0" in convs and "layer3.0.downsample.0" in convs
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model.eval()
    for side in (8, 16, 32):
        assert model(torch.randn(2, 1, side, side)).shape == (2, 10)
    assert MODEL_INPUT_SIZE == {"digits_cnn": 8, "digits_resnet": 16, "digits_mobilenet": 8}


def test_digits_mobilenet_structure() -> None:
    model = build_model("digits_mobilenet").eval()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert len(convs) == 16
    depthwise = sorted(n for n, m in convs.items() if m.groups > 1 and m.groups == m.in_channels)
    assert depthwise == [
        "features.1.conv.0.0",
        "features.2.conv.1.0",
        "features.3.conv.1.0",
        "features.4.conv.1.0",
        "features.5.conv.1.0",
    ]
    assert all(convs[n].kernel_size == (3, 3) for n in depthwise)
    assert convs["features.2.conv.0.0"].out_channels == 4 * 16  # expansion 4
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 16
    relu6 = [m for m in model.modules() if isinstance(m, nn.ReLU6)]
    assert len(relu6) == 11 and len({id(m) for m in relu6}) == 11
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert [n for n, m in model.named_modules() if getattr(m, "use_residual", False)] == [
        "features.1",
        "features.3",
        "features.5",
    ]
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 64
    assert sum(p.numel() for p in model.parameters()) == 29_418
    with torch.no_grad():
        for side in (8, 16):
            assert model(torch.randn(2, 1, side, side)).shape == (2, 10)
    assert build_model("digits_mobilenet", num_classes=3)(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_digits_mobilenet_residual_adds_its_input() -> None:
    torch.manual_seed(0)
    block = build_model("digits_mobilenet").features[1].eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), x + block.conv(x))


def test_unknown_model_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="not_a_model") as err:
        build_model("not_a_model")
    message = str(err.value)
    assert "digits_cnn" in message and "digits_resnet" in message and "torchvision" in message
    assert "digits_mobilenet" in message


def test_bad_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_model("digits_cnn", num_classes=0)


def test_torchvision_resnet18_forward() -> None:
    model = build_model("resnet18", num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    names = list_model_names()
    assert names[:3] == [*ZOO, "digits_mobilenet"]
    assert {"resnet18", "mobilenet_v2", "resnet50", "mobilenet_v3_small"} <= set(names)


def test_torchvision_mobilenet_v3_small_forward() -> None:
    model = build_model("mobilenet_v3_small", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_get_trained_model_rejects_torchvision(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="torchvision_task"):
        get_trained_model("resnet18", cache_dir=tmp_path, progress=False)


def test_digits_cnn_rejects_other_image_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size=8"):
        get_trained_model(
            "digits_cnn", data_config=DigitsConfig(image_size=16), cache_dir=tmp_path, progress=False
        )


def test_train_config_validation() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


# --------------------------------------------------------------------------------------------- train / eval


def test_evaluate_accuracy_untrained_is_near_chance_and_restores_mode(digits8) -> None:
    torch.manual_seed(0)
    model = build_model("digits_cnn").train()
    acc = evaluate_accuracy(model, digits8.loaders().test)
    assert 0.0 <= acc < 0.4
    assert model.training
    with pytest.raises(ValueError, match="empty"):
        evaluate_accuracy(model, [])


def test_train_model_does_not_mutate_and_is_seeded(digits8) -> None:
    torch.manual_seed(0)
    model = build_model("digits_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    threads = torch.get_num_threads()
    config = TrainConfig(epochs=2, seed=3)
    loaders = digits8.loaders()
    a = train_model(model, loaders.train, config=config, val_loader=loaders.val, progress=False)
    b = train_model(model, digits8.loaders().train, config=config, progress=False)

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert a.model is not model
    assert not torch.equal(a.model.fc2.weight, model.fc2.weight)
    assert torch.equal(a.model.fc2.weight, b.model.fc2.weight)  # same seed, same data order
    assert all(p.grad is None for p in a.model.parameters())  # no stale gradients left behind
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads
    assert list(a.history.columns) == ["epoch", "loss", "lr", "val_accuracy"]
    assert a.history["epoch"].tolist() == [1, 2]
    assert a.history["loss"].iloc[1] < a.history["loss"].iloc[0]
    assert a.history["val_accuracy"].iloc[-1] > 0.5
    assert b.history["val_accuracy"].isna().all()
    assert a.seconds > 0
    assert not a.model.training


# --------------------------------------------------------------------------------------------- cache


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_trained_zoo_model_reaches_97_percent(trained, name: str) -> None:
    model, info = trained[name]
    assert info["test_accuracy"] >= 0.97
    assert not model.training
    side = MODEL_INPUT_SIZE[name]
    loaders = digits_data(DigitsConfig(image_size=side)).loaders()
    measured = evaluate_accuracy(model, loaders.test)
    assert measured == pytest.approx(info["test_accuracy"])
    assert measured >= 0.97
    assert info["train_config"] == TrainConfig().__dict__
    assert info["data_config"]["image_size"] == side


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_second_call_loads_from_cache(trained, tmp_path_factory, name: str) -> None:
    cache = shared_cache_dir(tmp_path_factory)
    model, info = trained[name]
    path = Path(info["path"])
    assert path.parent == cache
    assert re.fullmatch(rf"{name}-[0-9a-f]{{12}}\.pt", path.name)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["test_accuracy"] == pytest.approx(info["test_accuracy"])
    assert sidecar["train_seconds"] > 0

    again, info2 = get_trained_model(name, cache_dir=cache, progress=False)
    assert info2["source"] == "cache"  # loaded, not retrained (no wall-clock bound: CI machines are loaded)
    assert info2["test_accuracy"] == pytest.approx(info["test_accuracy"])
    assert again is not model and not again.training
    ref = model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in again.state_dict().items())


def test_cache_path_tracks_configs(tmp_path: Path) -> None:
    base = model_cache_path("digits_cnn", cache_dir=tmp_path)
    assert base == model_cache_path("digits_cnn", config=TrainConfig(), cache_dir=tmp_path)
    assert base != model_cache_path("digits_cnn", config=TrainConfig(seed=1), cache_dir=tmp_path)
    assert base != model_cache_path("digits_cnn", config=TrainConfig(epochs=3), cache_dir=tmp_path)
    assert base != model_cache_path("digits_cnn", data_config=DigitsConfig(seed=1), cache_dir=tmp_path)
    # loader batch size and calibration size do not change the trained weights
    same = DigitsConfig(batch_size=128, calib_size=64)
    assert base == model_cache_path("digits_cnn", data_config=same, cache_dir=tmp_path)
    assert base != model_cache_path("digits_resnet", cache_dir=tmp_path)


def test_retrain_and_corrupt_cache(tmp_path: Path) -> None:
    config = TrainConfig(epochs=1)
    _, first = get_trained_model("digits_cnn", config=config, cache_dir=tmp_path, progress=False)
    assert first["source"] == "trained"
    assert 0.5 < first["test_accuracy"] <= 1.0
    _, second = get_trained_model("digits_cnn", config=config, cache_dir=tmp_path, progress=False)
    assert second["source"] == "cache"
    _, third = get_trained_model(
        "digits_cnn", config=config, cache_dir=tmp_path, retrain=True, progress=False
    )
    assert third["source"] == "trained"
    Path(third["path"]).write_bytes(b"not a checkpoint")
    model, fourth = get_trained_model("digits_cnn", config=config, cache_dir=tmp_path, progress=False)
    assert fourth["source"] == "trained"
    assert fourth["test_accuracy"] == pytest.approx(first["test_accuracy"])  # seeded: same weights again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [Path(first["path"]).name, Path(first["path"]).with_suffix(".json").name]
    )
