"""The search space: parameters <-> plans, groups, narrowing, validation; cost model; fronts and hypervolume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workbench.quant import QuantPlan, QuantSpec
from workbench.quant.spec import PlanError
from workbench.search import CostModel, SearchSpace, SpaceConfig, hypervolume_2d, pareto_mask, residual_groups
from workbench.search.objectives import EvalCache


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(4, 8, 1, bias=False)

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.down(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block = Block()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.pool(self.block(torch.relu(self.stem(x)))).flatten(1))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net().eval()


def test_residual_groups_found_by_tracing(net):
    assert residual_groups(net) == {"block.conv2+": ("block.conv2", "block.down")}


def test_params_round_trip_and_groups_share(net):
    space = SearchSpace(net, SpaceConfig(w_bits=(2, 4, 8), groups="residual", fixed={"stem": {"w_bits": 8}}))
    assert [u.name for u in space.units] == ["block.conv1", "block.conv2+", "fc"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        params = space.random_params(rng)
        plan = space.plan_from_params(params)
        assert plan["block.conv2"] == plan["block.down"]
        assert plan["stem"] == QuantSpec(w_bits=8)
        assert space.plan_from_params(space.params_from_plan(plan)) == plan
    assert space.cardinality() == 3**3


def test_methods_build_compressed_specs(net):
    cfg = SpaceConfig(
        w_bits=(4,), methods=("quantize", "prune", "lowrank", "none"), granularities=("per_group",)
    )
    space = SearchSpace(net, cfg)
    u = "fc"
    base = {
        space.param_name(n.name, k): c[0] for n in space.units for k, c in n.choices.knob_choices().items()
    }
    plan = space.plan_from_params(
        {**base, f"{u}/method": "prune", f"{u}/sparsity": 0.5, f"{u}/structure": "channel"}
    )
    assert plan[u].sparsity == 0.5 and plan[u].sparsity_structure == "channel" and plan[u].group_size == 16
    plan = space.plan_from_params({**base, f"{u}/method": "lowrank", f"{u}/rank_ratio": 0.25})
    assert plan[u].rank_ratio == 0.25
    plan = space.plan_from_params({**base, f"{u}/method": "none"})
    assert u not in plan
    # one unit: 1 (none) + 1 (quantize) + 4 x 2 (prune) + 3 (lowrank) = 13 distinct choices
    assert space.cardinality() == 13 ** len(space.units)


def test_narrowing_and_validation(net):
    space = SearchSpace(net, SpaceConfig(skip=("stem",), overrides={"fc": {"w_bits": (8,)}}))
    assert "stem" not in space.layers or all("stem" not in u.layers for u in space.units)
    assert space.unit("fc").choices.w_bits == (8,)
    with pytest.raises(PlanError, match="unknown layer"):
        SearchSpace(net, SpaceConfig(skip=("nope",)))
    with pytest.raises(PlanError, match="empty"):
        SearchSpace(
            net,
            SpaceConfig(skip=tuple(n for n in ("stem", "block.conv1", "block.conv2", "block.down", "fc"))),
        )
    with pytest.raises(PlanError, match="w_bits"):
        SearchSpace(net, SpaceConfig(w_bits=(7,)))
    with pytest.raises(PlanError, match="methods"):
        SearchSpace(net, SpaceConfig(methods=("distill",)))
    with pytest.raises(PlanError, match="more than one group"):
        SearchSpace(net, SpaceConfig(groups={"a": ("fc", "stem"), "b": ("fc", "block.down")}))
    with pytest.raises(PlanError, match="not a choice"):
        space.plan_from_params({"fc/w_bits": 4})
    with pytest.raises(PlanError, match="unknown unit"):
        SearchSpace(net, SpaceConfig(overrides={"nope": {"w_bits": (8,)}}))


def test_cost_model_matches_plan_summary(net):
    x = torch.randn(2, 1, 8, 8)
    cm = CostModel(net, x, fp32_latency_ms=2.0)
    plan = QuantPlan.uniform(net, QuantSpec(w_bits=4))
    c = cm(plan)
    s = plan.summary(net, x)
    assert (c.size_bytes, c.bops, c.weight_bytes) == (s.size_bytes, s.bops, s.weight_bytes)
    assert c.latency_ms == pytest.approx(2.0 * s.bops / s.fp32_bops)
    fp32 = cm.fp32_cost
    assert fp32.latency_ms == pytest.approx(2.0) and fp32.weight_bytes == sum(
        m.weight.numel() * 4 for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    )


def test_pareto_mask_and_hypervolume_exact():
    vals = np.array([[0.9, 10.0], [0.8, 5.0], [0.85, 12.0], [0.9, 10.0], [0.7, 5.0]])
    assert pareto_mask(vals, ["maximize", "minimize"]).tolist() == [True, True, False, False, False]
    # two points in a box of size fraction 0.5 x accuracy range 0.5 (ref accuracy 0.5)
    hv = hypervolume_2d(np.array([0.9, 0.7]), np.array([0.2, 0.1]), ref_accuracy=0.5, ref_size_fraction=0.5)
    expected = (0.1 * 0.2 + 0.3 * 0.4) / (0.5 * 0.5)
    assert hv == pytest.approx(expected)
    assert hypervolume_2d(np.array([0.4]), np.array([0.1]), ref_accuracy=0.5, ref_size_fraction=0.5) == 0.0


def test_eval_cache_shared_through_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    a, b = EvalCache(url), EvalCache(url)
    a.put("k", {"accuracy": 0.5})
    a.put("k", {"accuracy": 0.9})  # a second writer of the same key keeps the first value in the database
    assert b.get("k") == {"accuracy": 0.5}
    assert len(b) == 1 and b.get("missing") is None


def test_embedding_tables_are_searched_only_when_asked():
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(100, 16)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(self.embed(x))

    model = Tiny()
    layers = lambda cfg: [layer for u in SearchSpace(model, cfg).units for layer in u.layers]  # noqa: E731
    assert layers(SpaceConfig()) == ["fc"]  # the table stays float32: it would dominate the average bits
    assert layers(SpaceConfig(embeddings=True)) == ["embed", "fc"]
    assert layers(SpaceConfig(include=("embed", "fc"))) == ["embed", "fc"]  # named by a pattern: asked for
    assert SpaceConfig(embeddings=True).to_dict()["embeddings"] is True
