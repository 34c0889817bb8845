"""Pure logic of bench/ptq_bench.py, bench/ptq_report.py and bench/peers/ptq_models.py (metrics, AIMET run grid, photo crops, the
SAME-padding conversion, the report); needs neither the peers venv nor a pretrained model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


pm = _load("ptq_models", ROOT / "bench" / "peers" / "ptq_models.py")
pb = _load("ptq_bench", ROOT / "bench" / "ptq_bench.py")
pr = _load("ptq_report", ROOT / "bench" / "ptq_report.py")


def test_fidelity_identical_and_known_values() -> None:
    torch.manual_seed(0)
    ref = torch.randn(20, 10)
    same = pr.fidelity(ref, ref.clone(), torch.zeros(20, dtype=torch.long))
    assert same["cosine"] == pytest.approx(1.0) and same["kl"] == pytest.approx(0.0, abs=1e-12)
    assert same["top5"] == 1.0 and same["top1_agree"] == 1.0
    assert same["accuracy"] == pytest.approx(float((ref.argmax(1) == 0).float().mean()))
    flipped = pr.fidelity(ref, -ref)
    assert flipped["cosine"] == pytest.approx(-1.0)
    assert flipped["top1_agree"] == 0.0 and flipped["top5"] == 0.0  # top-5 of x and of -x are disjoint in 10
    assert "accuracy" not in flipped
    q = ref + 0.1 * torch.randn(20, 10)
    kl = F.kl_div(F.log_softmax(q, 1), F.softmax(ref, 1), reduction="batchmean")
    assert pr.fidelity(ref, q)["kl"] == pytest.approx(float(kl), rel=1e-5)


def test_aimet_grids_cheapest_first_and_unique() -> None:
    full = pb.aimet_runs("full", 100)
    assert len(full) == 16 and len({r["label"] for r in full}) == 16
    quick = pb.aimet_runs("quick", 100)
    assert [r["label"] for r in quick] == [
        "W8A8 per_tensor tf",
        "W8A8 per_channel tf",
        "W4A8 per_tensor tf",
        "W4A8 per_channel tf",
        "W8A8 per_channel tfe",
        "W4A8 per_channel tfe",
        "W8A8 per_channel tfe+cle",
        "W4A8 per_channel tfe+cle",
        "W4A8 per_channel tfe+cle+ada",
    ]
    ada = [i for i, r in enumerate(full) if r["adaround_iters"]]
    assert ada == list(range(12, 16)) and all(full[i]["cle"] for i in ada)
    assert not any(r["adaround_iters"] for r in pb.aimet_runs("full", 0))
    with pytest.raises(ValueError, match="full, quick"):
        pb.aimet_runs("all", 10)


class _SamePadConv(nn.Conv2d):
    """A TF-SAME conv like efficientnet_lite_pytorch's: a pad pre-op, then the conv."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.static_padding = nn.ZeroPad2d((0, 1, 0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, 0, 1, self.groups)


def test_unsame_keeps_outputs_and_leaves_plain_convs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        _SamePadConv(3, 4, 3, stride=2), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 2, 1))
    ).eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        before = model(x)
    pm.unsame(model)
    assert type(model[0]) is nn.Sequential and isinstance(model[0][0], nn.ZeroPad2d)
    assert type(model[0][1]) is nn.Conv2d and type(model[2][0]) is nn.Conv2d
    assert not any(type(m) is _SamePadConv for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)
    with pytest.raises(ValueError, match="digits_mobilenet"):
        pm.build_float_model("resnet18")


def test_digits_mobilenet_builds_same_in_both_venvs() -> None:
    torch.manual_seed(0)
    a = pm.build_float_model("digits_mobilenet")
    b = pm.build_float_model("digits_mobilenet")
    b.load_state_dict(a.state_dict())
    assert pm.state_digest(a) == pm.state_digest(b)
    with torch.no_grad():
        b.features[0][0].weight.add_(1e-3)
    assert pm.state_digest(a) != pm.state_digest(b)


def test_photo_crops_seeded() -> None:
    pytest.importorskip("skimage")
    a = pb.photo_crops(3, seed=1, side=32)
    assert a.shape == (3, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, pb.photo_crops(3, seed=1, side=32))
    assert not torch.equal(a, pb.photo_crops(3, seed=2, side=32))
    assert float(a.min()) > -2.2 and float(a.max()) < 2.7  # ImageNet-normalised [0, 1] pixels


def test_tables_show_figures_errors_and_best() -> None:
    rows = [
        {"model": "m", "tool": "FP32", "setting": "-", "method": "float", "seconds": 0.0, "error": None,
         "cosine": 1.0, "kl": 0.0, "top5": 1.0, "top1_agree": 1.0},
        {"model": "m", "tool": "AIMET 2.42.0", "setting": "W8A8 per_channel", "method": "tf", "seconds": 3.0,
         "error": None, "cosine": 0.9, "kl": 0.01, "top5": 0.8, "top1_agree": 0.7},
        {"model": "m", "tool": "AIMET 2.42.0", "setting": "W8A8 per_channel", "method": "tf+ada", "seconds": 9.0,
         "error": "RuntimeError: boom"},
        {"model": "m", "tool": "workbench", "setting": "W8A8 per_channel", "method": "min-max", "seconds": 1.0,
         "error": None, "cosine": 0.95, "kl": 0.005, "top5": 0.9, "top1_agree": 0.8},
    ]  # fmt: skip
    lines = pr.table(rows)
    assert len(lines) == 2 + 4
    assert "| m | W8A8 per_channel | AIMET 2.42.0 | tf | 0.900 | 0.0100 | 0.800 | 0.700 | — | 3.0 |" in lines
    assert any("error: `RuntimeError: boom`" in line for line in lines)
    best = pr.best_table(rows)
    assert best[2] == "| m | W8A8 per_channel | tf: 0.900 / 0.700 | min-max: 0.950 / 0.800 |"


def test_section_lists_cut_runs_once_and_names_facts() -> None:
    base = {"model": "m", "tool": "AIMET 2.42.0", "setting": "W4A8 per_channel", "seconds": None}
    rows = [
        {**base, "method": "ada", "error": "not run: aimet_ptq.py stopped after the 10 s limit"},
        {**base, "method": "ada", "error": None, "seconds": 5.0, "cosine": 0.9, "kl": 0.1, "top5": 0.8,
         "top1_agree": 0.7},
        {**base, "method": "cle", "error": "not run: aimet_ptq.py stopped after the 10 s limit"},
    ]  # fmt: skip
    facts = {"model": "m", "grid": "quick", "n_calib": 32, "n_test": 64, "aimet_version": "2.42.0",
             "aimet_seconds": 12.0, "workbench_seconds": 3.0, "workbench_methods": [], "tag": "ada", "adaround_iters": 100,
             "aimet_timeout": 10}  # fmt: skip
    meta = {"command": "make bench-ptq", "date": "2026-01-01 00:00 UTC", "threads": 2, "facts": [facts]}
    lines = pr.section(rows, meta)
    assert lines[0] == pr.HEADING
    assert lines[-2] == "Not run (the AIMET side's time limit, `--aimet-timeout`): m W4A8 per_channel cle."
    assert sum("| ada |" in line for line in lines) == 1  # the measured run only, not its cut twin
    assert "| m | W4A8 per_channel | ada: 0.900 / 0.700 | — |" in lines
    assert any(
        line.startswith("- m (part ada): 32 calibration / 64 test") and "100 iterations" in line
        for line in lines
    )


def test_workbench_methods_filter_names_unknown_methods():
    assert [m for m, _, _ in pb.workbench_runs(["ptq=gptq,bias_correction"])] == ["ptq=gptq,bias_correction"]
    assert len(pb.workbench_runs()) == len(pb.WORKBENCH_METHODS)
    with pytest.raises(SystemExit, match=r"\['gptq'\] unknown"):
        pb.workbench_runs(["gptq"])
