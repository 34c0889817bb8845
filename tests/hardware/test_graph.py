"""The torch.fx cost graph of a tiny residual CNN: node kinds, element counts, owners, and untraceable models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.hardware.graph import trace_graph


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + x)


class TinyResNet(nn.Module):
    """stem conv (1 -> 4, 6x6) + ReLU, one residual block, 2x2 pool, flatten, linear to 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.block = Block(4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.block(self.act(self.stem(x))))))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a value: torch.fx cannot trace it
            return self.fc(x)
        return x


def _by_target(nodes):
    return {n.target: n for n in nodes if n.target}


def test_trace_graph_of_a_residual_cnn():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    nodes = trace_graph(model, torch.randn(5, 1, 6, 6))
    assert nodes is not None
    assert nodes[0].kind == "input" and nodes[0].elements == 36  # per sample: 1 x 6 x 6
    assert nodes[-1].kind == "output" and nodes[-1].elements == 0 and nodes[-1].in_elements == 3
    mods = _by_target(nodes)
    kinds = {t: n.kind for t, n in mods.items()}
    assert kinds == {
        "stem": "layer",
        "act": "relu",
        "block.conv": "layer",
        "block.bn": "bn",
        "pool": "elementwise",
        "flat": "free",
        "fc": "layer",
    }
    assert [n.layer for n in nodes if n.kind == "layer"] == ["stem", "block.conv", "fc"]
    assert mods["stem"].elements == 4 * 6 * 6 and mods["stem"].in_elements == 36
    assert mods["block.conv"].owner == "block" and mods["stem"].owner == ""
    assert mods["pool"].elements == 16 and mods["flat"].elements == 16 and mods["fc"].elements == 3
    # the residual add and the functional ReLU inside the block
    add = [n for n in nodes if n.kind == "elementwise" and not n.target]
    assert len(add) == 1 and add[0].elements == 144 and add[0].in_elements == 288 and len(add[0].inputs) == 2
    assert add[0].owner == "block"
    relus = [n for n in nodes if n.kind == "relu"]
    assert len(relus) == 2 and all(n.elements == 144 for n in relus)
    names = {n.name for n in nodes}
    assert all(set(n.inputs) <= names for n in nodes)  # every edge points at a node of the graph


def test_trace_graph_restores_each_module_mode():
    model = TinyResNet().train()
    model.block.bn.eval()
    assert trace_graph(model, torch.randn(2, 1, 6, 6)) is not None
    assert model.training and model.stem.training and not model.block.bn.training


def test_untraceable_model_gives_none_with_a_warning():
    model = DataDependent()
    with pytest.warns(UserWarning, match="torch.fx cannot trace the model"):
        assert trace_graph(model, torch.randn(2, 4)) is None
    assert model.training  # modes are restored on failure too
