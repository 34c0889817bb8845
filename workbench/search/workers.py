"""The processes that work on a study: :func:`run_worker` runs trials until the study meets its target (every
worker counts the others' trials), :func:`run_parallel` spawns ``config.workers`` of them on this machine and
stops them all if it is interrupted; a spawned worker dies with the process that started it."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.devices import model_device, on_device
from workbench.search.auto_sampler import is_exhausted
from workbench.search.config import SearchConfig
from workbench.search.context import SearchContext, prepare
from workbench.search.storage import open_storage, real_evaluations
from workbench.search.strategies import make_sampler
from workbench.search.trial import evaluate_trial

if TYPE_CHECKING:
    from workbench.tasks.task import TaskLike


def run_worker(ctx: SearchContext, study: Any, *, target: int, counts_real: bool, parent_run_id: str | None,
                progress: bool, max_trials: int) -> None:  # fmt: skip
    """Run trials on ``study`` until ``target`` (real evaluations, or trials) is reached across all workers."""
    import optuna

    def done() -> int:
        if counts_real:
            return real_evaluations(study)
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=target, initial=min(done(), target), desc=f"search {ctx.config.strategy}", leave=False
        )
    trials_here = 0
    try:
        while True:
            have = done()
            if bar is not None:
                bar.n = min(have, target)
                bar.refresh()
            if have >= target or is_exhausted(study):
                break
            # trials other workers are running reserve their share of the budget: no worker overshoots it
            # (if a running trial ends without a real evaluation, its worker goes on to fill the gap)
            running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
            if counts_real and running and have + running >= target:
                break
            n_all = len(study.get_trials(deepcopy=False))
            if n_all >= max_trials:
                warnings.warn(
                    f"search stopped at the trial cap {max_trials} with {have}/{target} evaluations "
                    "(the sampler kept proposing measured or over-budget plans)",
                    stacklevel=2,
                )
                break
            study.optimize(
                lambda t: evaluate_trial(
                    ctx, t, parent_run_id=parent_run_id, budget=target if counts_real else None
                ),
                n_trials=1,
                catch=(),
                gc_after_trial=False,
                show_progress_bar=False,
            )
            trials_here += 1
    finally:
        if bar is not None:
            bar.close()


def run_parallel(task: TaskLike, config: SearchConfig, predictor: Any, storage_url: str, name: str, target: int,
                  counts_real: bool, parent_id: str | None, fp32_latency_ms: float) -> None:  # fmt: skip
    """``config.workers`` spawned processes work on the study until the target is met."""
    import tempfile

    import torch

    ctxm = mp.get_context("spawn")
    procs = []
    with tempfile.TemporaryDirectory(prefix="workbench-search-") as tmp:
        payload_path = str(Path(tmp) / "payload.pt")
        # the task's model travels in the file (on its device); each worker reads it onto the CPU and moves
        # it to ``device``, the parent's device, so a worker never depends on how the file stored it
        payload = {"task": task, "config": replace(config, progress=False), "predictor": predictor,
                   "storage": storage_url, "study": name, "target": target, "counts_real": counts_real,
                   "parent_run_id": parent_id, "fp32_latency_ms": fp32_latency_ms,
                   "device": str(model_device(task.model))}  # fmt: skip
        torch.save(payload, payload_path)  # a file, not shared memory: workers may sit on a small /dev/shm
        try:
            for w in range(config.workers):
                p = ctxm.Process(target=_spawn_worker, args=(payload_path, w, os.getpid()), daemon=False)
                p.start()
                procs.append(p)
            for p in procs:
                p.join()
        except BaseException:  # interrupted (Ctrl-C, an error): stop the workers, never leave them running
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join()
            raise
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(
            f"{len(bad)} search worker(s) failed (exit codes {bad}); the study keeps its trials"
        )


def _read_payload(payload_path: str) -> dict[str, Any]:
    """The worker payload written by :func:`_run_parallel` (in this session), read onto the CPU with the task's
    model then moved to ``payload["device"]``, the parent's device (the file's own device tags are not trusted:
    a worker may see other devices than the parent that wrote it)."""
    import torch

    payload = torch.load(payload_path, weights_only=False, map_location="cpu")
    payload["task"] = on_device(payload["task"], payload.get("device"))
    return payload


def _die_with_parent(parent_pid: int | None) -> None:
    """A spawned worker must not outlive the search that started it: a parent killed with SIGKILL (or OOM)
    would otherwise leave its workers running trials on the study, racing a later ``resume=True``. On Linux
    the kernel kills the worker with its parent (``PR_SET_PDEATHSIG``); everywhere a watchdog thread ends the
    worker once the pipe to its parent closes."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc / prctl: the watchdog below still works
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    parent = mp.parent_process()
    if parent is not None:

        def watch() -> None:
            parent.join()  # returns when the parent's end of the pipe closes: it has exited
            os._exit(1)

        threading.Thread(target=watch, name="workbench-parent-watch", daemon=True).start()


def _spawn_worker(payload_path: str, worker: int, parent_pid: int | None = None) -> None:  # a spawned process
    import optuna
    import torch

    _die_with_parent(parent_pid)
    payload = _read_payload(payload_path)
    task = payload["task"]
    config: SearchConfig = payload["config"]
    if config.worker_threads is not None:  # a spawned process starts with every core
        torch.set_num_threads(config.worker_threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = prepare(task, config, payload.get("predictor"), payload["storage"],
                   fp32_latency_ms=payload.get("fp32_latency_ms"))  # fmt: skip
    ctx.worker = worker
    storage = open_storage(payload["storage"], heartbeat=True)
    sampler = make_sampler(config.strategy, ctx, seed=config.seed + 1000 * worker)
    study = optuna.load_study(study_name=payload["study"], storage=storage, sampler=sampler)
    run_worker(ctx, study, target=payload["target"], counts_real=payload["counts_real"],
                parent_run_id=payload.get("parent_run_id"), progress=False, max_trials=config.trial_cap())  # fmt: skip
