"""Bring-your-own-model layers: Embedding (weight-only), Conv1d, nested containers, weight-only plans,
element-weighted bits, covered fraction, glob selection, packed round-trip, caller's model untouched."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch
from torch import nn

from workbench.quant import (
    ActQuantizer,
    PlanError,
    QuantEmbedding,
    QuantPlan,
    QuantSpec,
    layer_costs,
    load_packed,
    parse_shorthand,
    quant_modules,
    quantizable_layers,
    quantize_model,
    save_packed,
)
from workbench.quant.spec import match_layers, split_shorthand

VOCAB, DIM, SEQ, HIDDEN, CLASSES = 50, 16, 12, 32, 5
LAYERS = ["embed", "encoder.0", "blocks.mix.0", "blocks.mix.2", "pooler", "head"]


class TokenNet(nn.Module):
    """Embedding -> Conv1d over the sequence -> nested Linear block with LayerNorm -> pooler -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.encoder = nn.Sequential(nn.Conv1d(DIM, DIM, 3, padding=1), nn.GELU())
        self.blocks = nn.ModuleDict(
            {
                "mix": nn.Sequential(nn.Linear(DIM, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, DIM)),
                "norm": nn.LayerNorm(DIM),
            }
        )
        self.pooler = nn.Linear(DIM, DIM)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)  # [B, T, D]
        x = self.encoder(x.transpose(1, 2)).transpose(1, 2)
        x = self.blocks["norm"](x + self.blocks["mix"](x))
        return self.head(torch.tanh(self.pooler(x.mean(1))))


@pytest.fixture
def model() -> TokenNet:
    torch.manual_seed(0)
    return TokenNet().eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (8, SEQ), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def calib(ids) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(ids[i : i + 4], torch.zeros(4, dtype=torch.long)) for i in (0, 4)]


def _weights(model: nn.Module) -> dict[str, int]:
    return {n: model.get_submodule(n).weight.numel() for n in LAYERS}


# -- discovery --------------------------------------------------------------------------------------------------
def test_discovery_by_module_path_through_nested_containers(model, ids):
    assert quantizable_layers(model) == LAYERS  # LayerNorm, GELU and containers are not listed
    costs = layer_costs(model, ids)
    assert {n: c.op_type for n, c in costs.items()} == {
        "embed": "Embedding",
        "encoder.0": "Conv1d",
        "blocks.mix.0": "Linear",
        "blocks.mix.2": "Linear",
        "pooler": "Linear",
        "head": "Linear",
    }
    assert costs["embed"].macs == 0  # a lookup
    assert costs["embed"].out_channels == VOCAB  # per-channel = per embedding row
    assert costs["encoder.0"].macs == SEQ * DIM * DIM * 3
    assert costs["blocks.mix.0"].macs == SEQ * HIDDEN * DIM


def test_linear_subclasses_and_multihead_attention_out_proj():
    class PlainSub(nn.Linear):  # keeps Linear's forward: swappable
        pass

    class OwnForward(nn.Linear):  # its forward would be lost by a swap
        def forward(self, x):
            return super().forward(x) * 2

    class WithAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.sub = PlainSub(8, 8)
            self.own = OwnForward(8, 8)

    m = WithAttention()
    # MultiheadAttention reads out_proj.weight directly and never calls it: a swap would silently not apply
    assert quantizable_layers(m) == ["sub"]
    with pytest.raises(PlanError, match=r"'attn\.out_proj'.*NonDynamicallyQuantizableLinear.*never calls"):
        QuantPlan({"attn.out_proj": QuantSpec()}).validate(m)
    with pytest.raises(PlanError, match=r"'own'.*OwnForward, a Linear subclass with its own forward"):
        QuantPlan({"own": QuantSpec()}).validate(m)
    q = quantize_model(nn.Sequential(PlainSub(4, 3)), QuantPlan({"0": QuantSpec(w_bits=4, a_bits=32)}))
    assert type(q[0]).__name__ == "QuantLinear"


def test_layernorm_in_a_plan_names_its_type_and_the_supported_types(model):
    plan = QuantPlan({"blocks.norm": QuantSpec(w_bits=4)})
    with pytest.raises(PlanError) as err:
        plan.validate(model)
    msg = str(err.value)
    assert "'blocks.norm'" in msg and "LayerNorm" in msg
    assert "supported types: Conv1d, Conv2d, Linear, Embedding" in msg
    with pytest.raises(PlanError, match="LayerNorm"):
        quantize_model(model, plan)
    with pytest.raises(PlanError, match=r"unknown layer.*'blocks\.mixx\.0'.*nearest.*'blocks\.mix\.0'"):
        QuantPlan({"blocks.mixx.0": QuantSpec()}).validate(model)


# -- weight-only plans ------------------------------------------------------------------------------------------
def test_weight_only_shorthand_and_its_errors():
    assert parse_shorthand("uniform:w4:per_channel") == QuantSpec(w_bits=4, a_bits=32)
    assert parse_shorthand("uniform:w4") == parse_shorthand("uniform:w4a32")
    assert parse_shorthand("uniform:w4:per_channel").is_weight_only
    assert not parse_shorthand("uniform:w4a8").is_weight_only
    assert parse_shorthand("uniform:w4a8:per_channel") == QuantSpec(w_bits=4)  # existing form unchanged
    with pytest.raises(PlanError, match=r"uniform:w<W>a<A>.*weight-only 'uniform:w<W>"):
        parse_shorthand("uniform:a8")
    with pytest.raises(PlanError, match="QuantPlan.from_shorthand"):
        parse_shorthand("uniform:w4;include=*")


def test_weight_only_plan_leaves_activations_float(model, ids):
    plan = QuantPlan.from_shorthand("uniform:w4:per_channel", model, embeddings=True)
    assert list(plan) == LAYERS and all(s.a_bits == 32 for _, s in plan.items())
    q = quantize_model(model, plan)  # no calibration data needed
    mods = quant_modules(q)
    assert list(mods) == LAYERS
    assert not any(isinstance(m, ActQuantizer) for m in q.modules())
    assert all(isinstance(m.a_quant, nn.Identity) for m in mods.values())
    assert not any(".a_quant." in k for k in q.state_dict())
    with torch.no_grad():
        # activations untouched: each layer's output is exactly the float op on its float input with the
        # fake-quantized weight
        emb = q.embed
        torch.testing.assert_close(emb(ids), emb.quantized_weight()[ids], rtol=0, atol=0)
        out, ref = q(ids), model(ids)
    assert out.shape == ref.shape and not torch.equal(out, ref)
    assert torch.allclose(out, ref, atol=0.3)


def test_embedding_is_weight_only_under_an_activation_spec(model, calib, ids):
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", model, embeddings=True)
    with pytest.raises(PlanError, match="calib_loader"):
        quantize_model(model, plan)  # the Linear / Conv1d layers need a range
    only_embed = QuantPlan({"embed": QuantSpec(w_bits=8, a_bits=8)})
    q = quantize_model(model, only_embed)  # an Embedding has no activation range: no calibration needed
    assert isinstance(q.embed, QuantEmbedding) and isinstance(q.embed.a_quant, nn.Identity)
    q = quantize_model(model, plan, calib)
    assert isinstance(q.embed.a_quant, nn.Identity) and isinstance(q.head.a_quant, ActQuantizer)
    s = plan.summary(model, ids)
    assert s.avg_act_bits == 8.0  # the embedding's integer input is not an activation
    assert s.bops == sum(c.macs for c in layer_costs(model, ids).values()) * 64


# -- embedding quantization error --------------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_group"])
def test_embedding_error_within_half_a_step(model, granularity):
    errors = {}
    for bits in (4, 8):
        spec = QuantSpec(
            w_bits=bits,
            a_bits=32,
            granularity=granularity,
            group_size=8 if granularity == "per_group" else None,
        )
        emb = QuantEmbedding.from_float(model.embed, spec)
        w = model.embed.weight.detach()
        with torch.no_grad():
            err = (emb.quantized_weight() - w).abs()  # [VOCAB, DIM]
        scale = emb.w_quant.scale.reshape(-1)
        if granularity == "per_tensor":
            bound = scale.expand(VOCAB).reshape(VOCAB, 1)
            assert scale.numel() == 1
        elif granularity == "per_channel":  # one scale per embedding row (token)
            assert scale.numel() == VOCAB
            bound = scale.reshape(VOCAB, 1)
        else:  # groups of 8 along the embedding dim
            assert scale.numel() == VOCAB * DIM // 8
            bound = scale.reshape(VOCAB, DIM // 8).repeat_interleave(8, dim=1)
        assert bool((err <= bound / 2 + 1e-6).all()), (granularity, bits)
        errors[bits] = float(err.pow(2).mean())
    assert errors[8] < errors[4]


# -- summaries --------------------------------------------------------------------------------------------------
def test_element_weighted_average_bits_and_covered_fraction(model, ids):
    plan = QuantPlan(
        {
            "embed": QuantSpec(w_bits=4, a_bits=32, granularity="per_group", group_size=8),
            "encoder.0": QuantSpec(w_bits=8, a_bits=8),
            "blocks.mix.0": QuantSpec(w_bits=2, a_bits=16),
            "blocks.mix.2": QuantSpec(w_bits=6, a_bits=32),
            "head": QuantSpec(w_bits=3, a_bits=8),  # pooler not in the plan: float32
        }
    )
    n = _weights(model)
    assert n == {
        "embed": 800,
        "encoder.0": 768,
        "blocks.mix.0": 512,
        "blocks.mix.2": 512,
        "pooler": 256,
        "head": 80,
    }
    s = plan.summary(model, ids)
    expected_w = Fraction(4 * 800 + 8 * 768 + 2 * 512 + 6 * 512 + 32 * 256 + 3 * 80, 2928)
    assert s.avg_weight_bits == pytest.approx(float(expected_w), abs=1e-12)
    # activations: the embedding is left out (its input is token ids)
    expected_a = Fraction(8 * 768 + 16 * 512 + 32 * 512 + 32 * 256 + 8 * 80, 2128)
    assert s.avg_act_bits == pytest.approx(float(expected_a), abs=1e-12)
    total = sum(p.numel() for p in model.parameters())
    assert total == 800 + (768 + 16) + (512 + 32) + (512 + 16) + 2 * 16 + (256 + 16) + (80 + 5)
    assert (s.covered_params, s.total_params) == (800 + 768 + 512 + 512 + 80, total)
    assert s.covered_fraction == pytest.approx(2672 / total, abs=1e-15)
    assert 0 < s.covered_fraction < 1
    # weight storage: 4-bit codes + one float32 scale per group of 8 along the embedding dim
    assert s.weight_bytes * 8 >= 4 * 800 + 32 * 100
    empty = QuantPlan({}).summary(model, ids)
    assert (empty.covered_params, empty.covered_fraction, empty.avg_weight_bits) == (0, 0.0, 32.0)


def test_tied_weights_are_covered_once(model, ids):
    tied = copy.deepcopy(model)
    tied.head = nn.Linear(DIM, VOCAB, bias=False)
    tied.head.weight = tied.embed.weight  # a language-model head sharing the embedding table
    plan = QuantPlan.from_shorthand("uniform:w8:per_channel;include=embed,head", tied)
    s = plan.summary(tied, ids)
    assert s.covered_params == VOCAB * DIM
    assert s.total_params == sum(p.numel() for p in tied.parameters())


# -- selection by patterns --------------------------------------------------------------------------------------
def test_include_exclude_select_exactly(model):
    assert match_layers(LAYERS, ["blocks.*"], None) == ["blocks.mix.0", "blocks.mix.2"]
    assert match_layers(LAYERS, None, ["*.0"]) == ["embed", "blocks.mix.2", "pooler", "head"]
    plan = QuantPlan.from_shorthand(
        "uniform:w4:per_channel", model, include=["blocks.*", "head"], exclude="*.2"
    )
    assert list(plan) == ["blocks.mix.0", "head"]
    text = "uniform:w4:per_channel;include=blocks.*,head;exclude=*.2"
    assert split_shorthand(text) == ("uniform:w4:per_channel", ["blocks.*", "head"], ["*.2"])
    assert QuantPlan.from_shorthand(text, model) == plan
    plan = QuantPlan.from_shorthand("uniform:w4a8:per_channel;exclude=pooler*,embed", model)
    assert list(plan) == ["encoder.0", "blocks.mix.0", "blocks.mix.2", "head"]
    # string clauses and arguments add up
    plan = QuantPlan.from_shorthand("uniform:w8;include=embed", model, include=["head"])
    assert list(plan) == ["embed", "head"]
    # patterns in plans: the last matching pattern wins, excluded layers stay float
    w8, w4 = QuantSpec(w_bits=8, a_bits=32), QuantSpec(w_bits=4, a_bits=32)
    plan = QuantPlan.from_patterns(model, {"*": w8, "blocks.mix.*": w4}, exclude=["pooler"])
    assert (
        plan.to_dict()
        == QuantPlan(
            {"embed": w8, "encoder.0": w8, "blocks.mix.0": w4, "blocks.mix.2": w4, "head": w8}
        ).to_dict()
    )
    assert list(plan.select(model, exclude="blocks.*")) == ["embed", "encoder.0", "head"]


def test_pattern_matching_nothing_lists_near_names(model):
    with pytest.raises(PlanError) as err:
        QuantPlan.from_shorthand("uniform:w4:per_channel", model, exclude=["pooller*"])
    msg = str(err.value)
    assert "'pooller*'" in msg and "matches no quantizable layer" in msg and "'pooler'" in msg
    with pytest.raises(PlanError, match=r"'\*\.qqq'.*nearest layer names: \['embed', 'encoder\.0'"):
        QuantPlan.from_shorthand("uniform:w4;include=*.qqq", model)  # nothing close: the first names
    with pytest.raises(PlanError, match="'blocks.norm'"):  # a LayerNorm is not a quantizable layer
        match_layers(quantizable_layers(model), ["blocks.norm"])
    with pytest.raises(PlanError, match="leave no layer selected"):
        QuantPlan.from_shorthand("uniform:w4;include=head;exclude=h*", model)
    with pytest.raises(PlanError, match="valid clauses"):
        QuantPlan.from_shorthand("uniform:w4;only=head", model)


def test_search_space_include_exclude(model):
    from workbench.search.space import SearchSpace, SpaceConfig

    space = SearchSpace(model, SpaceConfig(include=("blocks.*", "embed"), exclude=("*.2",)))
    assert [u.name for u in space.units] == ["embed", "blocks.mix.0"]
    plan = space.uniform_plan(4, 32)
    assert list(plan) == ["embed", "blocks.mix.0"]
    assert SpaceConfig(include=["embed"]).include == ("embed",)  # lists from JSON become tuples
    with pytest.raises(PlanError, match="'head2'.*nearest.*'head'"):
        SearchSpace(model, SpaceConfig(exclude=("head2",)))


# -- packed storage ---------------------------------------------------------------------------------------------
def test_packed_round_trip_is_bit_exact(model, calib, ids, tmp_path):
    plan = QuantPlan(
        {
            "embed": QuantSpec(w_bits=3, a_bits=32, granularity="per_group", group_size=8, w_symmetric=False),
            "encoder.0": QuantSpec(w_bits=4, a_bits=8, channel_bits=tuple([2, 3, 4, 5, 6, 8, 8, 4] * 2)),
            "blocks.mix.0": QuantSpec(w_bits=5, a_bits=32),  # weight-only Linear
            "blocks.mix.2": QuantSpec(w_bits=4, a_bits=8, granularity="per_tensor"),
            "head": QuantSpec(w_bits=16, a_bits=16),
        }
    )
    q = quantize_model(model, plan, calib)
    report = save_packed(q, tmp_path / "m.wbq")
    loaded = load_packed(tmp_path / "m.wbq", model)
    assert report.file_bytes < report.fp32_bytes
    mods, lmods = quant_modules(q), quant_modules(loaded)
    assert list(lmods) == list(mods) == ["embed", "encoder.0", "blocks.mix.0", "blocks.mix.2", "head"]
    with torch.no_grad():
        for name in mods:
            assert torch.equal(mods[name].quantized_weight(), lmods[name].quantized_weight()), name
        assert torch.equal(q(ids), loaded(ids))
    a, b = q.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    weights = {f"{name}.weight" for name in mods}  # stored as codes: loaded as the dequantized weight
    assert all(torch.equal(a[k], b[k]) for k in a if k not in weights)  # biases, scales, ranges, LayerNorm
    with torch.no_grad():
        for name in mods:
            assert torch.equal(b[f"{name}.weight"], mods[name].quantized_weight()), name


def test_conv1d_batchnorm1d_is_folded(ids):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv1d(4, 6, 3, padding=1), nn.BatchNorm1d(6), nn.ReLU()).eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 4, 10)
    q = quantize_model(m, QuantPlan.uniform(m, QuantSpec(w_bits=8, a_bits=32)))
    assert q.folded_bn == [("0", "1")] and isinstance(q[1], nn.Identity)
    with torch.no_grad():
        assert torch.allclose(q(x), m(x), atol=0.05)


# -- the caller's model -----------------------------------------------------------------------------------------
def test_callers_model_is_never_mutated(model, calib, ids, tmp_path):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = {n: type(m) for n, m in model.named_modules()}
    plan = QuantPlan.from_shorthand("uniform:w4a8:per_group:g8;exclude=pooler", model)
    q = quantize_model(model, plan, calib)
    plan.summary(model, ids)
    save_packed(q, tmp_path / "m.wbq")
    load_packed(tmp_path / "m.wbq", model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert not model.training


def test_uniform_plans_leave_embedding_tables_float_unless_asked(model):
    plan = QuantPlan.from_shorthand("uniform:w4:per_channel", model)
    assert "embed" not in plan and list(plan) == [n for n in LAYERS if n != "embed"]
    assert "embed" in QuantPlan.from_shorthand("uniform:w4:per_channel;include=*", model)
    assert "embed" in QuantPlan.from_shorthand("uniform:w4:per_channel", model, embeddings=True)
    assert list(QuantPlan.from_shorthand("uniform:w4;include=embed", model)) == ["embed"]  # named: taken
    with pytest.raises(PlanError, match="only Embedding tables"):
        QuantPlan.uniform(nn.Sequential(nn.Embedding(10, 4)), QuantSpec(w_bits=4, a_bits=32))
