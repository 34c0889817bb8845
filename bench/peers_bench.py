"""Peers benchmark: the per-layer bits chosen by Qualcomm AIMET AMP and NNCF HAWQ, measured with OUR quantizer and
compared with the front of our default search (``auto``) on the same models, data and objectives.

``bench/peers/run_peers.py`` (in the peers venv ``.venv-peers``) writes ``bench/out/peers/peers.json``; this script
(main venv) turns every peer point into our :class:`~workbench.quant.QuantPlan` (the peer's weight bits per layer,
its weight granularity, its activation bits), evaluates it with our quantizer on the val and test splits (accuracy,
weight bytes, BOPs), and asks for each point whether a plan of our front dominates or matches it in (test accuracy
up, weight bytes down) and, separately, in (test accuracy up, BOPs down).

Our front: the default search, ``run_search(task, SearchConfig(budget=20, max_avg_weight_bits=B))`` (20 real
evaluations on the validation split; the front's plans are then measured on test), run at B = 3, 4, 5 and 6
average weight bits over the searched layers, the four fronts pooled (every front plan of every run). Writes the
section "## Peers: AIMET AMP and NNCF HAWQ on the same models" of docs/BENCHMARKS.md (replaced in place) and
``bench/out/peers_bench.json``; the markdown is built by ``bench/peers/report.py``.

Run: ``bash bench/peers/setup.sh && .venv-peers/bin/python bench/peers/run_peers.py && python bench/peers_bench.py``
(``python bench/peers_bench.py --prepare`` first on a fresh checkout: trains / caches the models).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workbench.benchsuite import machine_info, splice_section
from workbench.quant.spec import PlanError, QuantPlan, QuantSpec

ROOT = Path(__file__).resolve().parents[1]
PEERS_JSON = ROOT / "bench" / "out" / "peers" / "peers.json"
OUT_JSON = ROOT / "bench" / "out" / "peers_bench.json"
HEADING = "## Peers: AIMET AMP and NNCF HAWQ on the same models"
MODELS = ("digits_cnn", "digits_resnet", "digits_mobilenet")
# EfficientNet-Lite1 (pretrained, fidelity to FP32 on photo crops) has a section, peers JSON and result of its own
LITE1 = "lite1"
LITE1_HEADING = "## Peers on EfficientNet-Lite1: AIMET AMP and NNCF HAWQ, fidelity to FP32"
LITE1_PEERS_JSON = ROOT / "bench" / "out" / "peers" / "peers_lite1.json"
LITE1_OUT_JSON = ROOT / "bench" / "out" / "peers_bench_lite1.json"
# the peers' settings on Lite1 (a QuantSim evaluation of its 128 val crops takes about a minute on 2 cores):
# budgets as drops of val cosine (AIMET's own W8A8 scores 0.944, so smaller drops leave AMP nothing to lower;
# our fronts span cosine 0.3-0.98 at 3-6 bits), AMP candidates W{8,4,3} with
# phase 1 on the first 8 val crops, HAWQ's Hessian on 16 calibration crops in batches of 8
LITE1_PEER_ARGS = ("--drops", "6", "10", "20", "--aimet-candidates", "8,4,3", "--aimet-phase1-inputs", "8",
                   "--hawq-data-points", "16", "--hawq-batch", "8", "--hawq-seeds", "0")  # fmt: skip
BUDGETS = (3.0, 4.0, 5.0, 6.0)  # average weight bits over the searched layers (element-weighted)
EVALUATIONS = 20  # real evaluations of each search run
BOX_PP = 10.0  # the search's hypervolume reference point: FP32 accuracy - 10 pp
OBJECTIVE_PAIRS: dict[str, tuple[str, ...]] = {"bytes": ("weight_bytes",), "bops": ("bops",)}


def _load_module(name: str, path: Path):
    """A file of bench/peers as a module (run_peers.py imports its peer libraries lazily; report.py none)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


report = _load_module("peers_report", ROOT / "bench" / "peers" / "report.py")

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
              costs: Sequence[str] = ("weight_bytes",)) -> tuple[str, Mapping[str, Any] | None]:  # fmt: skip
    """Is ``point`` dominated or matched by a plan of ``front``? Objectives: ``acc`` (higher is better) and every
    key of ``costs`` (lower is better: ``weight_bytes``, ``bops`` or both).

    Returns ``("dominated", q)`` when some ``q`` is at least as good in every objective and strictly better in
    one, ``("matched", q)`` when some ``q`` equals it in every objective, else ``("not dominated", None)``.
    """
    if not costs:
        raise ValueError("costs must name at least one cost key, e.g. ('weight_bytes',) or ('bops',)")
    matched = None
    for q in front:
        if q.get(acc) is None or q[acc] < point[acc] or any(q[k] > point[k] for k in costs):
            continue
        if q[acc] > point[acc] or any(q[k] < point[k] for k in costs):
            return "dominated", q
        matched = matched or q
    return ("matched", matched) if matched is not None else ("not dominated", None)


def front_gap(point: Mapping[str, float], front: Sequence[Mapping[str, float]], *, acc: str = "test_accuracy",
              cost: str = "weight_bytes") -> dict[str, float | None]:  # fmt: skip
    """Where our front stands next to ``point``: its best ``acc`` at no more ``cost``, and its least ``cost`` at
    no less ``acc`` (None when no plan qualifies)."""
    rows = [q for q in front if q.get(acc) is not None]
    at_cost = [q[acc] for q in rows if q[cost] <= point[cost]]
    at_acc = [q[cost] for q in rows if q[acc] >= point[acc]]
    return {
        "best_acc_at_cost": max(at_cost) if at_cost else None,
        "min_cost_at_acc": min(at_acc) if at_acc else None,
    }


def verdicts(point: Mapping[str, float], front: Sequence[Mapping[str, Any]], *, acc: str = "test_accuracy",
             bops_front: Sequence[Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """For each objective pair of :data:`OBJECTIVE_PAIRS` (``bytes``: acc and weight bytes; ``bops``: acc and
    BOPs): the verdict, the label of the plan that covers the point (None) and the front's gap to it. The BOPs
    pair is judged on ``bops_front`` when given (the runs under a BOPs budget), else on ``front``."""
    out = {}
    for name, costs in OBJECTIVE_PAIRS.items():
        plans = bops_front if name == "bops" and bops_front is not None else front
        v, q = dominance(point, plans, acc=acc, costs=costs)
        out[name] = {
            "verdict": v,
            "by": None if q is None else q.get("label"),
            "gap": front_gap(point, plans, acc=acc, cost=costs[0]),
        }
    return out


bits_string = report.bits_string  # ``8/4/4/8`` in layer order; ``-`` for layers without an entry
count = report.count  # verdict counts per objective pair


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


FRONT_KEYS = ("accuracy", "test_accuracy", "weight_bytes", "bops", "space_avg_bits", "label")
# the two sets of runs of the default search: a budget of element-weighted average weight bits with the default
# objectives (accuracy, weight bytes), and a BOPs budget (MACs-weighted average weight bits) with (accuracy, BOPs)
RUN_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "avg_bits": ("max_avg_weight_bits", ("accuracy", "weight_size")),
    "mac_bits": ("max_avg_mac_bits", ("accuracy", "bops")),
}


def our_front(task, measurer: Measurer, *, budgets: Mapping[str, Sequence[float]], seeds: Sequence[int],
              evaluations: int) -> dict[str, Any]:  # fmt: skip
    """The default search (``auto``) at each budget of each kind of :data:`RUN_KINDS` (``budgets``: kind -> bits)
    and each seed; the front plans of all runs pooled (``front``, each row tagged with its kind, budget and seed),
    the runs' provenance, and a re-measurement of the first run's front by :class:`Measurer` (the peer points'
    code path) as a check."""
    from workbench.search import SearchConfig, run_search

    runs, front = [], []
    for seed, kind in [(sd, k) for sd in seeds for k in budgets]:
        knob, objectives = RUN_KINDS[kind]
        for b in budgets[kind]:
            cfg = SearchConfig(budget=evaluations, objectives=objectives, seed=seed, storage=":memory:",
                               track=False, progress=False, **{knob: b})  # fmt: skip
            t0 = time.perf_counter()
            r = run_search(task, cfg)
            seconds = time.perf_counter() - t0
            rows = r.to_dict()["front"]
            runs.append({"kind": kind, "budget": b, "seed": seed, "strategy": r.config.strategy,
                         "seconds": seconds, "real_evaluations": r.real_evaluations,
                         "final_evaluations": r.final_evaluations, "front_size": len(rows)})  # fmt: skip
            for p in rows:
                front.append({k: p[k] for k in FRONT_KEYS} | {"kind": kind, "budget": b, "seed": seed,
                                                               "plan": p["plan"]})  # fmt: skip
    check = []
    first = runs[0] if runs else {}
    for p in [q for q in front if all(q[k] == first[k] for k in ("kind", "budget", "seed"))]:
        m = measurer(QuantPlan.from_dict(p["plan"]))
        check.append(max(abs(m["accuracy"] - p["accuracy"]), abs(m["test_accuracy"] - p["test_accuracy"]),
                         abs(m["weight_bytes"] - p["weight_bytes"]), abs(m["bops"] - p["bops"])))  # fmt: skip
    return {"runs": runs, "front": front, "recheck_max_abs_diff": max(check) if check else None}


def _variants(p: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, int] | None]]:
    """(label, granularity, activation bits) of the plans a peer point is measured as: as the peer ran it, plus its
    weight bits in our search space (per-channel, A8) when the peer ran it otherwise."""
    gran = p.get("granularity", "per_channel")
    out = [(f"as the peer ran it ({gran.replace('_', '-')})", gran, p.get("act_bits"))]
    if gran != "per_channel" or any(b != 8 for b in (p.get("act_bits") or {}).values()):
        out.append(("its weight bits in our space (per-channel, A8)", "per_channel", None))
    return out


PEER_KEYS = ("peer", "version", "method", "setting", "granularity", "weight_bits", "act_bits", "peer_val",
             "peer_test", "seconds", "achieved_ratio", "peer_relative_bitops", "error")  # fmt: skip


def evaluate_points(
    peers: dict, name: str, measurer: Measurer, ours: dict, seeds: Sequence[int]
) -> list[dict]:
    """One row per peer point and variant: our measurement of the plan and the verdicts of our fronts on test
    (``test``: weight bytes judged on the bits-budget runs, BOPs on the BOPs-budget runs; ``test_pooled``: both
    on every front plan; ``val``; ``test_per_seed``); for the peer's own run also ``peer_sim``, against the peer's
    own simulated test accuracy."""
    layers = peers["models"][name]["layers"]
    front = ours["front"]

    def split(plans: list[dict]) -> dict[str, Any]:  # the bits-budget front and the BOPs-budget front
        bits = [q for q in plans if q.get("kind", "avg_bits") == "avg_bits"] or plans
        return {"front": bits, "bops_front": [q for q in plans if q.get("kind") == "mac_bits"] or plans}

    main = split(front)
    by_seed = {s: split([q for q in front if q.get("seed", s) == s]) for s in seeds}
    floor = measurer.test.fp32_accuracy - BOX_PP / 100
    out = []
    for p in [p for p in peers["points"] if p.get("model") == name]:
        base = {k: p.get(k) for k in PEER_KEYS}
        if p.get("error"):
            out.append({**base, "variant": "as the peer ran it"})
            continue
        for label, gran, act in _variants(p):
            row = {**base, "variant": label, "primary": label.startswith("as the peer")}
            try:
                plan = plan_from_bits(layers, p["weight_bits"], act, granularity=gran)
            except PlanError as e:
                out.append({**row, "error": f"not expressible as our plan: {e}"})
                continue
            m = measurer(plan)
            row.update(ours=m, plan_act_bits={n: s.a_bits for n, s in plan.items()})
            row["in_our_space"] = report.in_our_space(row)
            row["test"] = verdicts(m, **main)
            row["test_pooled"] = verdicts(m, front)
            row["val"] = verdicts(m, **main, acc="accuracy")
            row["test_per_seed"] = {s: verdicts(m, **f) for s, f in by_seed.items()}
            if row["primary"] and p.get("peer_test") is not None:
                row["peer_sim"] = verdicts({**m, "test_accuracy": p["peer_test"]}, **main)
            row["collapsed"] = m["test_accuracy"] < floor
            out.append(row)
    return out


# ============================================================================================ main


def _install_seconds() -> str:
    log = ROOT / "bench" / "out" / "peers" / "setup.log"
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("== install seconds")] \
        if log.is_file() else []  # fmt: skip
    return f"{lines[-1].split(':')[1].split('(')[0].strip()} s" if lines else "see bench/out/peers/setup.log"


def load_model_task(name: str):
    """Our task for a model of :data:`MODELS` (cached / trained) or :data:`LITE1` (pretrained, photo crops)."""
    if name == LITE1:
        from workbench.tasks.real import real_task

        return real_task("efficientnet_lite1")
    from workbench.tasks import load_task

    return load_task(name, progress=False)


def _run_peers(models: Sequence[str], peers_json: str, threads: int) -> None:
    """Set up .venv-peers (kept when ready) and run the peers there, on the models cached here."""
    import subprocess

    for name in models:
        load_model_task(name)
    subprocess.run(["bash", str(ROOT / "bench" / "peers" / "setup.sh")], check=True)
    venv_python = ROOT / ".venv-peers" / "bin" / "python"
    cmd = [str(venv_python), str(ROOT / "bench" / "peers" / "run_peers.py"), "--out", peers_json, "--models",
           *models, "--threads", str(threads), *(LITE1_PEER_ARGS if LITE1 in models else ())]  # fmt: skip
    cwd = ROOT / "bench" / "out" / "peers"
    cwd.mkdir(parents=True, exist_ok=True)
    subprocess.run(cmd, check=True, cwd=cwd)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--peers-json", default=None, help=f"default {PEERS_JSON} ({LITE1_PEERS_JSON} for lite1)"
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    parser.add_argument("--json", default=None, help=f"default {OUT_JSON} ({LITE1_OUT_JSON} for lite1)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=[*MODELS, LITE1],
                        help=f"{LITE1} runs on its own (its own section)")  # fmt: skip
    parser.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS),
                        help="average weight bits (element-weighted) of the runs judged on weight bytes")  # fmt: skip
    parser.add_argument("--mac-budgets", nargs="*", type=float, default=list(BUDGETS),
                        help="MACs-weighted average weight bits of the runs judged on BOPs (none: the bits runs)")  # fmt: skip
    parser.add_argument(
        "--evaluations", type=int, default=EVALUATIONS, help="real evaluations per search run"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="search seeds (pooled; per-seed too)"
    )
    parser.add_argument("--prepare", action="store_true", help="only train / cache the models and exit")
    parser.add_argument("--front-only", action="store_true",
                        help="only run our searches and cache their fronts (bench/out/peers_front_<model>.json)")  # fmt: skip
    parser.add_argument(
        "--run-peers",
        action="store_true",
        help="first set up .venv-peers (bench/peers/setup.sh, kept if ready) and run the peers there",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the section from --json, run nothing"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    lite1 = LITE1 in args.models
    if lite1 and len(args.models) > 1:
        parser.error(f"--models {LITE1} runs on its own (its own section); got {' '.join(args.models)}")
    args.peers_json = args.peers_json or str(LITE1_PEERS_JSON if lite1 else PEERS_JSON)
    args.json = args.json or str(LITE1_OUT_JSON if lite1 else OUT_JSON)
    args.heading = LITE1_HEADING if lite1 else HEADING
    args.section = report.lite1_section if lite1 else report.section
    return args


def main() -> None:
    args = _parse()
    import torch

    torch.set_num_threads(args.threads)
    if args.prepare:
        for name in args.models:
            load_model_task(name)
        print("models cached:", ", ".join(args.models))
        return
    t_all = time.perf_counter()
    if args.run_peers:
        _run_peers(args.models, args.peers_json, args.threads)
    rp = _load_module("run_peers", ROOT / "bench" / "peers" / "run_peers.py")
    if args.front_only:  # our fronts alone, cached for a later run (the peers may still be running)
        for name in args.models:
            task = load_model_task(name)
            cached_front(task, name, Measurer(task), args, rp.state_digest(task.model))
        return
    peers = load_peers(Path(args.peers_json))
    if args.report_only:  # the section again from the JSON of an earlier run (no search, no measurement)
        result = json.loads(Path(args.json).read_text())
        lines = args.section(args.heading, peers, result, argv=result.get("argv", ""))
        splice(Path(args.out), args.heading, lines)
        print("\n".join(lines))
        return
    result: dict[str, Any] = {"peers_json": str(args.peers_json), "models": {}, "budgets": args.budgets,
                              "mac_budgets": args.mac_budgets, "evaluations": args.evaluations,
                              "seeds": args.seeds, "argv": _argv(args)}  # fmt: skip
    for name in [m for m in args.models if m in peers["models"]]:
        task = load_model_task(name)
        digests = {"state_digest": rp.state_digest(task.model), "calib_digest": rp.split_digest(task.calib_loader),
                   "val_digest": rp.split_digest(task.val_loader),
                   "test_digest": rp.split_digest(task.test_loader)}  # fmt: skip
        measurer = Measurer(task)
        ours = cached_front(task, name, measurer, args, digests["state_digest"])
        layers = peers["models"][name]["layers"]
        result["models"][name] = {
            "same_weights_and_data_as_peers": {
                k: v == peers["models"][name].get(k) for k, v in digests.items()
            },
            "fp32_weight_bytes": measurer.fp32.weight_bytes,
            "fp32_bops": measurer.fp32.bops,
            "w8a8_bops": measurer.cost(plan_from_bits(layers, dict.fromkeys(layers, 8))).bops,
            "fp32_test": measurer.test.fp32_accuracy,
            "ours": ours,
            "points": evaluate_points(peers, name, measurer, ours, args.seeds),
        }
    result["seconds"] = time.perf_counter() - t_all
    result["versions"] = machine_info()
    result["install"] = _install_seconds()
    lines = args.section(args.heading, peers, result, argv=result["argv"])
    splice(Path(args.out), args.heading, lines)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print("\n".join(lines))


def cached_front(
    task, name: str, measurer: Measurer, args: argparse.Namespace, digest: str
) -> dict[str, Any]:
    """:func:`our_front` for ``name``, reused from ``bench/out/peers_front_<name>.json`` when that file was
    written for the same weights, budgets, seeds and evaluations (``--front-only`` writes it while the peers run)."""
    budgets = {k: v for k, v in {"avg_bits": args.budgets, "mac_bits": args.mac_budgets}.items() if v}
    key = {
        "state_digest": digest,
        "budgets": budgets,
        "seeds": list(args.seeds),
        "evaluations": args.evaluations,
    }
    path = ROOT / "bench" / "out" / f"peers_front_{name}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == json.loads(json.dumps(key)):
            print(f"{name}: our fronts reused from {path}")
            return saved["ours"]
    ours = our_front(task, measurer, budgets=budgets, seeds=args.seeds, evaluations=args.evaluations)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "ours": ours}, indent=1, default=str))
    return ours


def _argv(args: argparse.Namespace) -> str:
    """The flags of this run that differ from the defaults, for the section's command line."""
    parts = []
    if list(args.models) != list(MODELS):
        parts.append("--models " + " ".join(args.models))
    if args.threads != 1:
        parts.append(f"--threads {args.threads}")
    if [float(b) for b in args.budgets] != list(BUDGETS):
        parts.append("--budgets " + " ".join(f"{b:g}" for b in args.budgets))
    if [float(b) for b in args.mac_budgets] != list(BUDGETS):
        parts.append("--mac-budgets " + " ".join(f"{b:g}" for b in args.mac_budgets))
    if args.evaluations != EVALUATIONS:
        parts.append(f"--evaluations {args.evaluations}")
    if list(args.seeds) != [0]:
        parts.append("--seeds " + " ".join(str(s) for s in args.seeds))
    return " ".join(parts)


if __name__ == "__main__":
    main()
