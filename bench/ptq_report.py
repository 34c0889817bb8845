"""The report half of bench/ptq_bench.py: fidelity metrics, the Markdown tables and the BENCHMARKS section."""

from __future__ import annotations

import torch
import torch.nn.functional as F

HEADING = "## Post-training quantization vs AIMET"

# ------------------------------------------------------------------------------------------------ metrics


def fidelity(ref: torch.Tensor, q: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
    """Logit cosine (mean over inputs), KL(softmax ref || softmax q), top-5 overlap (|top5 ∩ top5| / 5), top-1
    agreement with FP32 and, given labels, accuracy."""
    ref, q = ref.double(), q.double()
    k = min(5, ref.shape[1])
    top_r, top_q = ref.topk(k, dim=1).indices, q.topk(k, dim=1).indices
    overlap = (top_r[:, :, None] == top_q[:, None, :]).any(-1).double().mean(1)
    kl = F.kl_div(F.log_softmax(q, 1), F.log_softmax(ref, 1), log_target=True, reduction="none").sum(1)
    out = {
        "cosine": float(F.cosine_similarity(ref, q, dim=1).mean()),
        "kl": float(kl.mean()),
        "top5": float(overlap.mean()),
        "top1_agree": float((ref.argmax(1) == q.argmax(1)).double().mean()),
    }
    if labels is not None:
        out["accuracy"] = float((q.argmax(1) == labels).double().mean())
    return out


def _fmt(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return "—"
    if key == "kl":
        return f"{value:.4f}"
    return f"{value:.1f}" if key == "seconds" else f"{value:.3f}"


def table(rows: list[dict]) -> list[str]:
    keys = ["cosine", "kl", "top5", "top1_agree", "accuracy", "seconds"]
    out = [
        "| model | setting | tool | method | logit cosine | KL | top-5 overlap | top-1 agreement | accuracy | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("error"):
            figures = f"error: `{r['error'][:120]}` | | | | | {_fmt(r, 'seconds')}"
        else:
            figures = " | ".join(_fmt(r, k) for k in keys)
        out.append(f"| {r['model']} | {r['setting']} | {r['tool']} | {r['method']} | {figures} |")
    return out


def best_table(rows: list[dict]) -> list[str]:
    """Per model and setting: the best method of each tool by logit cosine."""
    out = [
        "| model | setting | best AIMET (cosine / top-1 agr.) | best workbench (cosine / top-1 agr.) |",
        "|---|---|---|---|",
    ]
    keyset = sorted(
        {(r["model"], r["setting"]) for r in rows if r["setting"] != "-"}, key=lambda k: (k[0], k[1])
    )
    for model, setting in keyset:
        cells = []
        for tool in ("AIMET", "workbench"):
            cand = [
                r
                for r in rows
                if r["model"] == model
                and r["setting"] == setting
                and r["tool"].startswith(tool)
                and "cosine" in r
            ]
            best = max(cand, key=lambda r: r["cosine"], default=None)
            cells.append(
                "—" if best is None else f"{best['method']}: {best['cosine']:.3f} / {best['top1_agree']:.3f}"
            )
        out.append(f"| {model} | {setting} | {cells[0]} | {cells[1]} |")
    return out


def _not_run(row: dict) -> bool:
    return str(row.get("error") or "").startswith("not run")


def section(rows: list[dict], meta: dict) -> list[str]:
    """The BENCHMARKS section. Runs the time limit cut (error "not run ...") are listed in one line, not as rows,
    and a run measured by a second process (``--tag``) stands in for its cut twin."""
    from workbench.benchsuite.machine import machine_info

    info = machine_info()
    done = {(r["model"], r["setting"], r["method"]) for r in rows if not r.get("error")}
    cut = [r for r in rows if _not_run(r) and (r["model"], r["setting"], r["method"]) not in done]
    rows = [r for r in rows if not _not_run(r)]
    cut_line = "Not run (the AIMET side's time limit, `--aimet-timeout`): " + "; ".join(
        f"{r['model']} {r['setting']} {r['method']}" for r in cut
    )
    return [
        HEADING,
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        f"Measured {meta['date']} on {info['cpu']} ({info['cores']} cores, torch threads {meta['threads']}), "
        f"aimet-torch in its own venv `.venv-peers`, torch {torch.__version__}.",
        "",
        *[_facts_line(f) for f in meta["facts"]],
        "",
        *NOTES,
        "",
        "Best method per tool (by logit cosine to FP32):",
        "",
        *best_table(rows),
        "",
        "Every method:",
        "",
        *table(rows),
        "",
        *([cut_line + ".", ""] if cut else []),
    ]


def _facts_line(f: dict) -> str:
    methods = f.get("workbench_methods", [])
    ptq = f"methods {', '.join(f'`{m}`' for m in methods)}" if methods else "not run in this part"
    return (
        f"- {f['model']}{' (part ' + f['tag'] + ')' if f.get('tag') else ''}: {f['n_calib']} calibration / "
        f"{f['n_test']} test inputs; AIMET {f['aimet_version']} grid `{f['grid']}` (AdaRound "
        f"{f.get('adaround_iters', '?')} iterations per layer, time limit {f.get('aimet_timeout', '?')} s), "
        f"{f['aimet_seconds']:.0f} s (AIMET side, import included); workbench {ptq}, {f['workbench_seconds']:.0f} s."
    )


NOTES = [
    "What runs. Both tools get the same float model (the digits model from the zoo cache; EfficientNet-Lite1 "
    "pretrained, every `Conv2dStaticSamePadding` replaced by `ZeroPad2d` + `nn.Conv2d` with the same weights; "
    "state_dict digests checked across the two venvs), the same calibration and test inputs, and are scored by "
    "the same code against the FP32 logits: mean logit cosine, KL(FP32 || quantized), top-5 overlap, top-1 "
    "agreement (and accuracy on digits, whose test split is labelled). digits_mobilenet: calibration = the task's "
    "256 calibration images, test = its 450 test images. Lite1: seeded random resized crops of scikit-image's "
    "sample photos, 240x240, ImageNet mean/std; calibration and test crops come from different seeds but the same "
    "photos. No fine-tuning anywhere. W8A8 / W4A8 = 8- or 4-bit weights, 8-bit activations.",
    "",
    "AIMET (aimet-torch 2.42): `prepare_model`, then `equalize_model` (CLE: BN fold, cross-layer scaling, "
    "high-bias fold) or `fold_all_batch_norms`, optionally `Adaround.apply_adaround` (weights; encodings frozen "
    "in the sim), then `QuantizationSimModel` with AIMET's default per-tensor or per-channel config file and "
    "`compute_encodings` on the calibration inputs. `tf` = min-max ranges, `tf_enhanced` = AIMET's SQNR-based "
    "ranges. AIMET quantizes the model input and every op output (adds included) to 8 bits; weights symmetric. "
    "AIMET 2.42 has no bias correction (the v1 API is gone), and since aimet-torch 2.4 CLE does not scale "
    "conv-ReLU6-conv pairs (it warns; both models use ReLU6 throughout), so CLE is mostly BN fold + high-bias "
    "fold here.",
    "",
    "Workbench: `quantize_model(model, QuantPlan.uniform(model, QuantSpec(w_bits, 8, granularity)), calib)` "
    "with min-max or MSE observers, and with `ptq=[...]` steps where this checkout has them. The workbench "
    "quantizes each conv / linear layer's input (activations) and weights; BN folded.",
]
