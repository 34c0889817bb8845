"""Peers benchmark: the per-layer bits chosen by Qualcomm AIMET AMP and NNCF HAWQ, measured with OUR quantizer and
compared with our search fronts on the same models, data and objectives.

``bench/peers/run_peers.py`` (in the peers venv ``.venv-peers``) writes ``bench/out/peers/peers.json``; this script
(main venv) turns every peer point into our :class:`~workbench.quant.QuantPlan` (the peer's weight bits per layer,
its weight granularity, its activation bits), evaluates it with our quantizer on the val and test splits (accuracy,
weight bytes and fraction of FP32, BOPs), and asks for each point whether a plan of our fronts dominates or
matches it in (test accuracy up, weight bytes down), the objectives of our search. Fronts: ``bench/out/search.json``
for digits_resnet (``bench/search_bench.py``); for digits_cnn (not covered by the search bench) our TPE search
with the same 40-evaluation budget (3 seeds) and the greedy / ILP baselines are run here. Writes the section
"## Peers: AIMET AMP and NNCF HAWQ on the same models" of docs/BENCHMARKS.md (replaced in place) and
``bench/out/peers_bench.json``.

Run: ``bash bench/peers/setup.sh && .venv-peers/bin/python bench/peers/run_peers.py && python bench/peers_bench.py``
(``python bench/peers_bench.py --prepare`` first on a fresh checkout: trains / caches the two models).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workbench.benchsuite import splice_section
from workbench.quant.spec import PlanError, QuantPlan, QuantSpec

ROOT = Path(__file__).resolve().parents[1]
PEERS_JSON = ROOT / "bench" / "out" / "peers" / "peers.json"
SEARCH_JSON = ROOT / "bench" / "out" / "search.json"
OUT_JSON = ROOT / "bench" / "out" / "peers_bench.json"
HEADING = "## Peers: AIMET AMP and NNCF HAWQ on the same models"
MODELS = ("digits_cnn", "digits_resnet")
TPE_SEEDS = 3
BOX_PP = 10.0  # the search's hypervolume reference point: FP32 accuracy - 10 pp
BUDGET = 40


PITFALLS = [
    "#### Pitfalls met on this machine (2 shared cores)",
    "",
    "- Threads: with 2 torch threads on the shared CPU, NNCF's Hessian estimate ran ~1 s per Hutchinson "
    "iteration on digits_cnn instead of 0.03 s with 1 thread (AIMET's calibration / evaluation 10x slower "
    "too); `run_peers.py` uses 1 thread.",
    "- NNCF's first call JIT-compiles its CPU extension; on the busy machine the build overran NNCF's 60 s "
    "load limit: `nncf.torch.extensions.ExtensionLoaderTimeoutException: The extension load function failed "
    "to execute within 60 seconds.` `run_peers.py` sets `NNCF_EXTENSION_LOAD_TIMEOUT=0` and builds into "
    "`bench/out/peers/torch_extensions`.",
    "- NNCF writes `original_graph.dot`, `compressed_graph.dot` and `bitwidth_per_scope.json` into the working "
    "directory; `run_peers.py` runs it in `bench/out/peers/nncf_logs/<model>`.",
    "- NNCF's HAWQ choice depends on the random probe vectors of its Hessian-trace estimate (no seed of its "
    "own): see the seed line above. Its default liberal mode lowers the activation quantizers with their "
    "weights, so several digits_resnet points run 2-bit activations and collapse (see the table); HAWQ "
    "chooses without any accuracy evaluation.",
    "- AIMET AMP's Binary phase-2 search is not monotone in the budget: a looser budget can return a larger "
    "plan (compare the digits_cnn W{8,6,4,3,2} rows).",
    "- The peers' own simulations and our quantizer disagree most at 2 bits: AIMET's `tf_enhanced` ranges keep "
    "its 2-bit layers far more accurate than our min-max per-channel quantizer with the same bits (compare the "
    "`peer's sim` and `ours` columns of the digits_resnet AMP W{8,4,2} rows); the verdicts use our quantizer "
    "for both sides, so they compare bit allocations, not calibration methods.",
]

# ============================================================================================ pure logic


def plan_from_bits(
    layers: Sequence[str],
    weight_bits: Mapping[str, int],
    act_bits: Mapping[str, int] | None = None,
    *,
    granularity: str = "per_channel",
    act_default: int = 8,
) -> QuantPlan:
    """Our plan for a peer's choice: every layer of ``layers`` gets the peer's weight bits (symmetric, at the
    peer's ``granularity``) and its input-activation bits (``act_default`` where the peer gave none); the other
    spec fields are our defaults (min-max observers), so only the bit allocation comes from the peer.

    Refuses layers the model does not have and model layers the peer left out: a peer point must cover the
    whole model to be comparable with our plans.
    """
    known = list(layers)
    unknown = sorted(set(weight_bits) - set(known))
    if unknown:
        raise PlanError(f"peer bits name layers {unknown} that the model does not have; layers: {known}")
    missing = [n for n in known if n not in weight_bits]
    if missing:
        raise PlanError(f"peer bits miss layers {missing}")
    act_bits = act_bits or {}
    unknown = sorted(set(act_bits) - set(known))
    if unknown:
        raise PlanError(f"peer activation bits name layers {unknown} that the model does not have")
    return QuantPlan(
        {
            n: QuantSpec(
                w_bits=int(weight_bits[n]), a_bits=int(act_bits.get(n, act_default)), granularity=granularity
            )
            for n in known
        }
    )


def dominance(point: Mapping[str, float], front: Sequence[Mapping[str, float]], *, acc: str = "test_accuracy",
              extra: Sequence[str] = ()) -> tuple[str, Mapping[str, float] | None]:  # fmt: skip
    """Is ``point`` dominated or matched by a plan of ``front``? Objectives: ``acc`` (higher is better) and
    ``weight_bytes`` (lower), plus every key of ``extra`` (lower is better, e.g. ``bops``).

    Returns ``("dominated", q)`` when some ``q`` is at least as good in every objective and strictly better in
    one, ``("matched", q)`` when some ``q`` equals it in every objective, else ``("not dominated", None)``.
    """
    keys = ("weight_bytes", *extra)
    matched = None
    for q in front:
        if q.get(acc) is None or q[acc] < point[acc] or any(q[k] > point[k] for k in keys):
            continue
        if q[acc] > point[acc] or any(q[k] < point[k] for k in keys):
            return "dominated", q
        matched = matched or q
    return ("matched", matched) if matched is not None else ("not dominated", None)


def front_gap(point: Mapping[str, float], front: Sequence[Mapping[str, float]], *, acc: str = "test_accuracy"
              ) -> dict[str, float | None]:  # fmt: skip
    """Where our front stands next to ``point``: its best ``acc`` at no more weight bytes, and its fewest weight
    bytes at no less ``acc`` (None when no plan qualifies)."""
    at_size = [q[acc] for q in front if q.get(acc) is not None and q["weight_bytes"] <= point["weight_bytes"]]
    at_acc = [q["weight_bytes"] for q in front if q.get(acc) is not None and q[acc] >= point[acc]]
    return {
        "best_acc_at_size": max(at_size) if at_size else None,
        "min_weight_bytes_at_acc": min(at_acc) if at_acc else None,
    }


def bits_string(layers: Sequence[str], bits: Mapping[str, int] | None) -> str:
    """Bits in layer order, ``8/4/4/8``; ``-`` for layers without an entry."""
    bits = bits or {}
    return "/".join(str(bits[n]) if n in bits else "-" for n in layers)


splice = splice_section  # one shared section writer (workbench.benchsuite)


def load_peers(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(
            f"{path} is missing: run `bash bench/peers/setup.sh` and `.venv-peers/bin/python "
            "bench/peers/run_peers.py` first"
        )
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or "points" not in doc:
        raise SystemExit(f"{path} is not a peers JSON (no 'points')")
    return doc


def _run_peers_module():
    """bench/peers/run_peers.py as a module (its peer imports are lazy), for the shared digest helpers."""
    spec = importlib.util.spec_from_file_location("run_peers", ROOT / "bench" / "peers" / "run_peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ============================================================================================ measuring


class Measurer:
    """Our quantizer on one task: val / test accuracy (the search's PlanEvaluator) and cost (its CostModel)."""

    def __init__(self, task) -> None:
        from workbench.search.objectives import CostModel, EvalCache, PlanEvaluator

        cache = EvalCache()
        self.task = task
        self.val = PlanEvaluator(task, split="val", cache=cache)
        self.test = PlanEvaluator(task, split="test", cache=cache)
        self.cost = CostModel(task.model, task.example_input())
        self.fp32 = self.cost.fp32_cost

    def __call__(self, plan: QuantPlan) -> dict[str, float]:
        c = self.cost(plan)
        return {
            "accuracy": self.val(plan)[0],
            "test_accuracy": self.test(plan)[0],
            "weight_bytes": c.weight_bytes,
            "weight_fraction": c.weight_bytes / self.fp32.weight_bytes,
            "size_bytes": c.size_bytes,
            "bops": c.bops,
            "avg_weight_bits": c.avg_weight_bits,
            "avg_act_bits": c.avg_act_bits,
        }


def our_fronts(name: str, task, measurer: Measurer, search_json: Path, rerun: bool) -> dict[str, Any]:
    """Our fronts on ``name``: {label: [front plan rows]} plus provenance. TPE fronts are per seed."""
    rows: list[dict] = []
    source = ""
    if name == "digits_resnet" and search_json.is_file() and not rerun:
        rows = json.loads(search_json.read_text())["rows"]
        source = f"{search_json.relative_to(ROOT)} (bench/search_bench.py, budget 40, 3 seeds)"
    if not rows:
        from workbench.search import SearchConfig, run_search
        from workbench.sensitivity import analyze_sensitivity

        common = dict(storage=":memory:", track=False, progress=False, final_split="test", budget=BUDGET)
        sens = analyze_sensitivity(task, track=False)
        for seed in range(TPE_SEEDS):
            t0 = time.perf_counter()
            r = run_search(task, SearchConfig(strategy="tpe", seed=seed, **common))
            rows.append({"strategy": "tpe", "seed": seed, "real_evaluations": r.real_evaluations,
                         "seconds": time.perf_counter() - t0, "front_plans": r.to_dict()["front"]})  # fmt: skip
        for strategy in ("greedy", "ilp"):
            t0 = time.perf_counter()
            r = run_search(task, SearchConfig(strategy=strategy, seed=0, **common), sensitivity=sens)
            rows.append({"strategy": strategy, "seed": 0, "real_evaluations": r.real_evaluations,
                         "seconds": time.perf_counter() - t0, "front_plans": r.to_dict()["front"]})  # fmt: skip
        source = (
            f"run here: TPE budget {BUDGET} x {TPE_SEEDS} seeds, greedy and ILP baselines (budget {BUDGET})"
        )
    fronts: dict[str, list[dict]] = {}
    for r in rows:
        label = f"{r['strategy']} seed {r['seed']}"
        fronts[label] = [
            {k: p[k] for k in ("accuracy", "test_accuracy", "weight_bytes", "bops", "label")}
            | {"plan": p["plan"]}
            for p in r["front_plans"]
        ]
    # the stored fronts were measured by the search run: measure the TPE seed-0 front again here, as a check that
    # they and the peer points are measured by the same code on the same data
    check = []
    for p in fronts.get("tpe seed 0", []):
        m = measurer(QuantPlan.from_dict(p["plan"]))
        check.append(max(abs(m["accuracy"] - p["accuracy"]), abs(m["test_accuracy"] - p["test_accuracy"]),
                         abs(m["weight_bytes"] - p["weight_bytes"])))  # fmt: skip
    return {
        "source": source,
        "fronts": fronts,
        "runs": [{k: r.get(k) for k in ("strategy", "seed", "real_evaluations", "seconds")} for r in rows],
        "recheck_max_abs_diff": max(check) if check else None,
    }


# ============================================================================================ report


def _fmt_acc(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _verdict(v: str) -> str:
    return {"dominated": "yes", "matched": "matched"}.get(v, "**NO**")


def _seed_verdict(per_seed: Sequence[str]) -> str:
    """``yes (3/3 seeds)``, ``**NO** (0/3 seeds)`` or ``partly (1/3 seeds)``; matched counts as covered."""
    n = len(per_seed)
    k = sum(v in ("dominated", "matched") for v in per_seed)
    word = "yes" if k == n else ("**NO**" if k == 0 else "partly")
    return f"{word} ({k}/{n} seeds)"


def evaluate_points(peers: dict, name: str, task, measurer: Measurer, ours: dict) -> list[dict]:
    layers = peers["models"][name]["layers"]
    tpe = [v for k, v in ours["fronts"].items() if k.startswith("tpe seed")]
    union = [q for v in ours["fronts"].values() for q in v]
    out = []
    for p in [p for p in peers["points"] if p.get("model") == name]:
        base = {k: p.get(k) for k in ("peer", "version", "method", "setting", "granularity", "weight_bits",
                                      "act_bits", "peer_val", "peer_test", "seconds", "achieved_ratio",
                                      "peer_relative_bitops", "error")}  # fmt: skip
        if p.get("error"):
            out.append({**base, "variant": "as the peer ran it"})
            continue
        gran = p.get("granularity", "per_channel")
        variants = [(f"as the peer ran it ({gran.replace('_', '-')})", gran, p.get("act_bits"))]
        if p.get("granularity") != "per_channel" or any(b != 8 for b in (p.get("act_bits") or {}).values()):
            variants.append(("its weight bits in our space (per-channel, A8)", "per_channel", None))
        for label, gran, act in variants:
            row = {**base, "variant": label}
            try:
                plan = plan_from_bits(layers, p["weight_bits"], act, granularity=gran)
            except PlanError as e:
                out.append({**row, "error": f"not expressible as our plan: {e}"})
                continue
            m = measurer(plan)
            row.update(ours=m, plan_granularity=gran, plan_act_bits={n: s.a_bits for n, s in plan.items()})
            for split, key in (("test", "test_accuracy"), ("val", "accuracy")):
                per_seed = [dominance(m, f, acc=key)[0] for f in tpe]
                v_union, q = dominance(m, union, acc=key)
                row[f"tpe_{split}"] = per_seed
                row[f"union_{split}"] = v_union
                row[f"union_{split}_by"] = None if q is None else q["label"]
                row[f"gap_{split}"] = front_gap(m, union, acc=key)
            row["gap_tpe_test"] = front_gap(m, [q for f in tpe for q in f])
            # outside the box our search's hypervolume counts (accuracy >= FP32 - 10 pp): a front need not reach it
            row["below_box"] = m["test_accuracy"] < measurer.test.fp32_accuracy - BOX_PP / 100
            row["union_test_with_bops"] = dominance(m, union, extra=("bops",))[0]
            out.append(row)
    return out


def model_section(name: str, peers: dict, rows: list[dict], measurer: Measurer) -> list[str]:
    info = peers["models"][name]
    layers = info["layers"]
    fp32_wb = measurer.fp32.weight_bytes
    w8a8_bops = measurer.cost(plan_from_bits(layers, dict.fromkeys(layers, 8))).bops
    lines = [
        f"### {name} (FP32 val {info['fp32_val']:.4f}, test {info['fp32_test']:.4f}; FP32 weights "
        f"{fp32_wb:,} bytes; W8A8 {w8a8_bops / 1e6:.1f} M BOPs per image)",
        "",
        f"Layer order of the bit strings: {', '.join(f'`{n}`' for n in layers)}.",
        "",
        "| peer | setting | evaluated as | weight bits | act bits | peer's sim val / test | ours val / test | "
        "weight bytes (frac of FP32) | BOPs (M) | time (s) | dominated by our TPE fronts (test)? | "
        "by any of our fronts (test)? |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        setting = _setting(r)
        if r.get("error"):
            err = r["error"].splitlines()[0].replace("|", "\\|")
            lines.append(f"| {r['peer']} {r.get('version') or ''} | {setting} | {r['variant']} | FAILED: {err} |"
                         + " |" * 8)  # fmt: skip
            continue
        m = r["ours"]
        act = bits_string(layers, r["plan_act_bits"])
        act = "8" if set(r["plan_act_bits"].values()) == {8} else act
        tpe = _seed_verdict(r["tpe_test"])
        union = _verdict(r["union_test"])
        if r["below_box"]:
            tpe, union = tpe + "; below FP32 - 10 pp", union + "; below FP32 - 10 pp"
        peer_sim = f"{_fmt_acc(r['peer_val'])} / {_fmt_acc(r['peer_test'])}" if "our space" not in r["variant"] \
            else "(not run by the peer)"  # fmt: skip
        lines.append(
            f"| {r['peer']} {r['version']} | {setting} | {r['variant']} | "
            f"{bits_string(layers, r['weight_bits'])} | {act} | {peer_sim} | "
            f"{m['accuracy']:.4f} / {m['test_accuracy']:.4f} | {m['weight_bytes']:,} ({m['weight_fraction']:.4f}) | "
            f"{m['bops'] / 1e6:.1f} ({m['bops'] / w8a8_bops:.2f} of W8A8) | "
            f"{r['seconds']:.1f} | {tpe} | {union} |"
        )
    return lines


def _setting(r: dict) -> str:
    s = r.get("setting") or {}
    if r.get("peer") == "AIMET":
        if "allowed_drop_pp" in s:
            return f"{r['method']}, drop <= {s['allowed_drop_pp']:g} pp"
        return r.get("method") or ""
    ratio = s.get("compression_ratio")
    achieved = r.get("achieved_ratio")
    return (f"{r.get('method')}, ratio {ratio:g}" + (f" (got {achieved:g})" if achieved else "")
            + (f", trace seed {s['trace_seed']}" if "trace_seed" in s else ""))  # fmt: skip


def not_dominated_notes(name: str, rows: list[dict], fp32_wb: int) -> list[str]:
    out = []
    for r in rows:
        if r.get("error") or r["union_test"] in ("dominated", "matched"):
            continue
        g = r["gap_test"]
        best = g["best_acc_at_size"]
        small = g["min_weight_bytes_at_acc"]
        out.append(
            f"- {name}, {r['peer']} {_setting(r)} [{r['variant']}]: test {r['ours']['test_accuracy']:.4f} at "
            f"{r['ours']['weight_fraction']:.4f} of FP32. Our best test accuracy at no more weight: "
            f"{_fmt_acc(best)}; our smallest plan at no lower test accuracy: "
            + (
                f"{small / fp32_wb:.4f} of FP32."
                if small is not None
                else "none (no plan of ours is as accurate)."
            )
        )
    return out


def summary_lines(name: str, rows: list[dict], fp32_wb: int) -> list[str]:
    """Counts of the verdicts, the rows no TPE seed covers (with the gap), NNCF's spread over trace seeds."""
    ok = [r for r in rows if not r.get("error")]
    failed = len(rows) - len(ok)

    def cover(r: dict, split: str) -> int:
        return sum(v in ("dominated", "matched") for v in r[f"tpe_{split}"])

    n = len(ok[0]["tpe_test"]) if ok else 0
    out = [f"**{name}**: {len(ok)} evaluated rows" + (f", {failed} failed peer runs" if failed else "") + "."]
    for split in ("test", "val"):
        every = sum(cover(r, split) == n for r in ok)
        some = sum(0 < cover(r, split) < n for r in ok)
        none = sum(cover(r, split) == 0 for r in ok)
        union = sum(r[f"union_{split}"] in ("dominated", "matched") for r in ok)
        out.append(
            f"On {split}: our plain TPE front (40 evaluations) dominates or matches {every} in all {n} seeds, "
            f"{some} in some seeds and **{none} in no seed**; the union of all our fronts covers {union} of "
            f"{len(ok)}."
        )
    n_box = sum(cover(r, "test") == 0 and r["below_box"] for r in ok)
    out.append(
        f"Rows that no TPE seed covers on test ({sum(cover(r, 'test') == 0 for r in ok)}, of which {n_box} "
        "score below FP32 - 10 pp):"
    )
    out.append("")
    for r in ok:
        if cover(r, "test"):
            continue
        g = r["gap_tpe_test"]
        small = g["min_weight_bytes_at_acc"]
        box = " (below FP32 - 10 pp, outside the region our search scores)" if r["below_box"] else ""
        out.append(
            f"- {r['peer']} {_setting(r)} [{r['variant']}]: test {r['ours']['test_accuracy']:.4f}{box} at "
            f"{r['ours']['weight_fraction']:.4f} of FP32; the 3 TPE fronts reach {_fmt_acc(g['best_acc_at_size'])} "
            "at no more weight and need "
            + (f"{small / fp32_wb:.4f} of FP32" if small is not None else "— (never that accurate)")
            + " for no lower test accuracy."
        )
    nncf = {}
    for r in ok:
        s = r.get("setting") or {}
        if r["peer"] == "NNCF" and "trace_seed" in s and r["variant"].startswith("as the peer"):
            nncf.setdefault(s["compression_ratio"], []).append(
                (s["trace_seed"], r["peer_test"], r["achieved_ratio"])
            )
    if nncf:
        parts = [
            f"ratio {ratio:g}: " + ", ".join(f"seed {sd} {acc:.4f} (got {got:g})" for sd, acc, got in v)
            for ratio, v in nncf.items()
        ]
        out += ["", "NNCF HAWQ over Hutchinson seeds (peer's own sim, test): " + "; ".join(parts) + "."]
    return [*out, ""]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers-json", default=str(PEERS_JSON))
    parser.add_argument("--search-json", default=str(SEARCH_JSON))
    parser.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    parser.add_argument("--json", default=str(OUT_JSON))
    parser.add_argument("--rerun-ours", action="store_true", help="run our searches for digits_resnet too")
    parser.add_argument("--prepare", action="store_true", help="only train / cache the two models and exit")
    parser.add_argument(
        "--run-peers",
        action="store_true",
        help="first set up .venv-peers (bench/peers/setup.sh, kept if ready) and run the peers there",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from workbench.tasks import load_task

    torch.set_num_threads(args.threads)
    if args.prepare:
        for name in MODELS:
            load_task(name, progress=False)
        print("models cached:", ", ".join(MODELS))
        return
    t_all = time.perf_counter()
    if args.run_peers:  # the peers run in their own venv, on the models cached here
        import subprocess

        for name in MODELS:
            load_task(name, progress=False)
        subprocess.run(["bash", str(ROOT / "bench" / "peers" / "setup.sh")], check=True)
        venv_python = ROOT / ".venv-peers" / "bin" / "python"
        subprocess.run(
            [str(venv_python), str(ROOT / "bench" / "peers" / "run_peers.py"), "--out", str(args.peers_json)],
            check=True,
            cwd=ROOT / "bench" / "out" / "peers",
        )
    peers = load_peers(Path(args.peers_json))
    rp = _run_peers_module()
    setup_log = ROOT / "bench" / "out" / "peers" / "setup.log"
    install = [ln for ln in setup_log.read_text().splitlines() if ln.startswith("== install seconds")] \
        if setup_log.is_file() else []  # fmt: skip
    install_s = (
        f"{install[-1].split(':')[1].split('(')[0].strip()} s" if install else "see bench/out/peers/setup.log"
    )
    result: dict[str, Any] = {"peers_json": str(args.peers_json), "models": {}}
    doc_models: list[str] = []
    notes: list[str] = []
    summaries: list[str] = []
    for name in [m for m in MODELS if m in peers["models"]]:
        task = load_task(name, progress=False)
        digests = {
            "state_digest": rp.state_digest(task.model),
            "calib_digest": rp.split_digest(task.calib_loader),
            "val_digest": rp.split_digest(task.val_loader),
            "test_digest": rp.split_digest(task.test_loader),
        }
        same = {k: digests[k] == peers["models"][name].get(k) for k in digests}
        measurer = Measurer(task)
        t0 = time.perf_counter()
        ours = our_fronts(name, task, measurer, Path(args.search_json), args.rerun_ours)
        ours_s = time.perf_counter() - t0
        rows = evaluate_points(peers, name, task, measurer, ours)
        result["models"][name] = {
            "same_weights_and_data_as_peers": same,
            "fp32_weight_bytes": measurer.fp32.weight_bytes,
            "fp32_bops": measurer.fp32.bops,
            "ours": {k: v for k, v in ours.items()} | {"seconds": ours_s},
            "points": rows,
        }
        doc_models += model_section(name, peers, rows, measurer)
        doc_models += [
            "",
            f"Our fronts: {ours['source']} ({ours_s:.0f} s here); re-measuring the TPE seed-0 front here "
            f"differs from the stored numbers by at most {ours['recheck_max_abs_diff']}. Same weights and data "
            f"in both venvs (state / calib / val / test digests): "
            f"{'yes' if all(same.values()) else 'NO: ' + str(same)}.",
            "",
        ]
        notes += not_dominated_notes(name, rows, measurer.fp32.weight_bytes)
        summaries += summary_lines(name, rows, measurer.fp32.weight_bytes)
    total_s = time.perf_counter() - t_all
    aimet_v = peers.get("aimet_version", "?")
    nncf_v = peers.get("nncf_version", "?")
    all_rows = [r for m in result["models"].values() for r in m["points"] if not r.get("error")]
    n_no = sum(r["union_test"] == "not dominated" for r in all_rows)
    peer_s = peers.get("seconds")
    lines = [
        HEADING,
        "",
        "Commands (also `make bench-peers`):",
        "",
        "```bash",
        "bash bench/peers/setup.sh                        # .venv-peers: torch 2.14.1, aimet-torch "
        f"{aimet_v}, nncf {nncf_v}",
        ".venv-peers/bin/python bench/peers/run_peers.py  # -> bench/out/peers/peers.json",
        "python bench/peers_bench.py                      # our quantizer, our fronts -> this section",
        "```",
        "",
        f"Install: {install_s} (one venv for both peers, "
        f"`pip check` clean). Peer runs: {peer_s:.0f} s in all (1 torch thread), this comparison "
        f"{total_s:.0f} s."
        if peer_s
        else "",
        "",
        "What runs. The peers get our trained models (the `data/models` cache, imported from the repo), our "
        "calibration split (256 training images) and make every accuracy decision on our validation split "
        "(270 images), the split our search decides on; the test split (450 images) is only measured. "
        "AIMET AMP (`choose_mixed_precision`, Binary search, phase-1 sensitivities computed once per candidate "
        "set and reused for the other budgets; QuantSim `post_training_tf_enhanced`, its default config: "
        "weights symmetric per-channel, activations 8-bit; BatchNorm folded first with `fold_all_batch_norms`) "
        "at allowed drops of 0.5 / 1 / 2 pp of val accuracy, candidates A8 x W{8,4,2} and A8 x W{8,6,4,3,2}, "
        "plus AIMET uniform W8A8 / W4A8. NNCF HAWQ precision init (legacy `create_compressed_model`, "
        "target_device TRIAL, bits [2,4,8], default liberal bit-width assignment: weights symmetric "
        "per-tensor, activation quantizers lowered with their adjacent weights; Hessian traces from all 256 "
        "calibration images, 200 Hutchinson iterations, tolerance 1e-4, traces estimated once per seed and "
        "reused across ratios) at compression ratios 1.5 / 2 / 3 (INT8 bit complexity / mixed bit complexity, "
        "not a size), for two seeds of the Hutchinson probe vectors. No fine-tuning anywhere.",
        "",
        "How it is compared. Each peer point becomes our QuantPlan with the peer's per-layer weight bits, its "
        "granularity and its activation bits (a layer's input), everything else our defaults (min-max "
        "observers); it is evaluated by our quantizer exactly like a search trial (`PlanEvaluator`, "
        "`CostModel`): accuracy on val and test, weight bytes (codes + scales) and BOPs. NNCF points (per-tensor, "
        "mixed activations) are also evaluated with the same weight bits in our search space (per-channel, "
        "activations 8-bit). The verdict columns ask whether a plan of our fronts is at least as accurate on "
        "test with no more weight bytes (strictly better in one: `yes`; equal in both: `matched`) — the "
        "objectives our search optimises; BOPs are reported but not part of the verdict (our search does not "
        "minimise them). `our TPE fronts`: plain TPE, 40 real evaluations per seed, 3 seeds; `any of our "
        "fronts`: every front plan of our runs (for digits_resnet all 14 strategies of the Search section, for "
        "digits_cnn TPE x 3 seeds, greedy and ILP). Peer's sim = the peer's own simulated model (its quantizers, "
        "its calibration), measured on our splits.",
        "",
        *doc_models,
        "#### Verdicts",
        "",
        *summaries,
        f"Peer points that no plan of any of our fronts dominates or matches on test ({n_no} of {len(all_rows)} "
        "evaluated rows):",
        "",
        *(notes or ["- none"]),
        "",
        *PITFALLS,
        "",
    ]
    lines = [ln for ln in lines if ln is not None]
    splice(Path(args.out), HEADING, lines)
    result["seconds"] = total_s
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print("\n".join(lines))
    print(
        f"median peer time per point: {statistics.median(r['seconds'] for r in all_rows or [{'seconds': 0}]):.1f} s"
    )


if __name__ == "__main__":
    main()
