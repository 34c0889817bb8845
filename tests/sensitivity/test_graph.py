"""Reuse of upstream activations: re-running only the probed layer's downstream cone gives the full pass."""

from __future__ import annotations

import torch
from torch import nn

from workbench.sensitivity.graph import _GraphRunner, _nbytes


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


def test_cones_and_cached_values():
    runner = _GraphRunner.build(_mlp(), ["0", "2", "4"])
    assert runner is not None
    assert [str(n.target) for n in runner.cones["2"]] == ["2", "3", "4", "output"]
    assert [str(n.target) for n in runner.cones["4"]] == ["4", "output"]
    x = torch.randn(5, 4)
    out, cache = runner.record(x)
    assert len(cache) == 3  # the input, the ReLU output and the Tanh output
    assert _nbytes(list(cache.values())) == 4 * (5 * 4 + 5 * 8 + 5 * 8)
    torch.testing.assert_close(out, runner.gm(x), rtol=0, atol=0)


def test_downstream_run_matches_the_full_forward_pass():
    runner = _GraphRunner.build(_mlp(), ["0", "2", "4"])
    assert runner is not None
    x = torch.randn(5, 4)
    out, cache = runner.record(x)
    with torch.no_grad():
        runner.gm.get_submodule("2").weight.mul_(2.0)  # what a probe changes
        expected = runner.gm(x)
    got = runner.run("2", cache, out)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (got - out).abs().max() > 1e-3


def test_inplace_or_untraceable_models_run_whole():
    assert _GraphRunner.build(nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True)), ["0"]) is None

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x  # data-dependent control flow: not traceable

    assert _GraphRunner.build(Branchy(), ["fc"]) is None
