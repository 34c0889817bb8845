"""``python -m workbench ...``: thin subcommands over the package; each writes its summary to ``--json PATH``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

NEXT_STEPS = """Next:
  make lab    JupyterLab on the notebooks (notebooks/01_calibration_profiling.ipynb first)
  make ui     MLflow UI on http://127.0.0.1:5000 (runs table: #/experiments/<id>/runs)
  python -m workbench quantize --model digits_resnet --plan uniform:w4a8:per_group:g16
"""


def _write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _print_table(df: pd.DataFrame) -> None:
    with pd.option_context(
        "display.max_columns", 30, "display.width", 160, "display.float_format", "{:.4g}".format
    ):
        print(df.to_string(index=False))


def _task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="digits_resnet", help="zoo model (digits_cnn, digits_resnet) or torchvision name"
    )
    p.add_argument(
        "--task",
        metavar="FILE.py:FUNC",
        help="your own model and data: a Python file whose function (default make_task) returns a "
        "workbench.tasks.Task; replaces --model / --dataset",
    )
    p.add_argument(
        "--dataset", choices=["cifar10", "imagefolder"], help="torchvision dataset on disk (default: digits)"
    )
    p.add_argument("--data-root", help="folder holding --dataset (nothing is downloaded)")
    p.add_argument("--weights", help="state_dict file for a torchvision model")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument(
        "--device",
        help="where the stage runs: cpu (default), cuda, cuda:N; under torchrun cuda means cuda:LOCAL_RANK",
    )
    p.add_argument("--json", metavar="PATH", help="write the result summary as JSON to PATH")
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing output files (--json, --csv, --out)"
    )


def _task(args: argparse.Namespace, *, retrain: bool = False):
    from workbench.distributed import process_device
    from workbench.pipeline import make_task

    if getattr(args, "task", None):
        from workbench.tasks import load_task_file

        task = load_task_file(args.task)
        args.model = task.name  # run names and summaries name the user's task
    else:
        task = make_task(
            args.model, dataset=args.dataset, data_root=args.data_root, weights=args.weights, retrain=retrain
        )
    device = getattr(args, "device", None)
    return task.to(process_device(device)) if device else task


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import tracking

    task = _task(args, retrain=args.retrain)
    with tracking.start_run(
        "train", run_name=f"train-{args.model}", enabled=False if args.no_track else None
    ) as run:
        acc = {s: task.evaluate(split=s) for s in ("val", "test")}
        run.log_params({"model": args.model, "source": task.info.get("source", "user")})
        run.log_metrics({f"{s}_accuracy": v for s, v in acc.items()})
        if task.info.get("history"):
            run.log_dataframe(pd.DataFrame(task.info["history"]), "history")
    info = {
        k: v for k, v in task.info.items() if isinstance(v, (str, int, float, bool, dict, list, type(None)))
    }
    result = {"model": args.model, "val_accuracy": acc["val"], "test_accuracy": acc["test"], "info": info}
    print(
        f"{args.model}: val accuracy {acc['val']:.4f}, test accuracy {acc['test']:.4f} ({info.get('source', '')})"
    )
    return result


def cmd_profile(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import tracking
    from workbench.profiling import ProfileConfig, profile_model, profile_summary

    task = _task(args)
    config = ProfileConfig(max_batches=args.batches, layers=args.layers, latency_repeats=args.repeats)
    with tracking.start_run(
        "profile", run_name=f"profile-{args.model}", params=config, enabled=False if args.no_track else None
    ) as run:
        df = profile_model(task.model, task.calib_loader, config=config)
        summary = profile_summary(df)
        run.log_dataframe(df, "profile")
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    if args.csv:
        df.to_csv(args.csv, index=False)
    cols = [
        c
        for c in (
            "layer",
            "type",
            "params",
            "macs",
            "latency_ms",
            "act_min",
            "act_max",
            "act_sparsity",
            "w_kurtosis",
        )
        if c in df
    ]
    _print_table(df[cols])
    return {"model": args.model, "summary": summary, "layers": df.to_dict(orient="records")}


def cmd_quantize(args: argparse.Namespace) -> dict[str, Any]:
    from workbench import tracking
    from workbench.pipeline import evaluate_plan, resolve_plan, results_table

    task = _task(args)
    plan = resolve_plan(args.plan, task.model)
    with tracking.start_run(
        "quantize",
        run_name=f"quantize-{args.model}",
        params={"model": args.model, "plan": str(args.plan)},
        enabled=False if args.no_track else None,
    ) as run:
        res = evaluate_plan(task, plan, name=str(args.plan), packed_path=args.out, overwrite=args.overwrite)
        run.log_plan(plan)
        run.log_metrics({k: v for k, v in res.to_dict().items() if isinstance(v, (int, float))})
    _print_table(results_table([res]))
    summary = plan.summary(task.model, task.example_input())
    coverage = {k: getattr(summary, k) for k in ("covered_fraction", "covered_params", "total_params")}
    print(
        f"the plan quantizes {100 * summary.covered_fraction:.1f} % of the model's parameters "
        f"({summary.quantized_layers} of {summary.total_layers} quantizable layers)"
    )
    if args.out:
        print(f"packed model written to {args.out} ({res.packed_bytes} bytes)")
    return {
        "model": args.model,
        "plan_source": str(args.plan),
        **res.to_dict(),
        **coverage,
        "plan": plan.to_dict(),
    }


def cmd_sensitivity(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.sensitivity import SensitivityConfig, analyze_sensitivity, rank_agreement

    task = _task(args)
    config = SensitivityConfig(
        w_bits=tuple(args.w_bits),
        a_bits=tuple(args.a_bits),
        metrics=tuple(args.metrics),
        calib_batches=args.calib_batches,
    )
    result = analyze_sensitivity(task, config, cache=not args.no_cache, track=not args.no_track)
    if args.csv:
        result.table.to_csv(args.csv, index=False)
    summary: dict[str, Any] = {
        "model": args.model,
        "layers": result.layer_names,
        "metrics": result.metrics(),
        "rows": len(result.table),
        "timings_s": result.info.get("timings_s"),
        "source": result.info.get("source"),
        "rank_agreement": [],
    }
    for a, b in (("omega", "acc_drop"), ("omega", "output_mse"), ("output_mse", "acc_drop")):
        for bits in (2, 4):
            if {a, b} <= set(result.metrics()) and bits in config.w_bits:
                summary["rank_agreement"].append(rank_agreement(result, (a, bits), (b, bits)))
    rank_metric = "output_mse" if "output_mse" in result.metrics() else result.metrics()[0]
    ranking = result.ranking(rank_metric, bits=4 if 4 in config.w_bits else config.w_bits[0])
    _print_table(ranking.head(20))
    summary["ranking"] = ranking.to_dict(orient="records")
    summary["layer_stats"] = result.layers.to_dict(orient="records")
    return summary


def cmd_predictor(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.predictor import (
        AccuracyPredictor,
        PlanDatasetConfig,
        PlanFeaturizer,
        build_plan_dataset,
        evaluate_predictors,
    )
    from workbench.sensitivity import SensitivityConfig, analyze_sensitivity

    task = _task(args)
    sens_kw: dict[str, Any] = {}
    if args.sens_metrics is not None:
        sens_kw["metrics"] = tuple(args.sens_metrics)
    if args.sens_w_bits is not None:
        sens_kw["w_bits"] = tuple(args.sens_w_bits)
    if args.sens_a_bits is not None:
        sens_kw["a_bits"] = tuple(args.sens_a_bits)
    sens = analyze_sensitivity(task, SensitivityConfig(**sens_kw), track=False)  # cached like `sensitivity`
    n_random = args.plans // 2
    config = PlanDatasetConfig(
        n_random=n_random,
        n_stratified=args.plans - n_random,
        w_bits=args.w_bits,
        a_bits=args.a_bits,
        seed=args.seed,
    )
    dataset = build_plan_dataset(task, sens, config, track=not args.no_track)
    featurizer = PlanFeaturizer.fit(task, sens, w_bits=config.w_bits, a_bits=config.a_bits)
    table = evaluate_predictors(
        dataset, featurizer, models=tuple(args.models), k=args.folds, seed=args.seed, track=not args.no_track
    )
    _print_table(table)
    best = table.sort_values("spearman", ascending=False).iloc[0]
    result: dict[str, Any] = {
        "model": args.model,
        "best_model": best["model"],
        "selected_by": f"highest mean k-fold spearman among {list(table['model'])} (same folds: optimistic)",
        "spearman": float(best["spearman"]),
        "kendall": float(best["kendall"]),
        "mae": float(best["mae"]),
        "n_train": int(best["n_train"]),
        "n_test": int(best["n_test"]),
        "plans_per_second": float(best["plans_per_second"]),
        "n_plans": len(dataset),
        "predictors": table.to_dict(orient="records"),
    }
    if args.save:
        predictor = AccuracyPredictor.fit(dataset, featurizer, model=str(best["model"]), seed=args.seed)
        predictor.save(args.save, overwrite=args.overwrite)
        result["saved"] = args.save
    return result


def _csv_list(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in str(text).split(",") if v.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a comma-separated list of {kind.__name__}"
            ) from e

    return parse


def _groups(specs: list[str]) -> dict[str, tuple[str, ...]] | None:
    """``NAME=layer,layer`` strings -> {NAME: layers}."""
    groups: dict[str, tuple[str, ...]] = {}
    for text in specs:
        name, sep, layers = text.partition("=")
        if not sep or not name or not layers:
            raise ValueError(f"--group {text!r}: expected NAME=layer,layer (module paths)")
        groups[name] = tuple(v.strip() for v in layers.split(",") if v.strip())
    return groups or None


def cmd_search(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.search import SearchConfig, SpaceConfig, run_search
    from workbench.search.objectives import HypervolumeRef

    space = SpaceConfig(
        w_bits=args.w_bits,
        a_bits=args.a_bits,
        granularities=args.granularities,
        methods=args.methods,
        skip=tuple(args.skip),
        fixed={name: {"w_bits": 8, "a_bits": 8} for name in args.fix8},
        groups="residual" if args.residual_groups else _groups(args.group),
        include=args.include or None,
        exclude=args.exclude or (),
    )
    budget = args.budget
    if budget is None and args.resume and args.study:
        from workbench.search.study import default_storage, stored_config

        stored = stored_config(args.storage or default_storage(), args.study)
        budget = stored.budget if stored is not None else None
    config = SearchConfig(
        strategy=args.strategy,
        budget=budget if budget is not None else 40,
        split=args.split,
        final_split=None if args.final_split == "none" else args.final_split,
        max_trials=args.max_trials,
        ilp_cost=args.ilp_cost,
        warm_start=args.warm_start,
        profile=args.profile,
        latency_batch_size=args.latency_batch_size,
        accuracy=args.accuracy,
        objectives=tuple(args.objectives),
        seed=args.seed,
        max_weight_fraction=args.max_weight_fraction,
        max_size_bytes=args.max_size_bytes,
        max_avg_weight_bits=args.max_avg_weight_bits,
        max_accuracy_drop=args.max_accuracy_drop,
        complexity_penalty=args.complexity_penalty,
        diversity_penalty=args.diversity_penalty,
        screen_trials=args.screen_trials,
        study_name=args.study,
        storage=args.storage,
        resume=args.resume,
        workers=args.workers,
        worker_threads=args.worker_threads,
        track=not args.no_track,
        hv_ref=HypervolumeRef(size_fraction=args.hv_size_fraction, max_drop_pp=args.hv_max_drop),
        space=space,
        progress=not args.quiet,
    )
    task = _task(args)
    predictor = None
    if args.predictor:
        from workbench.predictor import AccuracyPredictor

        predictor = AccuracyPredictor.load(args.predictor)
    from workbench.ui.search import search_figures

    result = run_search(task, config, predictor=predictor, join=args.join, figures=search_figures)
    cols = ["label", "accuracy", "test_accuracy", "weight_bytes", "bops", "latency_ms", "avg_weight_bits"]
    if not result.front.empty:
        _print_table(result.front[[c for c in cols if c in result.front]])
    print(
        f"study {result.study_name}: {len(result.trials)} trials, {result.real_evaluations} real evaluations, "
        f"hypervolume {result.hypervolume:.4f}, front of {len(result.front)} plans ({result.seconds:.1f} s)"
    )
    out = {"model": args.model, **result.to_dict(), "best": None}
    if not result.front.empty:  # the front plan scoring highest on the searched split (ties: the smaller)
        best = result.best()
        plan = json.loads(best["plan"])
        out["best"] = {
            "label": best["label"],
            "trial": int(best["trial"]),
            "accuracy": float(best["accuracy"]),
            "avg_weight_bits": float(best["avg_weight_bits"]),
            "weight_bytes": int(best["weight_bytes"]),
            "plan": plan,
        }
        if args.save_best:
            from workbench.quant import QuantPlan

            QuantPlan.from_dict(plan).save(args.save_best, overwrite=args.overwrite)
            out["best"]["saved"] = args.save_best
            print(
                f"best plan ({best['label']}, {best['avg_weight_bits']:.2f} weight bits) written to {args.save_best}"
            )
    elif args.save_best:
        raise ValueError("the search found no feasible plan: nothing to write to --save-best")
    return out


def cmd_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.pipeline import PipelineConfig, run_pipeline

    if getattr(args, "task", None):
        raise ValueError(
            "pipeline runs on zoo / torchvision models (--model); for a --task file run the stages: profile, "
            "sensitivity, quantize, search, ..."
        )
    config = PipelineConfig(
        model=args.model,
        dataset=args.dataset,
        data_root=args.data_root,
        weights=args.weights,
        track=not args.no_track,
    )
    result = run_pipeline(config)
    print(f"\nEnd-to-end pipeline on {args.model} (test split)")
    _print_table(result.table)
    print("\nstage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    if result.run_id:
        print(f"\nMLflow run {result.run_id}")
    print("\n" + NEXT_STEPS)
    return {"model": args.model, **result.to_dict()}


def cmd_qat(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.pipeline import resolve_plan
    from workbench.qat import QATConfig, qat_table, train_qat

    config = QATConfig(
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        batch_size=args.batch_size,
        scale_mode=args.scale_mode,
        bn=args.bn,
        distill_weight=args.distill_weight,
        temperature=args.temperature,
        quant_loss_weight=args.quant_loss_weight,
        bit_penalty=args.bit_penalty,
        patience=args.patience,
        seed=args.seed,
        checkpoint=args.checkpoint,
        resume=args.resume,
        overwrite=args.overwrite,
        max_steps=args.max_steps,
    )
    from workbench import distributed

    info = distributed.init_from_env(args.device)  # under torchrun: join the process group (gloo / nccl)
    try:
        task = _task(args)
        plan = resolve_plan(args.plan, task.model)
        result = train_qat(
            task, plan, config, packed_path=args.out, track=not args.no_track,
            progress=not args.quiet and info.is_main,
        )  # fmt: skip
    finally:
        distributed.shutdown()
    if not info.is_main:  # rank 0 alone reports and writes --json
        args.json = None
        return {"rank": info.rank}
    _print_table(qat_table({str(args.plan): result}))
    if args.out:
        print(f"packed model written to {args.out} ({result.packed_bytes} bytes)")
    return {"model": args.model, "plan_source": str(args.plan), **result.to_dict()}


def _profile_summary(prof) -> dict[str, Any]:
    return {
        "name": prof.name,
        "kind": prof.kind,
        "device": prof.device,
        "cost_model": prof.cost_model,
        "path": prof.path,
        "precisions": {op: list(prof.precisions(op)) for op in prof.ops},
    }


def cmd_hardware(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.hardware.profile import (
        PrecisionProfile,
        available_profiles,
        load_profile,
        user_profile_dir,
    )

    if args.measure:
        from workbench.hardware.measure import MeasureConfig, measure_profile

        out = Path(args.out) if args.out else user_profile_dir() / f"{args.name}.json"
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        cfg = MeasureConfig(
            name=args.name,
            batch_size=args.batch_size,
            threads=args.threads,
            repeats=args.repeats,
            engine=args.engine,
            quick=args.quick,
        )
        prof = measure_profile(cfg, progress=not args.quiet)
        prof.save(out, overwrite=args.overwrite)
        rows = [
            {"op": op, "precision": p, "macs_per_s": c.macs_per_s, "overhead_us": c.overhead_us}
            for op, t in prof.ops.items()
            for p, c in t.items()
        ]
        _print_table(pd.DataFrame(rows))
        print(f"memory bandwidth {prof.memory.bandwidth_gbps:.1f} GB/s; profile written to {out}")
        return {"profile": prof.to_dict(), "path": str(out)}
    if args.estimate:
        from workbench.hardware.estimate import CostEstimator
        from workbench.pipeline import resolve_plan

        if not args.plan:
            raise ValueError("--estimate needs --plan (a plan JSON file or a shorthand such as uniform:w8a8)")
        task = _task(args)
        plan = resolve_plan(args.plan, task.model)
        rows = []
        for name in args.profile or ["cpu_measured"]:
            est = CostEstimator(task.model, task.example_input(), name, batch_size=args.batch_size)
            e, fp = est(plan), est(type(plan)({}))
            rows.append(
                {**e.to_dict(), "fp32_latency_ms": fp.latency_ms, "speedup": fp.latency_ms / e.latency_ms}
            )
        df = pd.DataFrame(rows)
        _print_table(
            df[
                [
                    "profile",
                    "batch_size",
                    "latency_ms",
                    "fp32_latency_ms",
                    "speedup",
                    "energy_mj",
                    "bytes_moved",
                ]
            ]
        )
        return {"model": args.model, "plan": plan.to_dict(), "estimates": rows}
    if args.show:
        prof = (
            PrecisionProfile.load(args.show) if Path(args.show).suffix == ".json" else load_profile(args.show)
        )
        print(prof.to_json())
        return {"profile": prof.to_dict()}
    rows = [_profile_summary(load_profile(n)) for n in available_profiles()]
    _print_table(pd.DataFrame([{**r, "precisions": r["precisions"].get("conv")} for r in rows]))
    return {"profiles": rows}


def cmd_deploy(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from workbench import tracking
    from workbench.hardware.deploy import DeployConfig, choose_kernels, measure_deployment
    from workbench.models import ZOO_MODELS, build_model
    from workbench.pipeline import resolve_plan

    cfg = DeployConfig(
        batch_size=args.batch_size,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        engine=args.engine,
        strict=args.strict,
    )
    synthetic = args.dataset is None and args.model not in ZOO_MODELS and not getattr(args, "task", None)
    task = None
    if synthetic:  # speed only: a torchvision model on random inputs (no data set on disk)
        if args.kernels in ("dynamic", "bf16"):
            raise ValueError(
                f"--kernels {args.kernels} measures a task's metric on its data: give --task, a zoo model or "
                "--dataset (a torchvision model without data deploys with --kernels static)"
            )
        torch.manual_seed(args.seed)
        model = build_model(args.model, num_classes=args.num_classes).eval()
        if args.weights:
            from workbench.tasks import _load_weights

            _load_weights(model, args.weights)  # tensors only; errors name the file
        gen = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, generator=gen)
        calib: Any = [torch.randn(8, 3, args.input_size, args.input_size, generator=gen) for _ in range(2)]
        evaluate = None
    else:
        task = _task(args)
        model = task.model
        dataset = getattr(task.calib_loader, "dataset", None)
        n = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else args.batch_size
        x = task.example_input(min(args.batch_size, n))
        calib = task.calib_loader
        split = args.split

        def evaluate(m):
            return task.evaluate(m, split)

    kernels, reason = args.kernels, f"--kernels {args.kernels}"
    if kernels == "auto":
        kernels, reason = choose_kernels(x)
    plan = resolve_plan(args.plan, model)
    if kernels != "static":
        return _deploy_dynamic(args, task, plan, cfg, kernels, reason)
    with tracking.start_run(
        "deploy",
        run_name=f"deploy-{args.model}",
        params={
            "model": args.model, "plan": str(args.plan), "profile": args.profile, "kernels": kernels,
            **cfg.__dict__,
        },
        enabled=False if args.no_track else None,
    ) as run:  # fmt: skip
        res = measure_deployment(
            model, plan, calib, example_input=x, evaluate=evaluate, profile=args.profile, config=cfg
        )
        run.log_plan(plan)
        run.log_metrics(
            {
                k: v
                for k, v in res.to_dict().items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        )
        run.log_dataframe(res.layers, "deployed_layers")
    _print_table(res.layers)
    d = res.to_dict()
    for key in ("fp32_accuracy", "accuracy"):
        if d[key] != d[key]:  # NaN: no labelled data (synthetic inputs)
            d[key] = None
    acc = "n/a (synthetic inputs)" if synthetic else f"{res.fp32_accuracy:.4f} -> {res.accuracy:.4f}"
    print(
        f"{args.model} batch {res.batch_size}, {res.threads} threads: FP32 {res.fp32_latency_ms:.2f} ms, deployed "
        f"{res.deployed_latency_ms:.2f} ms, speedup {res.speedup:.2f}x; accuracy {acc}; top-1 agreement "
        f"{res.top1_agreement:.4f}; estimate on {res.profile}: {res.estimated_latency_ms:.2f} ms"
    )
    for note in res.notes:
        print(f"note: {note}")
    return {
        "model": args.model,
        "plan_source": str(args.plan),
        "synthetic_inputs": synthetic,
        "kernels": kernels,
        "kernels_reason": reason,
        **d,
        "plan": plan.to_dict(),
    }


def _deploy_dynamic(args, task, plan, cfg, kernels: str, reason: str) -> dict[str, Any]:
    """``deploy --kernels dynamic|bf16`` (or auto on a model fed token ids): FP32, dynamic int8 and / or bf16
    side by side (:func:`workbench.hardware.deploy.compare_kernels`)."""
    from workbench import tracking
    from workbench.hardware.deploy import compare_kernels

    with tracking.start_run(
        "deploy",
        run_name=f"deploy-{args.model}",
        params={"model": args.model, "plan": str(args.plan), "kernels": kernels, **cfg.__dict__},
        enabled=False if args.no_track else None,
    ) as run:
        df = compare_kernels(task, plan, kernels=kernels, config=cfg, split=args.split)
        run.log_plan(plan)
        for row in df.to_dict(orient="records"):
            v = row["variant"]
            run.log_metrics({f"{v}_{k}": x for k, x in row.items() if k != "variant"})
        run.log_dataframe(df, "deployed_variants")
    _print_table(df)
    rows = df.set_index("variant")
    deployed = "dynamic_int8" if kernels == "dynamic" else "bf16"
    fp, dep = rows.loc["fp32"], rows.loc[deployed]
    print(
        f"{args.model} on {kernels} kernels ({reason}); batch {cfg.batch_size}, {df.attrs['threads']} threads: "
        f"FP32 {fp['median_ms']:.2f} ms, {deployed} {dep['median_ms']:.2f} ms, speedup "
        f"{dep['speedup_vs_fp32']:.2f}x; metric on {args.split} {fp['metric']:.4f} -> {dep['metric']:.4f}; "
        f"cosine to FP32 {dep['cosine_to_fp32']:.4f}, top-1 agreement {dep['top1_agreement']:.4f}"
    )
    for note in df.attrs["notes"]:
        print(f"note: {note}")
    return {
        "model": args.model,
        "plan_source": str(args.plan),
        "synthetic_inputs": False,
        "kernels": kernels,
        "kernels_reason": reason,
        "deployed_variant": deployed,
        "fp32_latency_ms": float(fp["median_ms"]),
        "deployed_latency_ms": float(dep["median_ms"]),
        "speedup": float(dep["speedup_vs_fp32"]),
        "fp32_accuracy": float(fp["metric"]),
        "accuracy": float(dep["metric"]),
        "cosine_to_fp32": float(dep["cosine_to_fp32"]),
        "top1_agreement": float(dep["top1_agreement"]),
        "split": args.split,
        **{k: df.attrs[k] for k in ("batch_size", "repeats", "threads", "engine", "cpu", "device", "notes")},
        "rows": df.to_dict(orient="records"),
        "plan": plan.to_dict(),
    }


def cmd_adapt(args: argparse.Namespace) -> dict[str, Any]:
    import math

    from workbench import tracking
    from workbench.runtime import RuntimeConfig, evaluate_runtime

    task = _task(args)
    cfg = RuntimeConfig(
        w_bits=tuple(args.w_bits),
        a_bits=args.a_bits,
        groups=args.groups,
        budget_kind=args.budget_kind,
        probe_samples=args.probe_samples,
        seed=args.seed,
    )
    if not 0 < args.budget <= 1:
        raise ValueError(
            f"--budget {args.budget} must be a fraction in (0, 1] of the all-{max(cfg.w_bits)}-bit cost"
        )
    ev = evaluate_runtime(
        task,
        budgets=(args.budget,),
        policies=(args.policy,),
        shifts=(args.shift,),
        config=cfg,
        profile=args.profile,
        split=args.split,
        progress=not args.quiet,
    )
    row = ev.table[ev.table["policy"] == args.policy].iloc[0]
    if math.isnan(row["accuracy"]):
        raise ValueError(row["note"])
    oracle = ev.table[ev.table["policy"] == "oracle"].iloc[0]
    sm = ev.static_maps[ev.static_maps["data"] == args.shift]
    match = sm[sm["map"] == row["static_map"]]
    static = match.iloc[0] if len(match) else sm.sort_values("cost").iloc[0]
    result = {
        "model": args.model,
        "policy": args.policy,
        "data": args.shift,
        "split": args.split,
        "budget_kind": cfg.budget_kind,
        "budget_fraction": args.budget,
        "budget": float(row["budget"]),
        "fp32_accuracy": float(row["fp32_accuracy"]),
        "dynamic": {
            "accuracy": float(row["accuracy"]),
            "avg_bops": float(row["avg_bops"]),
            "avg_weight_bits": float(row["avg_weight_bits"]),
            "avg_cost": float(row["avg_cost"]),
            "overhead_fraction": float(row["overhead_fraction"]),
            "overrides": int(row["overrides"]),
        },
        "static": {
            "accuracy": float(static["accuracy"]),
            "avg_bops": float(static["bops"]),
            "avg_weight_bits": float(static["avg_bits"]),
            "avg_cost": float(static["cost"]),
            "map": static["map"],
        },
        "cost_saving_at_equal_accuracy": float(row["cost_saving_at_equal_accuracy"]),
        "oracle": {
            "accuracy": float(oracle["accuracy"]),
            "avg_bops": float(oracle["avg_bops"]),
            "avg_weight_bits": float(oracle["avg_weight_bits"]),
            "note": oracle["note"],
        },
        "ladder": ev.info["ladder"],
    }
    with tracking.start_run(
        "runtime",
        run_name=f"adapt-{args.model}-{args.policy}",
        params={"model": args.model, "policy": args.policy, "budget": args.budget, "data": args.shift},
        enabled=False if args.no_track else None,
    ) as run:
        run.log_metrics({f"dynamic_{k}": v for k, v in result["dynamic"].items()})
        run.log_metrics({f"static_{k}": v for k, v in result["static"].items() if k != "map"})
        run.log_dataframe(ev.table, "runtime_table")
    d, st = result["dynamic"], result["static"]
    print(
        f"{args.model} on {args.shift} data, budget {args.budget:.2f} of the all-{max(cfg.w_bits)}-bit {cfg.budget_kind}: "
        f"dynamic ({args.policy}) accuracy {d['accuracy']:.4f} at {d['avg_bops']:.4g} BOPs / {d['avg_weight_bits']:.2f} "
        f"bits per input (overhead {100 * d['overhead_fraction']:.1f} % of inference); best static map within that "
        f"cost: accuracy {st['accuracy']:.4f} at {st['avg_bops']:.4g} BOPs ({st['map']})"
    )
    return result


def cmd_replicate_hawq(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.search.hawq_replication import ReplicationConfig, run_replication

    config = ReplicationConfig(
        data_path=args.data,
        search_trials=args.search_trials,
        front_alphas=args.front_alphas,
        seed=args.seed,
    )
    result = run_replication(config)
    _print_table(result.table())
    if not result.search_vs_ilp.empty:
        cols = ["model", "constraint", "hv_exact", "hv_ilp_sweep", "hv_search", "search_front_points"]
        _print_table(result.fronts[cols])
    for note in result.notes:
        print(note)
    print(f"({result.seconds:.1f} s)")
    return result.to_dict()


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    from workbench.benchsuite import run_suite

    result = run_suite(args.suite, only=args.only, resume=args.resume)
    print(f"\n{result.command}: {result.seconds / 60:.1f} min")
    for s in result.stages:
        print(f"  {s.status:<12.12} {s.seconds:7.0f} s  {s.name}  ({s.command})")
        if s.status.startswith("skipped"):
            print(f"    {s.status}")
    print("docs/BENCHMARKS.md updated")
    if not result.ok:
        raise ValueError(
            "some benchmark stages failed (see above); the document keeps their earlier sections"
        )
    return result.to_dict()


def cmd_tracking_server(args: argparse.Namespace) -> dict[str, Any]:
    import signal
    import socket
    import time

    from workbench.paths import data_dir
    from workbench.servers import start_postgres, start_tracking_server

    home = Path(args.home).expanduser().resolve() if args.home else data_dir() / "tracking"
    stop_signals = (signal.SIGINT, signal.SIGTERM)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in stop_signals}
    pg = server = None
    try:
        try:
            pg = start_postgres(home / "pg", port=args.pg_port)
            server = start_tracking_server(
                backend_uri=pg.url, artifact_root=home / "artifacts", host=args.host, port=args.port,
                work_dir=home, allowed_hosts=args.allowed_hosts,
            )  # fmt: skip
        except (RuntimeError, TimeoutError) as e:
            raise ValueError(f"the tracking server did not start: {e}") from e
        result = {"tracking_uri": server.url, "backend": pg.url, "home": str(home)}
        port = server.port
        print(
            f"MLflow tracking server {server.url}: runs in PostgreSQL ({pg.url}), artifacts in {home}/artifacts"
        )
        print(f"logs: {server.log}, {pg.log}\n")
        print("On this machine:")
        local = f"http://127.0.0.1:{port}" if args.host == "0.0.0.0" else server.url  # noqa: S104
        print(f"  export MLFLOW_TRACKING_URI={local}")
        print("  python -m workbench pipeline    # every stage logs its runs and artifacts to the server")
        print("On other machines (same command; artifacts are uploaded through the server):")
        if args.host in ("127.0.0.1", "localhost"):
            print(
                f"  ssh -N -L {port}:127.0.0.1:{port} {socket.gethostname()} &    # it listens on 127.0.0.1 only;"
            )
            print(
                f"  export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}    # or restart it with --host 0.0.0.0"
            )
        else:
            print(f"  export MLFLOW_TRACKING_URI={server.url}")
        print(f"Ctrl-C stops it; runs and artifacts stay under {home} for the next start.", flush=True)
        while server.running():
            time.sleep(1.0)
        raise ValueError(
            f"the MLflow tracking server exited (code {server.process.returncode}); see {server.log}"
        )
    except KeyboardInterrupt:
        print("\nstopping the tracking server and PostgreSQL", flush=True)
    finally:
        for s in stop_signals:  # a second Ctrl-C must not cut the shutdown short
            signal.signal(s, signal.SIG_IGN)
        try:
            if server is not None:
                server.stop()
            if pg is not None:
                pg.stop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    if server is None:  # interrupted while starting
        return {"tracking_uri": None, "home": str(home)}
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench", description="Adaptive mixed-precision quantization workbench"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a zoo model on digits (or load it from the cache)")
    _task_args(p)
    p.add_argument("--retrain", action="store_true", help="train again even if a cached model exists")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("profile", help="per-layer cost, latency, activation and weight statistics")
    _task_args(p)
    p.add_argument("--batches", type=int, default=4, help="calibration batches for activation statistics")
    p.add_argument("--layers", choices=["quantizable", "leaf"], default="quantizable")
    p.add_argument("--repeats", type=int, default=7, help="latency repeats (median)")
    p.add_argument("--csv", help="also write the per-layer table as CSV")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("quantize", help="quantize with a plan and measure accuracy and size")
    _task_args(p)
    p.add_argument("--plan", required=True, help="plan JSON file or shorthand, e.g. uniform:w4a8:per_channel")
    p.add_argument("--out", help="write the packed low-bit model here (.wbq)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("sensitivity", help="per-layer / per-channel sensitivity to each precision")
    _task_args(p)
    p.add_argument("--w-bits", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="candidate weight bits")
    p.add_argument("--a-bits", type=int, nargs="*", default=[4, 6, 8], help="candidate activation bits")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=["output_mse", "output_kl", "acc_drop", "hessian", "fisher"],
        help="metric names",
    )
    p.add_argument(
        "--calib-batches", type=int, default=2, help="calibration batches for probes and the Hessian"
    )
    p.add_argument("--no-cache", action="store_true", help="recompute even if a cached result exists")
    p.add_argument("--csv", help="also write the tidy sensitivity table as CSV")
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("predictor", help="measure plans, fit accuracy-loss predictors, k-fold evaluation")
    _task_args(p)
    p.add_argument("--plans", type=int, default=300, help="plans to measure (half random, half stratified)")
    p.add_argument(
        "--models", nargs="+", default=["ridge", "mlp", "gbt", "ensemble"], help="predictor models"
    )
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="fit the best model on all plans and save it here")
    p.add_argument(
        "--w-bits", type=_csv_list(int), default=(2, 3, 4, 6, 8), help="weight bits of the measured plans"
    )
    p.add_argument(
        "--a-bits", type=_csv_list(int), default=(8,), help="activation bits of the plans (32: weight-only)"
    )
    p.add_argument(
        "--sens-metrics",
        nargs="+",
        help="sensitivity metrics behind the stratified plans and the features (default: the sensitivity "
        "command's; 'output_mse' alone is much faster on large models)",
    )
    p.add_argument("--sens-w-bits", type=int, nargs="+", help="sensitivity probes' weight bits")
    p.add_argument(
        "--sens-a-bits", type=int, nargs="*", help="sensitivity probes' activation bits (none: skip them)"
    )
    p.set_defaults(func=cmd_predictor)

    from workbench.search.objectives import ACCURACY_MODES, OBJECTIVES
    from workbench.search.study import STRATEGIES

    p = sub.add_parser(
        "search", help="search per-layer bits / methods with Optuna, an RL controller or baselines"
    )
    _task_args(p)
    p.add_argument("--strategy", choices=list(STRATEGIES), default="tpe")
    p.add_argument(
        "--budget",
        type=int,
        help="real evaluations (trials with --accuracy predicted); default 40, or the stored one",
    )
    p.add_argument(
        "--split", default="val", choices=["calib", "val", "test", "train"], help="split searched on"
    )
    p.add_argument("--final-split", default="test", help="split the front is re-measured on ('none' to skip)")
    p.add_argument(
        "--max-trials", type=int, help="cap on trials (duplicates cost a trial, not an evaluation)"
    )
    p.add_argument("--ilp-cost", default="weight_size", choices=["weight_size", "size", "bops", "latency", "energy"],
                   help="cost the ILP / greedy baselines budget")  # fmt: skip
    p.add_argument("--accuracy", choices=list(ACCURACY_MODES), default="measured")
    p.add_argument("--objectives", nargs="+", choices=list(OBJECTIVES), default=["accuracy", "weight_size"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--w-bits", type=_csv_list(int), default=(2, 3, 4, 6, 8, 16), help="e.g. 2,3,4,6,8,16")
    p.add_argument("--a-bits", type=_csv_list(int), default=(8,), help="e.g. 4,6,8,16")
    p.add_argument("--granularities", type=_csv_list(str), default=("per_channel",))
    p.add_argument(
        "--methods", type=_csv_list(str), default=("quantize",), help="quantize,prune,lowrank,none"
    )
    p.add_argument("--skip", nargs="*", default=[], help="layers left in float32")
    p.add_argument(
        "--include",
        type=_csv_list(str),
        help="glob patterns on layer names, comma-separated: only these layers are searched (the others stay "
        "float32), e.g. 'encoder.*,*.intermediate.dense'",
    )
    p.add_argument(
        "--exclude",
        type=_csv_list(str),
        help="glob patterns on layer names, comma-separated: layers left in float32, e.g. 'pooler*,classifier'",
    )
    p.add_argument("--fix8", nargs="*", default=[], help="layers fixed at w8a8 (e.g. the first and last)")
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME=L1,L2",
        help="layers that share one choice (repeatable), e.g. res2=layer2.0.conv2,layer2.0.downsample.0",
    )
    p.add_argument("--residual-groups", action="store_true", help="residual partners share one choice")
    p.add_argument("--max-weight-fraction", type=float, help="constraint: weight bytes / FP32 weight bytes")
    p.add_argument(
        "--max-avg-weight-bits",
        type=float,
        help="constraint: weight bits averaged over the quantizable layers' elements (float layers count 32)",
    )
    p.add_argument("--max-size-bytes", type=int, help="constraint: whole-model bytes")
    p.add_argument("--max-accuracy-drop", type=float, help="constraint: accuracy drop in pp")
    p.add_argument("--complexity-penalty", type=float, default=0.0)
    p.add_argument("--diversity-penalty", type=float, default=0.0)
    p.add_argument(
        "--screen-trials", type=int, default=300, help="predictor trials of --accuracy multifidelity"
    )
    p.add_argument("--predictor", help="a saved predictor (python -m workbench predictor --save PATH)")
    p.add_argument(
        "--hv-size-fraction", type=float, default=0.25, help="hypervolume reference: size fraction"
    )
    p.add_argument(
        "--hv-max-drop", type=float, default=10.0, help="hypervolume reference: accuracy drop (pp)"
    )
    p.add_argument("--study", help="study name (default <model>-<strategy>-<accuracy>-s<seed>)")
    p.add_argument("--storage", help="sqlite:///path.db, postgresql://user@host:port/db or :memory:")
    p.add_argument(
        "--warm-start",
        choices=["uniform", "greedy", "ilp", "aimet"],
        help="first trials of a sampler strategy: this baseline's plans (counted in the budget)",
    )
    p.add_argument(
        "--profile", help="hardware precision profile (name or JSON path) for the latency / energy objectives"
    )
    p.add_argument(
        "--latency-batch-size", type=int, help="batch size of latency estimates (default: profile's)"
    )
    p.add_argument("--resume", action="store_true", help="continue an existing study (e.g. after a crash)")
    p.add_argument("--join", action="store_true", help="add this process as a worker of an existing study")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument(
        "--worker-threads",
        type=int,
        help="torch threads per worker (default: torch's; 1 with --workers = cores)",
    )
    p.add_argument(
        "--save-best",
        metavar="PLAN.json",
        help="write the front plan scoring highest on --split as a plan file (for quantize / qat / deploy --plan)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("pipeline", help="end-to-end: train/load, profile, FP32 vs INT8 vs INT4")
    _task_args(p)
    p.set_defaults(func=cmd_pipeline)

    from workbench.qat import BN_MODES, OPTIMIZERS, SCALE_MODES

    p = sub.add_parser(
        "qat", help="quantization-aware training of a plan (STE / LSQ, distillation, bit penalty)"
    )
    _task_args(p)
    p.add_argument("--plan", required=True, help="plan JSON file or shorthand, e.g. uniform:w2a8:per_channel")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate in (0, 1]")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="adamw")
    p.add_argument("--batch-size", type=int, help="training batch size (default: the task's)")
    p.add_argument("--scale-mode", choices=list(SCALE_MODES), default="lsq", help="learn step sizes (LSQ)")
    p.add_argument("--bn", choices=list(BN_MODES), default="fold", help="fold BatchNorm or freeze its stats")
    p.add_argument("--distill-weight", type=float, default=0.0, help="weight of distillation from FP32")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    p.add_argument("--quant-loss-weight", type=float, default=0.0, help="weight of ||W - Q(W)||^2 / ||W||^2")
    p.add_argument("--bit-penalty", type=float, default=0.0, help="learn per-layer bits with this penalty")
    p.add_argument("--patience", type=int, help="early stopping: epochs without better val accuracy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="checkpoint file, written every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--out", help="write the packed low-bit model here (.wbq)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_qat)
    p = sub.add_parser("hardware", help="precision profiles: list, show, measure this CPU, estimate a plan")
    _task_args(p)
    p.add_argument("--measure", action="store_true", help="benchmark this CPU's kernels and write a profile")
    p.add_argument("--quick", action="store_true", help="with --measure: a small shape grid")
    p.add_argument("--name", default="cpu_measured", help="with --measure: the profile's name")
    p.add_argument("--out", help="with --measure: profile path (default data/profiles/<name>.json)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7, help="timed runs per shape (median)")
    p.add_argument("--engine", choices=["x86", "onednn", "fbgemm"], default="x86")
    p.add_argument("--show", metavar="PROFILE", help="print a profile (name or JSON path), validated")
    p.add_argument("--estimate", action="store_true", help="estimate --plan on each --profile")
    p.add_argument("--plan", help="with --estimate: plan JSON file or shorthand")
    p.add_argument("--profile", nargs="+", help="with --estimate: profile names or paths")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_hardware)

    p = sub.add_parser("deploy", help="run a plan on real int8 / bf16 kernels; latency and accuracy vs FP32")
    _task_args(p)
    p.add_argument("--plan", required=True, help="plan JSON file or shorthand, e.g. uniform:w8a8:per_channel")
    p.add_argument("--profile", default="cpu_measured", help="precision profile (name or path) for dispatch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, help="torch threads while timing (default: torch's)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs of each model, interleaved (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--engine", choices=["x86", "onednn", "fbgemm"], default="x86")
    p.add_argument(
        "--kernels",
        choices=["auto", "static", "dynamic", "bf16"],
        default="auto",
        help="static: int8 through torch.ao FX (calibrated activations; float-input models); dynamic: FP32, "
        "dynamic int8 Linear kernels and bf16 side by side (token ids, dict inputs); bf16: FP32 vs bf16; "
        "auto (default): static for a single float input, dynamic otherwise",
    )
    p.add_argument(
        "--split", choices=["val", "test"], default="test", help="split the task's metric is measured on"
    )
    p.add_argument("--strict", action="store_true", help="error instead of falling back on missing kernels")
    p.add_argument("--input-size", type=int, default=224, help="torchvision models without data: image side")
    p.add_argument("--num-classes", type=int, default=1000, help="torchvision models without data: classes")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_deploy)
    p = sub.add_parser("adapt", help="per-input dynamic precision under a budget vs the best static map")
    _task_args(p)
    p.add_argument(
        "--budget", type=float, required=True, help="average cost per input, fraction of the all-8-bit map"
    )
    p.add_argument("--budget-kind", choices=["bops", "avg_bits", "latency"], default="bops")
    p.add_argument("--profile", help="hardware profile for --budget-kind latency")
    p.add_argument("--policy", choices=["rule", "learned", "cascade", "static"], default="rule")
    p.add_argument(
        "--shift", choices=["clean", "noise", "contrast", "blur"], default="clean", help="data variant"
    )
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--w-bits", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="candidate weight bits")
    p.add_argument("--a-bits", type=int, default=8, help="activation bits (per-input dynamic scales)")
    p.add_argument(
        "--groups", choices=["stage", "layer"], default="stage", help="layers sharing one decision"
    )
    p.add_argument("--probe-samples", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_adapt)
    p = sub.add_parser(
        "replicate-hawq",
        help="HAWQ-V3's ILP on its published ResNet18/50 inputs: allocations, checks, fronts vs a search",
    )
    p.add_argument("--data", help="HAWQ-V3 ILP inputs JSON (default: the copy shipped with the package)")
    p.add_argument("--search-trials", type=int, default=300, help="NSGA-II trials per model and constraint")
    p.add_argument("--front-alphas", type=int, default=50, help="budgets of the exact ILP front sweep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON to PATH")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=cmd_replicate_hawq)
    p = sub.add_parser(
        "bench", help="run the benchmark suite (bench/*.py) and rewrite docs/BENCHMARKS.md's sections"
    )
    p.add_argument("--suite", choices=["quick", "full"], default="quick")
    p.add_argument("--only", nargs="+", metavar="SCRIPT", help="stage scripts to run, e.g. fronts_bench")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep stages finished by an earlier (interrupted) run whose command, inputs and results still match",
    )
    p.add_argument("--json", metavar="PATH", help="write every stage's results as one JSON to PATH")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser(
        "tracking-server",
        help="a shared MLflow tracking server (PostgreSQL + artifacts) for a team; Ctrl-C stops",
    )
    p.add_argument("--home", help="its PostgreSQL data (pg/) and artifacts (default: data/tracking)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0: other machines)")
    p.add_argument("--port", type=int, default=5001, help="the tracking server's port")
    p.add_argument("--pg-port", type=int, help="PostgreSQL's port on 127.0.0.1 (default: a free one)")
    p.add_argument("--allowed-hosts", help="MLflow's --allowed-hosts, needed when clients use a host name")
    p.set_defaults(func=cmd_tracking_server, json=None)
    return parser


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, output paths that cannot be written: an existing file without --overwrite, a
    directory, or a path below an existing file."""
    for opt in ("json", "csv", "out", "save", "save_best"):
        path = getattr(args, opt, None)
        if not path:
            continue
        flag = f"--{opt.replace('_', '-')}"
        p = Path(path)
        if p.is_dir():
            raise ValueError(f"{flag} {path} is a directory; give a file path")
        blocking = next((a for a in p.parents if a.exists() and not a.is_dir()), None)
        if blocking is not None:
            raise ValueError(f"{flag} {path}: {blocking} is a file, not a directory")
        if p.exists() and not args.overwrite:
            raise FileExistsError(f"{flag} {path} exists; pass --overwrite to replace it")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_outputs(args)
        if hasattr(args, "no_track") and not args.no_track:
            from workbench import tracking

            if tracking.tracking_enabled():
                tracking.check_reachable()  # a dead tracking server fails here, before any expensive work
        result = args.func(args)
        _write_json(args.json, {"command": args.command, **result})
    except (ValueError, OSError) as e:  # FileNotFoundError, FileExistsError, PermissionError are OSErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
