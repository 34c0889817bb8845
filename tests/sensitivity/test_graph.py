"""Reuse of upstream activations: the streamed FP32 pass visits each layer once the values its downstream cone
needs exist, re-running only that cone gives the full pass, and the pass keeps only live values."""

from __future__ import annotations

import torch
from torch import nn

from workbench.sensitivity.graph import _GraphRunner


def _mlp(depth: int = 3) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(4, 8)]
    for _ in range(depth - 2):
        layers += [nn.ReLU(), nn.Linear(8, 8)]
    layers += [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).eval()


class _LateBranch(nn.Module):
    """``fc1``'s cone adds ``fc2``'s output, which the traced graph computes after ``fc1``; ``shared`` runs
    twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2, self.shared, self.head = (nn.Linear(4, 4) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.fc1(x)
        b = self.fc2(x)
        return self.head(self.shared(self.shared(torch.relu(a + b))))


def _probe_all(runner: _GraphRunner, x: torch.Tensor, scale: float = 2.0) -> tuple[dict, torch.Tensor]:
    """Stream ``x``; at each visit scale the layer's weight, run its cone, restore. Returns the cone outputs."""
    got = {}

    def visit(layer, env):
        weight = runner.gm.get_submodule(layer).weight
        original = weight.detach().clone()
        with torch.no_grad():
            weight.mul_(scale)
        try:
            got[layer] = runner.run_cone(layer, env)
        finally:
            with torch.no_grad():
                weight.copy_(original)

    return got, runner.stream(x, visit)


def _scaled_forward(model: nn.Module, layer: str, x: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
    weight = model.get_submodule(layer).weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(scale)
        out = model(x)
        weight.copy_(original)
    return out


def test_cones_and_visits():
    runner = _GraphRunner.build(_mlp(), ["0", "2", "4"])
    assert runner is not None
    assert [str(n.target) for n in runner.cones["2"]] == ["2", "3", "4", "output"]
    assert [str(n.target) for n in runner.cones["4"]] == ["4", "output"]
    targets = [str(n.target) for n in runner.nodes]
    visited = {layer: targets[i] for i, layers in runner.visits.items() for layer in layers}
    assert visited == {"0": "input", "2": "1", "4": "3"}  # right after the layer's input exists


def test_streamed_cones_match_the_full_forward_pass():
    for model, layers in (
        (_mlp(), ["0", "2", "4"]),
        (_LateBranch().eval(), ["fc1", "fc2", "shared", "head"]),
    ):
        runner = _GraphRunner.build(model, layers)
        assert runner is not None
        x = torch.randn(5, 4)
        got, fp32 = _probe_all(runner, x)
        torch.testing.assert_close(fp32, runner.gm(x), rtol=0, atol=0)
        for layer in layers:
            expected = _scaled_forward(runner.gm, layer, x)
            torch.testing.assert_close(got[layer], expected, rtol=0, atol=0)
            assert (got[layer] - fp32).abs().max() > 1e-4, layer


def test_late_branch_is_visited_after_the_value_it_needs():
    runner = _GraphRunner.build(_LateBranch().eval(), ["fc1", "fc2", "shared"])
    assert runner is not None
    position = {str(n.target): i for i, n in enumerate(runner.nodes) if n.op == "call_module"}
    at = {layer: i for i, layers in runner.visits.items() for layer in layers}
    assert position["fc1"] < position["fc2"] <= at["fc1"]  # fc1's cone needs fc2's output


def test_the_stream_keeps_only_live_values():
    runner = _GraphRunner.build(_mlp(depth=12), [str(i) for i in range(0, 23, 2)])
    assert runner is not None
    sizes = []
    runner.stream(torch.randn(3, 4), lambda layer, env: sizes.append(len(env)))
    assert len(sizes) == 12
    assert max(sizes) <= 2, (
        sizes
    )  # the layer's input (and at most one value not yet dropped), not the whole net


def test_inplace_or_untraceable_models_run_whole():
    assert _GraphRunner.build(nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True)), ["0"]) is None

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x  # data-dependent control flow: not traceable

    assert _GraphRunner.build(Branchy(), ["fc"]) is None
