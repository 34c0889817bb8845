"""Fake-quant layers: QuantConv1d, QuantConv2d, QuantLinear (weight and input-activation quantizers) and the
weight-only QuantEmbedding.

The float weight stays a Parameter (so quantization-aware training can update it); the forward pass uses its
fake-quantized copy. Activation quantizers observe calibration batches first, then quantize with the frozen
range (static) or with a range recomputed from each batch (dynamic). A layer whose activations stay float32
(``a_bits=32``, a weight-only spec) gets no activation quantizer: its ``a_quant`` is an ``nn.Identity``, and so
is an Embedding's whatever its spec says (its input is integer token ids, not an activation).

Weight layout: the quantizers see every weight as ``[rows, fan_in]`` with rows on dim 0: output channels of
Linear (``[out, in]``) and Conv1d / Conv2d (``[out, in / groups, *kernel]``), and for an Embedding
(``[num_embeddings, embedding_dim]``) one row per token, the output-channel analogue (each looked-up vector is a
row). So ``per_channel`` means one scale per embedding row, and ``per_group`` groups run along the embedding dim.

A pruned layer (``spec.sparsity > 0``) carries a boolean buffer ``weight_mask`` computed once from the
(BatchNorm-folded) float weight; its effective weight is ``w_quant(weight * mask) * mask``, so pruned weights stay
zero through quantization-aware training. A low-rank layer (``spec.rank_ratio``) carries its truncated-SVD factors
as Parameters ``lowrank_a`` ``[out, r]`` and ``lowrank_b`` ``[r, fan_in]``, quantized by ``w_quant`` and
``w_quant_b``; its effective weight is ``w_quant(A) @ w_quant_b(B)``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workbench.compress import low_rank_factors, prune_mask, rank_for
from workbench.quant.adapters import adapter_for, split_layer
from workbench.quant.introspect import quantizable_type, unsupported_reason
from workbench.quant.observers import RangeCollector, estimate_range
from workbench.quant.quantizers import (
    activation_grid,
    broadcast_act_qparams,
    compute_qparams,
    fake_quantize,
    float_cast,
    from_grid,
    int_range_tensor,
    quantize_to_int,
    to_grid,
)
from workbench.quant.spec import QuantSpec, num_weight_groups


class WeightQuantizer(nn.Module):
    """Fake-quantizes a weight tensor according to a spec (grid rows share a scale)."""

    def __init__(
        self, spec: QuantSpec, weight_shape: torch.Size, *, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.spec = spec
        self.weight_shape = torch.Size(weight_shape)
        self.enabled = spec.w_bits < 32 or spec.channel_bits is not None
        self.is_float = spec.channel_bits is None and spec.w_bits == 16
        rows, groups = num_weight_groups(spec, weight_shape)
        n_rows = rows * groups
        if spec.channel_bits is not None:
            bits = torch.tensor(spec.channel_bits, dtype=torch.float32, device=device).repeat_interleave(
                groups
            )
        else:
            bits = torch.full((n_rows,), float(min(spec.w_bits, 16)), device=device)
        qmin, qmax = int_range_tensor(bits, symmetric=spec.w_symmetric)
        self.register_buffer("bits", bits.reshape(-1, 1), persistent=False)
        self.register_buffer("qmin", qmin.reshape(-1, 1), persistent=False)
        self.register_buffer("qmax", qmax.reshape(-1, 1), persistent=False)
        self.register_buffer("scale", torch.ones(n_rows, 1, device=device))
        self.register_buffer("zero_point", torch.zeros(n_rows, 1, device=device))

    @property
    def is_integer(self) -> bool:
        return self.enabled and not self.is_float

    @torch.no_grad()
    def calibrate(self, weight: Tensor) -> None:
        """Set scales / zero points from the weight with the spec's observer."""
        if not self.is_integer:
            return
        grid = to_grid(weight, self.spec.granularity, self.spec.group_size)
        lo, hi = estimate_range(
            grid,
            method=self.spec.w_observer,
            qmin=self.qmin,
            qmax=self.qmax,
            symmetric=self.spec.w_symmetric,
            percentile=self.spec.percentile,
        )
        scale, zp = compute_qparams(lo, hi, self.qmin, self.qmax, symmetric=self.spec.w_symmetric)
        self.scale.copy_(scale)
        self.zero_point.copy_(zp)

    def forward(self, weight: Tensor) -> Tensor:
        if not self.enabled:
            return weight
        if self.is_float:
            return float_cast(weight, self.spec.float16_format)
        grid = to_grid(weight, self.spec.granularity, self.spec.group_size)
        q = fake_quantize(grid, self.scale, self.zero_point, self.qmin, self.qmax)
        return from_grid(q, weight.shape, self.spec.granularity)

    @torch.no_grad()
    def int_codes(self, weight: Tensor) -> Tensor:
        """Integer codes ``[out_channels, fan_in]`` (padding removed), as int64."""
        grid = to_grid(weight, self.spec.granularity, self.spec.group_size)
        q = quantize_to_int(grid, self.scale, self.zero_point, self.qmin, self.qmax)
        return from_grid(q, weight.shape, self.spec.granularity).reshape(weight.shape[0], -1).to(torch.int64)

    def extra_repr(self) -> str:
        bits = "mixed" if self.spec.channel_bits is not None else self.spec.w_bits
        return f"bits={bits}, granularity={self.spec.granularity}, symmetric={self.spec.w_symmetric}"


class ActQuantizer(nn.Module):
    """Fake-quantizes a layer's input activations: static range from calibration, or dynamic per batch / input."""

    def __init__(self, spec: QuantSpec, *, seed: int = 0, device: torch.device | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.enabled = spec.a_bits < 32
        self.is_float = spec.a_bits == 16
        self.per_channel = spec.a_granularity == "per_channel"
        self.observing = False
        self.seed = seed
        self._collector: RangeCollector | None = None
        bits = float(min(spec.a_bits, 16))
        qmin, qmax = int_range_tensor(torch.tensor([bits], device=device), symmetric=spec.a_symmetric)
        self.register_buffer("qmin", qmin.reshape(1, 1), persistent=False)
        self.register_buffer("qmax", qmax.reshape(1, 1), persistent=False)
        self.register_buffer("scale", torch.ones(1, 1, device=device))
        self.register_buffer("zero_point", torch.zeros(1, 1, device=device))
        self.register_buffer("calibrated", torch.tensor(False, device=device))

    @property
    def needs_calibration(self) -> bool:
        return self.enabled and not self.is_float and not self.spec.a_dynamic

    @property
    def collector_empty(self) -> bool:
        return self._collector is None or self._collector.lo is None

    def start_observing(self) -> None:
        self.observing = True
        self._collector = RangeCollector(method=self.spec.a_observer, seed=self.seed)

    @torch.no_grad()
    def finish_observing(self) -> None:
        self.observing = False
        if self._collector is None or self._collector.lo is None:
            raise RuntimeError("activation quantizer saw no calibration batch")
        lo, hi = self._collector.finalize(
            qmin=self.qmin, qmax=self.qmax, symmetric=self.spec.a_symmetric, percentile=self.spec.percentile
        )
        scale, zp = compute_qparams(lo, hi, self.qmin, self.qmax, symmetric=self.spec.a_symmetric)
        self.scale = scale.clone()
        self.zero_point = zp.clone()
        self.calibrated.fill_(True)
        self._collector = None

    def _dynamic_qparams(self, x: Tensor) -> tuple[Tensor, Tensor]:
        grid = activation_grid(x.detach(), self.spec.a_granularity)
        lo, hi = estimate_range(
            grid,
            method=self.spec.a_observer,
            qmin=self.qmin,
            qmax=self.qmax,
            symmetric=self.spec.a_symmetric,
            percentile=self.spec.percentile,
        )
        return compute_qparams(lo, hi, self.qmin, self.qmax, symmetric=self.spec.a_symmetric)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if self.is_float:
            return float_cast(x, self.spec.float16_format)
        if self.observing:
            assert self._collector is not None
            self._collector.observe(x, self.spec.a_granularity)
            return x
        if self.spec.a_dynamic:
            scale, zp = self._dynamic_qparams(x)
        else:
            if not bool(self.calibrated):
                raise RuntimeError(
                    "activation quantizer is not calibrated: build the model with quantize_model(..., calib_loader)"
                )
            scale, zp = self.scale, self.zero_point
        s, z = (broadcast_act_qparams(p, x, self.spec.a_granularity) for p in (scale, zp))
        return fake_quantize(x, s, z, self.qmin.reshape(()), self.qmax.reshape(()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # scales may be per channel
        for key in ("scale", "zero_point"):  # resized on this module's device (the state may be on the CPU)
            if prefix + key in state_dict:
                setattr(self, key, torch.empty_like(state_dict[prefix + key], device=self.qmin.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        mode = "dynamic" if self.spec.a_dynamic else "static"
        return f"bits={self.spec.a_bits}, {self.spec.a_granularity}, {mode}, observer={self.spec.a_observer}"


class QuantModuleMixin:
    """Shared behaviour of the fake-quant layers."""

    is_quant_module = True
    weight_only = False  # True for layers whose input is never quantized (Embedding)
    float_type: type[nn.Module]  # the float layer type this twin replaces
    spec: QuantSpec
    w_quant: WeightQuantizer
    a_quant: ActQuantizer | nn.Identity

    def to_float(self) -> nn.Module:
        """A plain float layer of :attr:`float_type` carrying this layer's effective (fake-quantized, pruned or
        low-rank) weight and its bias; activations are not quantized (for deployment and export). A layer with a
        pre-op (:attr:`pre_op`, from a layer adapter) gives ``nn.Sequential(pre_op, float_layer)``."""
        new = self._float_like()
        with torch.no_grad():
            new.weight.copy_(self.quantized_weight().detach())
            if getattr(self, "bias", None) is not None:
                new.bias.copy_(self.bias.detach())
        pre_op = self.pre_op
        if pre_op is not None:
            return nn.Sequential(copy.deepcopy(pre_op), new).train(self.training)
        return new.train(self.training)

    @property
    def pre_op(self) -> nn.Module | None:
        """The module a layer adapter put in front of this layer (SAME padding), applied to the input after its
        activation quantizer (a zero pad commutes with it: 0 is exactly representable), or None."""
        return self._modules.get("pre_op")

    def _input(self, x: Tensor) -> Tensor:
        """The layer's input as its base computation sees it: quantized, then through the pre-op, if any."""
        x = self.a_quant(x)
        pre_op = self._modules.get("pre_op")
        return pre_op(x) if pre_op is not None else x

    def _float_like(self) -> nn.Module:  # an empty float layer of the same configuration
        raise NotImplementedError

    def quantized_weight(self) -> Tensor:
        """The weight the forward pass uses: fake-quantized, and masked or rebuilt from low-rank factors."""
        if self.spec.rank_ratio is not None:
            a = self.w_quant(self.lowrank_a)
            b = self.w_quant_b(self.lowrank_b)
            return (a @ b).reshape(self.weight.shape)
        if self.spec.sparsity > 0:
            mask = self.weight_mask
            return self.w_quant(self.weight * mask) * mask
        return self.w_quant(self.weight)

    def _init_quantizers(self, spec: QuantSpec, seed: int) -> None:
        self.spec = spec
        device = self.weight.device
        if self.weight_only or spec.a_bits >= 32:  # activations stay float: no quantizer, no state
            self.a_quant = nn.Identity()
        else:
            self.a_quant = ActQuantizer(spec, seed=seed, device=device)
        if spec.rank_ratio is not None:
            shape = self.weight.shape
            a, b = low_rank_factors(self.weight.detach(), rank_for(shape, spec.rank_ratio))
            self.lowrank_a = nn.Parameter(a)
            self.lowrank_b = nn.Parameter(b)
            self.w_quant = WeightQuantizer(spec, a.shape, device=device)
            self.w_quant_b = WeightQuantizer(spec, b.shape, device=device)
            self.w_quant.calibrate(a)
            self.w_quant_b.calibrate(b)
            with (
                torch.no_grad()
            ):  # code reading .weight sees the (float) approximation; the factors are trained
                self.weight.copy_((a @ b).reshape(shape))
            self.weight.requires_grad_(False)
            return
        self.w_quant = WeightQuantizer(spec, self.weight.shape, device=device)
        if spec.sparsity > 0:
            # Channel pruning zeroes whole weight rows but keeps their bias: that equals removing the channel and
            # folding its constant output (activation of the bias) into the next layer.
            mask = prune_mask(self.weight.detach(), spec.sparsity, spec.sparsity_structure)
            self.register_buffer("weight_mask", mask)
            self.w_quant.calibrate(self.weight.detach() * mask)
        else:
            self.w_quant.calibrate(self.weight)


def _conv_kwargs(conv: nn.Module) -> dict:
    return {
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "groups": conv.groups,
        "bias": conv.bias is not None,
        "padding_mode": conv.padding_mode,
        "device": conv.weight.device,
        "dtype": conv.weight.dtype,
    }


def _copy_params(q: nn.Module, src: nn.Module) -> None:
    """Copy ``src``'s weight (and bias, where it has one) into the fresh twin ``q``."""
    with torch.no_grad():
        q.weight.copy_(src.weight)
        if getattr(src, "bias", None) is not None:
            q.bias.copy_(src.bias)


class _QuantConvNd(QuantModuleMixin):
    """What Conv1d and Conv2d twins share (weights per output channel = dim 0; ``float_type`` is the base)."""

    @classmethod
    def from_float(cls, conv: nn.Module, spec: QuantSpec, *, seed: int = 0) -> nn.Module:
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, **_conv_kwargs(conv))
        _copy_params(q, conv)
        q._init_quantizers(spec, seed)
        return q

    def _float_like(self) -> nn.Module:
        return self.float_type(self.in_channels, self.out_channels, self.kernel_size, **_conv_kwargs(self))

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self._input(x), self.quantized_weight(), self.bias)


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """Conv1d whose weight (per output channel = dim 0, like Conv2d) and input are fake-quantized."""

    op_type = "Conv1d"
    float_type = nn.Conv1d


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """Conv2d whose weight and input are fake-quantized."""

    op_type = "Conv2d"
    float_type = nn.Conv2d


class QuantLinear(QuantModuleMixin, nn.Linear):
    """Linear whose weight and input are fake-quantized."""

    op_type = "Linear"
    float_type = nn.Linear

    def _float_like(self) -> nn.Module:
        return nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: QuantSpec, *, seed: int = 0) -> QuantLinear:
        q = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        _copy_params(q, linear)
        q._init_quantizers(spec, seed)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self._input(x), self.quantized_weight(), self.bias)


def _embedding_kwargs(emb: nn.Embedding) -> dict:
    return {
        "padding_idx": emb.padding_idx,
        "max_norm": emb.max_norm,
        "norm_type": emb.norm_type,
        "scale_grad_by_freq": emb.scale_grad_by_freq,
        "sparse": emb.sparse,
        "device": emb.weight.device,
        "dtype": emb.weight.dtype,
    }


class QuantEmbedding(QuantModuleMixin, nn.Embedding):
    """Embedding whose table is fake-quantized; weight-only (``a_quant`` is an identity, the spec's activation
    fields are ignored). Rows are tokens: ``per_channel`` is one scale per embedding row, ``per_group`` splits each
    row along the embedding dim. The table is quantized as a whole on every forward (QAT can update it); with
    ``max_norm`` the looked-up rows of the quantized table are renormalised, the stored table is left alone."""

    op_type = "Embedding"
    weight_only = True
    float_type = nn.Embedding
    bias = None

    @classmethod
    def from_float(cls, emb: nn.Embedding, spec: QuantSpec, *, seed: int = 0) -> QuantEmbedding:
        q = cls(emb.num_embeddings, emb.embedding_dim, **_embedding_kwargs(emb))
        _copy_params(q, emb)
        q._init_quantizers(spec, seed)
        return q

    def _float_like(self) -> nn.Module:
        return nn.Embedding(self.num_embeddings, self.embedding_dim, **_embedding_kwargs(self))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.quantized_weight()
        if self.max_norm is not None:  # F.embedding renormalises in place: never the parameter itself
            weight = weight.clone()
        return F.embedding(
            x, weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        )


QUANT_TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Linear: QuantLinear,
    nn.Embedding: QuantEmbedding,
}
"""Float layer type -> its fake-quant twin (keys are :data:`workbench.quant.introspect.QUANTIZABLE_TYPES`)."""


def quant_twin(module: nn.Module, spec: QuantSpec, *, seed: int = 0) -> nn.Module:
    """The fake-quant twin of a float quantizable layer (a new module; ``module`` is not changed).

    A subclass that a layer adapter splits (:mod:`workbench.quant.adapters`, e.g. a SAME-padding conv) gives the
    twin of its base layer carrying the adapter's pre-op (:attr:`QuantModuleMixin.pre_op`, submodule
    ``pre_op``). Raises ``ValueError`` naming the module's type and the supported types when it cannot be
    quantized."""
    base = quantizable_type(module)
    if base is None or getattr(module, "is_quant_module", False):
        what = "already quantized" if base is not None else unsupported_reason(module)
        raise ValueError(f"cannot quantize a {what}")
    pre_op = None
    if type(module) is not base and adapter_for(module) is not None:
        pre_op, module = split_layer(module)
    twin = QUANT_TWINS[base].from_float(module, spec, seed=seed)
    if pre_op is not None:
        twin.pre_op = copy.deepcopy(pre_op)
    return twin


def quantize_weight(weight: Tensor, spec: QuantSpec) -> Tensor:
    """The fake-quantized copy of a bare weight tensor under ``spec`` (for studies and widgets)."""
    wq = WeightQuantizer(spec, weight.shape, device=weight.device)
    wq.calibrate(weight)
    with torch.no_grad():
        return wq(weight)
