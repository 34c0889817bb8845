"""Post-training quantization, the workbench vs Qualcomm AIMET, on the same float models, data and metrics.

Models: ``digits_mobilenet`` (our MobileNetV2-style digits model, trained weights from the zoo cache) and the
ImageNet-pretrained EfficientNet-Lite1 (its SAME-padding convolutions converted by hand into pad + ``nn.Conv2d``,
:mod:`bench.peers.ptq_models`, so both tools see the same plain float model). Data: the digits task's calibration
split (256) and test split (450, labelled: accuracy too); for Lite1 seeded random crops of scikit-image's sample
photos (240x240, ImageNet mean/std, calibration and test crops from disjoint seeds, same source photos).

This script (main venv) saves the float model (builder name + state_dict) and the inputs to a temporary folder and
runs ``bench/peers/aimet_ptq.py`` in the peers venv (``.venv-peers``, ``bash bench/peers/setup.sh``), which writes
AIMET's quantized test logits per method. Then it quantizes the same model with
``workbench.quant.quantize_model`` (with its ``ptq=`` steps where this checkout has them) and scores both sides
alike against the FP32 logits: logit cosine, KL(FP32 || quantized), top-5 overlap, top-1 agreement, and accuracy
on digits. Output: ``bench/out/ptq/ptq.md`` / ``ptq.json`` and the section "## Post-training quantization vs
AIMET" of docs/BENCHMARKS.md (``--no-doc`` leaves it alone).

Run: ``make bench-ptq`` (sets up the peers venv first), or
``.venv/bin/python bench/ptq_bench.py [--models digits_mobilenet] [--n-test 128] [--adaround-iters 200]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "peers"))
sys.path.insert(0, str(ROOT / "bench"))
from ptq_models import MODELS, build_float_model, state_digest  # noqa: E402
from ptq_report import HEADING, fidelity, section, table  # noqa: E402

OUT_DIR = ROOT / "bench" / "out" / "ptq"
PEERS_PY = ROOT / ".venv-peers" / "bin" / "python"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PHOTOS = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "horse",
    "motorcycle_left",
    "page",
    "text",
    "clock",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "colorwheel",
    "logo",
    "retina",
    "hubble_deep_field",
    "immunohistochemistry",
    "cell",
    "microaneurysms",
]
SETTINGS = [(8, "per_tensor"), (8, "per_channel"), (4, "per_tensor"), (4, "per_channel")]


# ------------------------------------------------------------------------------------------------ data


def _photos() -> list[np.ndarray]:
    from skimage import data as skd

    out = []
    for name in PHOTOS:
        try:  # a photo this scikit-image lacks, or one it would download, is left out
            img = np.asarray(getattr(skd, name)(), dtype=np.float32)
        except Exception:  # noqa: BLE001, S112
            continue
        img = img / 255.0 if img.max() > 1.0 else img
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out.append(img[..., :3])
    return out


def photo_crops(n: int, *, seed: int, side: int = 240) -> torch.Tensor:
    """``n`` seeded random resized crops (15-100 % of the area, aspect 3/4-4/3, random flips) of scikit-image's
    sample photos, ``side`` x ``side``, ImageNet-normalised: ``(n, 3, side, side)`` float32."""
    photos, rng, out = _photos(), np.random.default_rng(seed), []
    for _ in range(n):
        img = torch.from_numpy(photos[rng.integers(len(photos))]).permute(2, 0, 1)
        h, w = img.shape[1:]
        area = rng.uniform(0.15, 1.0) * h * w
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        ch, cw = min(h, round((area / aspect) ** 0.5)), min(w, round((area * aspect) ** 0.5))
        top, left = rng.integers(h - ch + 1), rng.integers(w - cw + 1)
        crop = img[:, top : top + ch, left : left + cw][None]
        crop = F.interpolate(crop, size=(side, side), mode="bilinear", align_corners=False, antialias=True)[0]
        out.append(crop.flip(-1) if rng.random() < 0.5 else crop)
    x = torch.stack(out).clamp(0, 1)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def load_case(name: str, *, n_calib: int, n_test: int) -> dict:
    """The float model and its data: x_cal, x_test (and y_test for digits)."""
    if name == "digits_mobilenet":
        from workbench.tasks import load_task

        task = load_task(name, progress=False)
        x_cal = torch.cat([b[0] for b in task.calib_loader])
        x_test = torch.cat([b[0] for b in task.test_loader])
        y_test = torch.cat([b[1] for b in task.test_loader])
        return {"model": task.model.eval(), "x_cal": x_cal, "x_test": x_test, "y_test": y_test}
    model = build_float_model(name, pretrained=True)
    return {"model": model, "x_cal": photo_crops(n_calib, seed=1), "x_test": photo_crops(n_test, seed=2)}


# ------------------------------------------------------------------------------------------------ runs


def _run(bits: int, gran: str, scheme: str, *, cle: bool = False, adaround_iters: int = 0) -> dict:
    method = {"tf": "tf (min-max)", "tf_enhanced": "tf_enhanced (SQNR)"}[scheme]
    tag = {"tf": "tf", "tf_enhanced": "tfe"}[scheme]
    if cle:
        method, tag = method + " + CLE", tag + "+cle"
    if adaround_iters:
        method, tag = method + f" + AdaRound ({adaround_iters} it)", tag + "+ada"
    return {
        "label": f"W{bits}A8 {gran} {tag}",
        "method": method,
        "scheme": scheme,
        "w_bits": bits,
        "a_bits": 8,
        "granularity": gran,
        "cle": cle,
        "adaround_iters": adaround_iters,
    }


def aimet_runs(grid: str, adaround_iters: int) -> list[dict]:
    """AIMET's runs, cheapest first (a run cut by the time limit loses only what comes after it).

    ``full``: min-max (tf) and SQNR (tf_enhanced) ranges at every setting, CLE on top of tf_enhanced, and AdaRound
    (on top of CLE + tf_enhanced) at every setting. ``quick`` (for the 240x240 photo model on 2 cores): tf at every
    setting, tf_enhanced and CLE per-channel, AdaRound at W4A8 per-channel only."""
    if grid == "adaround4":  # AdaRound alone at 4-bit weights: a second process beside a running grid
        return [
            _run(4, g, "tf_enhanced", cle=True, adaround_iters=adaround_iters)
            for g in ("per_tensor", "per_channel")
        ]
    if grid not in ("full", "quick"):
        raise ValueError(f"unknown AIMET grid {grid!r}; valid: full, quick, adaround4")
    runs = [_run(b, g, "tf") for b, g in SETTINGS]
    runs += [_run(b, g, "tf_enhanced") for b, g in SETTINGS if grid == "full" or g == "per_channel"]
    runs += [_run(b, g, "tf_enhanced", cle=True) for b, g in SETTINGS if grid == "full" or g == "per_channel"]
    if adaround_iters:
        ada = SETTINGS if grid == "full" else [(4, "per_channel")]
        runs += [_run(b, g, "tf_enhanced", cle=True, adaround_iters=adaround_iters) for b, g in ada]
    return runs


def run_aimet(
    case: dict, name: str, runs: list[dict], work: Path, *, peers_python: Path, timeout: float
) -> dict:
    """AIMET's test logits per run label (``bench/peers/aimet_ptq.py`` in the peers venv); after ``timeout``
    seconds the peer is stopped and the runs it finished are kept (the others are marked as cut)."""
    torch.save(
        {"name": name, "state_dict": case["model"].state_dict(), "digest": state_digest(case["model"])},
        work / "model.pt",
    )
    torch.save({"x_cal": case["x_cal"], "x_test": case["x_test"]}, work / "data.pt")
    (work / "runs.json").write_text(json.dumps(runs))
    cmd = [str(peers_python), str(ROOT / "bench" / "peers" / "aimet_ptq.py"), "--work", str(work)]
    try:
        status = f"exited {subprocess.run(cmd, cwd=ROOT, check=False, timeout=timeout).returncode}"
    except subprocess.TimeoutExpired:
        status = f"stopped after the {timeout:.0f} s limit"
    if not (work / "aimet.pt").is_file():
        return {"meta": {"error": f"aimet_ptq.py {status} without results"}, "runs": {}}
    out = torch.load(work / "aimet.pt", map_location="cpu", weights_only=False)
    out["meta"]["error"] = f"not run: aimet_ptq.py {status}"
    return out


WORKBENCH_METHODS: list[tuple[str, dict, list[str] | None]] = [
    ("min-max", {}, None),
    ("MSE ranges", {"w_observer": "mse", "a_observer": "mse"}, None),
    ("ptq=bias_correction (default)", {}, ["bias_correction"]),
    ("ptq=ranges,bias_correction", {}, ["ranges", "bias_correction"]),
    ("ptq=gptq,bias_correction", {}, ["gptq", "bias_correction"]),
    ("ptq=ranges,gptq,bias_correction", {}, ["ranges", "gptq", "bias_correction"]),
    ("ptq=cle,ranges,adaround,bias_correction", {}, ["cle", "ranges", "adaround", "bias_correction"]),
]
"""(method, observer knobs, ptq steps) the workbench side runs at every setting (``--wb-only`` picks some)."""


def workbench_runs(only: list[str] | None = None) -> list[tuple[str, dict, list[str] | None]]:
    """The workbench methods to run: all, or those named in ``only`` (an unknown name is an error)."""
    names = [m for m, _, _ in WORKBENCH_METHODS]
    bad = [n for n in only or [] if n not in names]
    if bad:
        raise SystemExit(f"--wb-only {bad} unknown; valid: {names}")
    return [r for r in WORKBENCH_METHODS if not only or r[0] in only]


@torch.no_grad()
def _logits(model, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def run_workbench(case: dict, only: list[str] | None = None) -> list[dict]:
    from torch.utils.data import DataLoader, TensorDataset

    from workbench.quant import QuantPlan, QuantSpec, quantize_model

    loader = DataLoader(TensorDataset(case["x_cal"], torch.zeros(len(case["x_cal"]))), batch_size=32)
    rows = []
    for bits, gran in SETTINGS:
        for method, knobs, steps in workbench_runs(only):
            spec = QuantSpec(w_bits=bits, a_bits=8, granularity=gran, **knobs)
            start = time.perf_counter()
            row = {"tool": "workbench", "setting": f"W{bits}A8 {gran}", "method": method, "error": None}
            try:
                plan = QuantPlan.uniform(case["model"], spec)
                extra = {"ptq": steps} if steps else {}
                row["logits"] = _logits(quantize_model(case["model"], plan, loader, **extra), case["x_test"])
            except Exception as err:  # noqa: BLE001 - recorded, like the peer's failures
                row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            row["seconds"] = round(time.perf_counter() - start, 2)
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ report


def score(name: str, case: dict, aimet: dict, runs: list[dict], wb_rows: list[dict]) -> list[dict]:
    """One row per (tool, setting, method) with its fidelity figures (or its error)."""
    ref = _logits(case["model"], case["x_test"])
    labels = case.get("y_test")
    rows = [{"model": name, "tool": "FP32", "setting": "-", "method": "float", "seconds": 0.0, "error": None}]
    rows[0].update(fidelity(ref, ref, labels))
    version = aimet.get("meta", {}).get("aimet_version", "?")
    for run in runs:
        got = aimet.get("runs", {}).get(
            run["label"], {"error": aimet.get("meta", {}).get("error", "not run")}
        )
        row = {"model": name, "tool": f"AIMET {version}", "setting": run["label"].rsplit(" ", 1)[0]}
        row.update(method=run["method"], seconds=got.get("seconds"), error=got.get("error"))
        if got.get("logits") is not None:
            row.update(fidelity(ref, got["logits"], labels))
        rows.append(row)
    for wb in wb_rows:
        row = {"model": name, **{k: v for k, v in wb.items() if k != "logits"}}
        if wb.get("logits") is not None:
            row.update(fidelity(ref, wb["logits"], labels))
        rows.append(row)
    return rows


def bench_model(name: str, args: argparse.Namespace) -> dict:
    """Both sides on one model; the scored rows and the model's run facts (saved as ``OUT_DIR/<name>.json``)."""
    case = load_case(name, n_calib=args.n_calib, n_test=args.n_test)
    grid = args.grid if args.grid != "auto" else ("full" if name == "digits_mobilenet" else "quick")
    runs = [r for r in aimet_runs(grid, args.adaround_iters) if not args.only or r["label"] in args.only]
    aimet: dict = {"meta": {"error": "skipped (--skip-aimet)"}, "runs": {}}
    facts = {"model": name, "grid": grid, "n_calib": len(case["x_cal"]), "n_test": len(case["x_test"])}
    facts.update(adaround_iters=args.adaround_iters, aimet_timeout=args.aimet_timeout, tag=args.tag)
    t0 = time.perf_counter()
    if not args.skip_aimet:
        with tempfile.TemporaryDirectory() as tmp:
            aimet = run_aimet(
                case, name, runs, Path(tmp), peers_python=args.peers_python, timeout=args.aimet_timeout
            )
    facts["aimet_seconds"] = round(time.perf_counter() - t0, 1)
    facts["aimet_version"] = aimet.get("meta", {}).get("aimet_version", "?")
    t0 = time.perf_counter()
    wb_rows = [] if args.skip_workbench else run_workbench(case, args.wb_only)
    facts["workbench_seconds"] = round(time.perf_counter() - t0, 1)
    facts["workbench_methods"] = (
        [] if args.skip_workbench else [m for m, _, _ in workbench_runs(args.wb_only)]
    )
    rows = score(name, case, aimet, runs, wb_rows)
    doc = {
        "facts": facts,
        "rows": rows[1:] if args.tag else rows,
    }  # a tagged part adds runs, not a second FP32
    (OUT_DIR / (f"{name}-{args.tag}.json" if args.tag else f"{name}.json")).write_text(
        json.dumps(doc, indent=1)
    )
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--n-calib", type=int, default=32, help="Lite1 calibration crops")
    parser.add_argument("--n-test", type=int, default=128, help="Lite1 test crops")
    parser.add_argument("--adaround-iters", type=int, default=100, help="AIMET AdaRound iterations per layer")
    parser.add_argument(
        "--grid",
        default="auto",
        choices=["auto", "full", "quick", "adaround4"],
        help="AIMET runs (auto: full on digits_mobilenet, quick on efficientnet_lite1; adaround4: AdaRound at W4 only)",
    )
    parser.add_argument(
        "--aimet-timeout", type=float, default=1800, help="seconds per model for the AIMET side"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peers-python", type=Path, default=PEERS_PY)
    parser.add_argument("--skip-aimet", action="store_true", help="workbench side only")
    parser.add_argument(
        "--only", nargs="+", default=[], help="AIMET run labels to keep (e.g. 'W4A8 per_channel tf')"
    )
    parser.add_argument("--skip-workbench", action="store_true", help="AIMET side only")
    parser.add_argument(
        "--wb-only", nargs="+", default=[], help="workbench methods to keep (e.g. 'ptq=gptq,bias_correction')"
    )
    parser.add_argument(
        "--tag",
        default="",
        help="saved as <model>-<tag>.json beside the main part (the report merges them; a part adds runs, not a "
        "second FP32 row): to run part of the grid in a second process",
    )
    parser.add_argument(
        "--report", action="store_true", help="only rebuild the report from bench/out/ptq/*.json"
    )
    parser.add_argument("--no-doc", action="store_true", help="leave docs/BENCHMARKS.md alone")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if not args.report:
        for name in args.models:
            bench_model(name, args)
    parts = [p for n in args.models for p in [OUT_DIR / f"{n}.json", *sorted(OUT_DIR.glob(f"{n}-*.json"))]]
    docs = [json.loads(p.read_text()) for p in parts if p.is_file()]
    meta = {
        "command": "make bench-ptq   # = " + " ".join(["python bench/ptq_bench.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": args.threads,
        "facts": [d["facts"] for d in docs],
    }
    rows = [r for d in docs for r in d["rows"]]
    lines = section(rows, meta)
    (OUT_DIR / "ptq.md").write_text("\n".join(lines) + "\n")
    print("\n".join(table(rows)))
    if not args.no_doc:
        from workbench.benchsuite import splice_section

        splice_section(args.doc, HEADING, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
