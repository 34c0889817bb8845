"""Fidelity figures on a whole loader: fidelity_report (cosine, KL, top-k overlap, top-1 agreement) and the
top1_agreement / neg_kl kinds of fidelity_metric, checked against a direct computation on all samples."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.tasks import FIDELITY_KINDS, fidelity_metric, fidelity_report, task_from_model


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 10))
    other = copy.deepcopy(ref)
    with torch.no_grad():
        other[2].weight.add_(0.3 * torch.randn_like(other[2].weight))
    return ref, other


def _loader() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [
        torch.randn(n, 6, generator=g) for n in (5, 5, 3)
    ]  # uneven batches: a per-batch mean would differ


def _expected(ref: nn.Module, other: nn.Module, x: torch.Tensor, k: int) -> dict[str, float]:
    with torch.no_grad():
        r, y = ref(x).double(), other(x).double()
    top_r, top_y = r.topk(k, dim=1).indices, y.topk(k, dim=1).indices
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top_r, top_y)]
    kl = F.kl_div(F.log_softmax(y, 1), F.log_softmax(r, 1), log_target=True, reduction="none").sum(1)
    return {
        "cosine": float(F.cosine_similarity(r, y, dim=1).mean()),
        "kl": float(kl.mean()),
        f"top{k}_overlap": sum(overlap) / len(overlap),
        "top1_agreement": float((r.argmax(1) == y.argmax(1)).double().mean()),
        "samples": len(x),
    }


@pytest.mark.parametrize("k", [1, 3, 5])
def test_the_report_covers_the_whole_loader(k: int) -> None:
    ref, other = _models()
    loader = _loader()
    got = fidelity_report(other, ref, loader, k=k)
    want = _expected(ref, other, torch.cat(loader), k)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert got["kl"] > 0.0 and got["cosine"] < 1.0
    assert fidelity_report(ref, ref, loader)["kl"] == pytest.approx(0.0, abs=1e-12)


def test_every_kind_matches_the_report() -> None:
    ref, other = _models()
    loader = _loader()
    report = fidelity_report(other, fidelity_metric(ref, k=5), loader)
    assert set(FIDELITY_KINDS) >= {"cosine", "top1_agreement", "neg_kl", "topk_agreement"}
    assert fidelity_metric(ref, "top1_agreement")(other, loader) == pytest.approx(report["top1_agreement"])
    assert fidelity_metric(ref, "neg_kl")(other, loader) == pytest.approx(-report["kl"])
    assert fidelity_metric(ref, "topk_agreement", k=5)(other, loader) == pytest.approx(report["top5_overlap"])
    assert fidelity_metric(ref, "cosine")(other, loader) == pytest.approx(report["cosine"])


def test_a_task_can_search_on_kl_or_top1() -> None:
    ref, _ = _models()
    loader = _loader()
    for kind in ("neg_kl", "top1_agreement"):
        task = task_from_model(ref, calib_loader=loader, val_loader=loader, test_loader=loader, metric=kind)
        assert task.metric_name == kind
        assert task.evaluate() == pytest.approx(0.0 if kind == "neg_kl" else 1.0, abs=1e-12)


def test_the_reference_model_against_itself_runs_once_per_batch() -> None:
    ref, other = _models()
    calls = []
    ref.register_forward_hook(lambda m, i, o: calls.append(1))
    loader = _loader()
    for kind in ("cosine", "neg_kl", "top1_agreement"):
        metric = fidelity_metric(ref, kind)
        calls.clear()
        best = metric(ref, loader)
        assert len(calls) == len(loader)  # the reference pass only, its outputs reused as the model's
        assert best == pytest.approx({"cosine": 1.0, "neg_kl": 0.0, "top1_agreement": 1.0}[kind], abs=1e-12)
        calls.clear()
        metric(
            copy.deepcopy(ref), loader
        )  # an equal copy (its hook copied too) runs; the reference is cached
        assert len(calls) == len(loader)
