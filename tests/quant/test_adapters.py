"""Layer adapters: SAME-padding conv subclasses are split into a pre-op and an exact conv, quantized with the pad
kept in front, folded with their BatchNorm, packed and unpacked; a subclass no adapter takes stays unsupported."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from workbench.quant import QuantPlan, QuantSpec, load_packed, quantizable_layers, quantize_model, save_packed
from workbench.quant.adapters import (
    ADAPTERS,
    SamePad2d,
    adapter_for,
    adapter_refusal,
    register_adapter,
    split_layer,
    unregister_adapter,
)
from workbench.quant.coverage import CoverageWarning, plan_coverage
from workbench.quant.fusion import conv_bn_pairs, trace_layers
from workbench.quant.introspect import layer_costs, quantizable_type, unsupported_reason
from workbench.quant.modules import QuantConv2d, quant_twin


def _same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


class Identity(nn.Module):  # the package's own identity (not nn.Identity), as efficientnet_lite_pytorch has
    def forward(self, x):
        return x


class StaticSameConv(nn.Conv2d):
    """Like efficientnet_lite_pytorch's Conv2dStaticSamePadding: a fixed ZeroPad2d, then F.conv2d."""

    def __init__(self, cin, cout, k, stride=1, *, image_size, **kw):
        super().__init__(cin, cout, k, stride, **kw)
        self.stride = self.stride if len(self.stride) == 2 else [self.stride[0]] * 2
        top, bottom = _same_pads(image_size, k, self.stride[0], self.dilation[0])
        if top or bottom:
            self.static_padding = nn.ZeroPad2d((top, bottom, top, bottom))
        else:
            self.static_padding = Identity()

    def forward(self, x):
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class DynamicSameConv(nn.Conv2d):
    """Like timm's Conv2dSame: SAME padding computed from the input size, then a conv without padding."""

    def __init__(self, cin, cout, k, stride=1, **kw):
        super().__init__(cin, cout, k, stride, 0, **kw)

    def forward(self, x):
        ih, iw = x.shape[-2:]
        t, b = _same_pads(ih, self.kernel_size[0], self.stride[0])
        left, r = _same_pads(iw, self.kernel_size[1], self.stride[1])
        x = F.pad(x, [left, r, t, b])
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class SameNet(nn.Module):
    """Static asymmetric stride-2 stem, static symmetric depthwise, dynamic stride-2, static 1x1, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = StaticSameConv(3, 8, 3, stride=2, image_size=16, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = StaticSameConv(8, 8, 3, stride=1, image_size=8, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.down = DynamicSameConv(8, 16, 3, stride=2)
        self.project = StaticSameConv(16, 16, 1, image_size=4)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu6(self.bn0(self.stem(x)))
        x = F.relu6(self.bn1(self.dw(x))) + x
        x = F.relu6(self.project(F.relu6(self.down(x))))
        return self.fc(x.mean((2, 3)))


ADAPTED = ("stem", "dw", "down", "project")


@pytest.fixture
def same_net() -> SameNet:
    torch.manual_seed(0)
    net = SameNet()
    with torch.no_grad():
        for bn in (net.bn0, net.bn1):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def test_builtin_adapters_split_each_kind_exactly(same_net):
    assert [adapter_for(getattr(same_net, n)).name for n in ADAPTED] == [
        "static_same_padding",
        "static_same_padding",
        "dynamic_same_padding",
        "static_same_padding",
    ]
    expected = {  # (pre-op, base padding)
        "stem": (nn.ZeroPad2d, (0, 0)),  # 16 -> 8 at stride 2: pads (0, 1) stay a pre-op
        "dw": (type(None), (1, 1)),  # symmetric: folded into the conv
        "down": (SamePad2d, (0, 0)),
        "project": (type(None), (0, 0)),  # a 1x1 conv: the package's Identity, nothing to pad
    }
    for name in ADAPTED:
        module = getattr(same_net, name)
        pre_op, base = split_layer(module)
        assert type(base) is nn.Conv2d and base.weight is module.weight and base.padding == expected[name][1]
        assert type(pre_op) is expected[name][0], name
        for size in ((9, 8), (8, 9), (16, 16)):  # odd sizes: the dynamic pad differs per dimension
            x = torch.randn(2, module.in_channels, *size)
            with torch.no_grad():
                got = base(pre_op(x) if pre_op is not None else x)
                assert torch.allclose(got, module(x), atol=1e-6), (name, size)
    assert split_layer(same_net.stem)[0].padding == (0, 1, 0, 1)


def test_adapted_layers_are_quantizable_layers_with_their_own_names(same_net, images):
    assert quantizable_layers(same_net) == [*ADAPTED, "fc"]
    assert all(quantizable_type(getattr(same_net, n)) is nn.Conv2d for n in ADAPTED)
    costs = layer_costs(same_net, images)
    assert costs["stem"].macs == 8 * 8 * 8 * 3 * 9 and costs["stem"].input_shape == (3, 16, 16)
    assert costs["down"].output_shape == (16, 4, 4)
    gm = trace_layers(same_net)  # one call_module node per layer, not a pad and an F.conv2d
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert set(ADAPTED) <= called and not any(str(t).endswith("static_padding") for t in called)
    assert conv_bn_pairs(same_net) == [("stem", "bn0"), ("dw", "bn1")]


def test_identity_twins_and_fp32_plan_reproduce_the_float_model(same_net, images):
    fp32 = QuantSpec(w_bits=32, a_bits=32)
    for name in ADAPTED:
        module = getattr(same_net, name)
        twin = quant_twin(module, fp32)
        assert isinstance(twin, QuantConv2d) and (twin.pre_op is not None) == (name in ("stem", "down"))
        x = torch.randn(2, module.in_channels, 9, 10)
        with torch.no_grad():
            assert torch.allclose(twin(x), module(x), atol=1e-6)
            assert torch.allclose(twin.to_float()(x), module(x), atol=1e-6)
    plan = QuantPlan.uniform(same_net, fp32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)  # a 32/32 plan is a choice: no warning
        q = quantize_model(same_net, plan)
    with torch.no_grad():
        assert torch.equal(q(images), same_net(images))


def test_uniform_w8a8_covers_every_adapted_layer_and_stays_close(same_net, images, tmp_path):
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", same_net)
    assert list(plan) == [*ADAPTED, "fc"]
    cov = plan_coverage(same_net, plan, images)
    assert cov.complete and cov.covered_fraction == 1.0 and cov.covered_flops_fraction == 1.0
    summary = plan.summary(same_net, images)
    assert summary.coverage == "covers 5 of 5 weight layers, 100.0 % of weight parameters"
    assert (summary.quantized_layers, summary.total_layers, summary.weight_covered_fraction) == (5, 5, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        q = quantize_model(same_net, plan, [images[:4], images[4:]])
    assert q.folded_bn == [("stem", "bn0"), ("dw", "bn1")]
    assert all(type(getattr(q, n)) is QuantConv2d for n in ADAPTED)
    assert isinstance(q.stem.pre_op, nn.ZeroPad2d) and isinstance(q.down.pre_op, SamePad2d)
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref, out = same_net(x), q(x)
    cosine = F.cosine_similarity(ref, out, dim=1)
    assert float(cosine.min()) > 0.99 and not torch.equal(ref, out)
    path = tmp_path / "same.wbq"
    save_packed(q, path)
    back = load_packed(path, same_net)
    with torch.no_grad():
        assert torch.equal(back(x), out)  # the pads are rebuilt by the adapters, the codes from the file


def test_subclass_no_adapter_takes_stays_unsupported_with_its_reason():
    class ScaledConv(nn.Conv2d):  # an own forward that is no padding: the SAME split does not reproduce it
        def forward(self, x):
            return super().forward(x) * 2.0

    conv = ScaledConv(3, 4, 1)  # 1x1: the SAME split has the right shape, not the right values
    assert quantizable_type(conv) is None and adapter_for(conv) is None
    assert "differs from the layer's forward" in adapter_refusal(conv)
    reason = unsupported_reason(conv)
    assert "ScaledConv, a Conv2d subclass with its own forward" in reason and "register_adapter" in reason
    with pytest.raises(ValueError, match="cannot quantize a ScaledConv"):
        quant_twin(conv, QuantSpec(w_bits=8, a_bits=8))


class _Scale(nn.Module):
    def forward(self, x):
        return x * 2.0


class InputScaledLinear(nn.Linear):
    scale_input = True

    def forward(self, x):
        return F.linear(x * 2.0, self.weight, self.bias)


def test_register_a_custom_adapter_then_remove_it():
    layer = InputScaledLinear(6, 3)
    assert quantizable_type(layer) is None

    def split(m):
        base = nn.Linear(m.in_features, m.out_features)
        base.weight, base.bias = m.weight, m.bias
        return _Scale(), base

    register_adapter(
        "input_scale", base=nn.Linear, matches=lambda m: getattr(m, "scale_input", False), split=split
    )
    try:
        assert quantizable_type(layer) is nn.Linear and adapter_for(layer).name == "input_scale"
        twin = quant_twin(layer, QuantSpec(w_bits=32, a_bits=32))
        x = torch.randn(4, 6)
        with torch.no_grad():
            assert torch.allclose(twin(x), layer(x), atol=1e-6)
        with pytest.raises(ValueError, match="already registered"):
            register_adapter("input_scale", base=nn.Linear, matches=bool, split=split)
    finally:
        unregister_adapter("input_scale")
    assert "input_scale" not in ADAPTERS and quantizable_type(layer) is None


def test_a_lying_split_is_refused():
    def drop_the_scale(m):
        base = nn.Linear(m.in_features, m.out_features)
        base.weight, base.bias = m.weight, m.bias
        return None, base

    register_adapter("liar", base=nn.Linear, matches=lambda m: True, split=drop_the_scale)
    try:
        layer = InputScaledLinear(6, 3)
        assert quantizable_type(layer) is None
        assert "adapter 'liar' tried: its split differs" in adapter_refusal(layer)
    finally:
        unregister_adapter("liar")


def test_register_adapter_validates_its_arguments():
    with pytest.raises(ValueError, match=r"base must be one of \['Conv1d', 'Conv2d', 'Linear'\]"):
        register_adapter("x", base=nn.LayerNorm, matches=bool, split=bool)
    with pytest.raises(ValueError, match="non-empty string"):
        register_adapter("", base=nn.Linear, matches=bool, split=bool)
    with pytest.raises(KeyError, match="registered"):
        unregister_adapter("never-registered")


def test_efficientnet_lite_random_init_is_fully_covered():
    ef = pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    model = ef.EfficientNet.from_name("efficientnet-lite0").eval()
    plan = QuantPlan.from_shorthand("uniform:w8a8:per_channel", model)
    weights = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(plan) == len(weights) == 50
    cov = plan_coverage(model, plan)
    assert cov.complete and cov.covered_fraction == 1.0
    assert cov.covered_params == sum(m.weight.numel() for m in weights)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # any size: pads are fixed
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        q = quantize_model(model, plan, [x])
    assert len(q.folded_bn) == 49  # every conv's BatchNorm folded into it
    assert not any(type(m).__name__ == "Conv2dStaticSamePadding" for m in q.modules())
    with torch.no_grad():
        assert torch.isfinite(q(x)).all()
