"""QAT loss terms: distillation from the FP32 model and the quantization (weight-to-grid) loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workbench.qat.mixed_bits import MixedBitWeightQuantizer
from workbench.quant import quant_modules


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch (Hinton et al.).

    Exactly 0 when the logits are equal; the ``T^2`` keeps its gradient on the scale of cross-entropy's.
    """
    t = float(temperature)
    log_s = F.log_softmax(student_logits / t, dim=1)
    log_t = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * (t * t)


def _weight_parts(mod: nn.Module) -> list[tuple[Tensor, nn.Module]]:
    """(float tensor, its quantizer) pairs of a fake-quant layer whose weights are integer-quantized."""
    if mod.spec.rank_ratio is not None:
        parts = [(mod.lowrank_a, mod.w_quant), (mod.lowrank_b, mod.w_quant_b)]
    elif mod.spec.sparsity > 0:
        parts = [(mod.weight * mod.weight_mask, mod.w_quant)]
    else:
        parts = [(mod.weight, mod.w_quant)]
    return [(t, q) for t, q in parts if isinstance(q, MixedBitWeightQuantizer) or q.is_integer]


def quantization_loss(model: nn.Module) -> Tensor:
    """Distance between every quantized layer's float weights and their quantized values.

    Per layer ``||W - Q(W)||^2 / ||W||^2`` (a noise-to-signal ratio; ``Q`` sees ``W`` detached, so the gradient
    pulls ``W`` towards its grid point and, with learned steps, the step towards lower error), averaged over
    layers with their weight counts as weights. 0 for a model without integer-quantized weights.
    """
    total = None
    count = 0
    for mod in quant_modules(model).values():
        for w, q in _weight_parts(mod):
            err = (w - q(w.detach())).pow(2).sum() / w.detach().pow(2).sum().clamp_min(1e-12)
            n = w.numel()
            total = err * n if total is None else total + err * n
            count += n
    if total is None:
        return torch.zeros((), device=next((p.device for p in model.parameters()), None))
    return total / count
