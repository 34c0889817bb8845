"""Real pretrained models, a rough sanity figure: EfficientNet-Lite1 / -Lite2 (the ``[real]`` extra) on the
default photo crops: the FP32 forward time of one batch of 32 crops (one timed run after one warm-up), and the
fidelity of a bf16 round trip of every weight against FP32 on the whole test split (cosine, KL, top-5 overlap,
top-1 agreement). Prints one JSON line per model. ``--threads`` sets torch's thread count (default: torch's).

    python bench/real_models_bench.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

from workbench.tasks import real_task, task_fidelity_report


def measure(name: str) -> dict:
    t0 = time.perf_counter()
    task = real_task(name)
    build_s = time.perf_counter() - t0
    x = next(iter(task.test_loader))
    with torch.no_grad():
        task.model(x)  # warm-up
        t = time.perf_counter()
        task.model(x)
        forward_s = time.perf_counter() - t
    bf16 = copy.deepcopy(task.model)
    with torch.no_grad():
        for p in bf16.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return {
        "model": name,
        "input": list(x.shape),
        "build_s": round(build_s, 1),
        "fp32_forward_s_batch32": round(forward_s, 3),
        "bf16_weights_vs_fp32_test": task_fidelity_report(task, bf16, "test"),
        "threads": torch.get_num_threads(),
        "loadavg_1min": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--models", default="efficientnet_lite1,efficientnet_lite2")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        print(json.dumps(measure(name)), flush=True)


if __name__ == "__main__":
    main()
