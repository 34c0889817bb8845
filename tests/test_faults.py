"""Faults: each long stage (predictor dataset build, search with 2 spawned workers, QAT, the benchmark suite) is run
in a real process, killed with SIGKILL once its progress is visible on disk, restarted, and compared with an
uninterrupted run of the same seed; corrupt or stale caches and checkpoints of those stages are refused or rebuilt
with the file named, never silently used.

Every stage runs in ``fault_driver`` (the source below, written to a temporary folder on ``PYTHONPATH``), whose
``FAULT_SLOW`` seconds of sleep per measured plan / evaluated trial / training step make the stage slow enough to
be killed midway; the sleep changes no number.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from workbench.paths import data_dir

try:  # psutil when installed (it comes with the notebook tools), else /proc
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

pytestmark = pytest.mark.usefixtures(
    "one_torch_thread"
)  # this process's own runs: as the drivers, one thread

ROOT = Path(__file__).resolve().parents[1]
PLAN = "uniform:w4a8:per_channel"

DRIVER = r'''
"""One long stage in a fresh process: python -c "import fault_driver; fault_driver.main()" STAGE JSON."""

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

SLOW = float(os.environ.get("FAULT_SLOW", "0") or 0)


def slow_accuracy(model, loader):
    """Top-1 accuracy after a pause of FAULT_SLOW seconds (a picklable metric: spawned workers use it too)."""
    from workbench.tasks import evaluate_accuracy

    time.sleep(float(os.environ.get("FAULT_SLOW", "0") or 0))
    return evaluate_accuracy(model, loader)


def _slowed(fn):
    def wrapper(*args, **kwargs):
        time.sleep(SLOW)
        return fn(*args, **kwargs)

    return wrapper


def _task(a):
    import torch

    torch.set_num_threads(1)
    from workbench.tasks import load_task

    return load_task("digits_cnn", progress=False, cache_dir=a["models"])


def predictor(a):
    import workbench.predictor as P
    import workbench.predictor.dataset as D  # build_plan_dataset looks measure_plan up there

    task = _task(a)
    D.measure_plan = _slowed(D.measure_plan)
    cfg = P.PlanDatasetConfig(n_random=a["n_random"], n_stratified=a["n_stratified"], seed=0)
    ds = P.build_plan_dataset(task, None, cfg, resume=True, progress=False, track=False, num_threads=1)
    Path(a["out"]).write_text(json.dumps({k: v for k, v in ds.info.items() if k != "config"}, default=str))


def search(a):
    from workbench.search import SearchConfig, run_search

    task = dataclasses.replace(_task(a), metric=slow_accuracy)
    cfg = SearchConfig(strategy="tpe", budget=a["budget"], workers=2, worker_threads=1, storage=a["storage"],
                       study_name="faults", resume=a["resume"], track=False, progress=False, final_split=None)
    Path(a["out"]).write_text(json.dumps(run_search(task, cfg).to_dict(), default=str))


def qat(a):
    import torch
    import workbench.qat as Q

    task = _task(a)
    Q._Trainer.step = _slowed(Q._Trainer.step)
    cfg = Q.QATConfig(epochs=a["epochs"], checkpoint=a["checkpoint"], resume=a["resume"], seed=0)
    r = Q.train_qat(task, a["plan"], cfg, track=False, progress=False)
    torch.save(r.model.state_dict(), a["out"] + ".pt")
    history = r.history.drop(columns=["seconds"]).to_dict(orient="records")
    Path(a["out"]).write_text(json.dumps({"accuracy_after": r.accuracy_after, "val_accuracy_after":
        r.val_accuracy_after, "steps": r.steps, "resumed_at_step": r.resumed_at_step, "history": history,
        "final_plan": r.final_plan.to_dict()}, default=str))


def bench(a):
    import workbench.benchsuite as bs

    stages = [bs.Stage(n, f"bench/{n}.py", ("--n", str(i)), results=f"bench/out/{n}.json")
              for i, n in enumerate(a["stages"])]
    bs.suite.suite_stages = lambda suite: list(stages)  # where run_suite looks them up
    bs.suite._workbench_fingerprint = lambda: "fixed"  # other edits of the checkout must not make stages stale here
    r = bs.run_suite("quick", root=Path(a["root"]), resume=a["resume"])
    Path(a["out"]).write_text(json.dumps(r.to_dict(), default=str))


def main():
    stage, args = sys.argv[1], json.loads(sys.argv[2])
    globals()[stage](args)
'''


# ------------------------------------------------------------------------------------------- harness


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory, digits_cnn_task: Any) -> Path:
    """The folder holding fault_driver.py (digits_cnn_task first puts the trained model in the model cache)."""
    folder = tmp_path_factory.mktemp("driver")
    (folder / "fault_driver.py").write_text(DRIVER)
    return folder


def _share_signing_key(home: Path) -> None:
    """Give ``home`` this installation's signing key: files written there are trusted here (and back), as the
    files of one installation are; a home with a key of its own is another installation."""
    from workbench.paths import signing_key

    key_file = home / "data" / ".signing-key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_bytes(signing_key())
    key_file.chmod(0o600)


def _env(home: Path, driver: Path, slow: float = 0.0) -> dict[str, str]:
    _share_signing_key(home)
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(driver), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        WORKBENCH_HOME=str(home),
        MLFLOW_TRACKING_URI=f"sqlite:///{home}/mlflow.db",
        OMP_NUM_THREADS="1",
        FAULT_SLOW=str(slow),
        PYTHONWARNINGS="ignore::FutureWarning,ignore::DeprecationWarning",
    )
    return env


def _start(stage: str, args: dict[str, Any], env: dict[str, str]) -> subprocess.Popen:
    args = {"models": str(data_dir() / "models"), **args}
    return subprocess.Popen(
        [sys.executable, "-c", "import fault_driver; fault_driver.main()", stage, json.dumps(args)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _run(stage: str, args: dict[str, Any], env: dict[str, str]) -> str:
    """Run a stage to its end; its stderr."""
    proc = _start(stage, args, env)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return err


@dataclasses.dataclass(frozen=True)
class _Child:
    pid: int
    command: str


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first, then the parent pid); None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _descendants(pid: int) -> list[_Child]:
    """Every process below ``pid`` (psutil when installed, else /proc)."""
    if psutil is not None:
        out = []
        for p in psutil.Process(pid).children(recursive=True):
            try:
                out.append(_Child(p.pid, " ".join(p.cmdline())))
            except psutil.Error:
                out.append(_Child(p.pid, ""))
        return out
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (stat := _proc_stat(int(d.name))) is not None:
            parents[int(d.name)] = int(stat[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [c for c, pp in parents.items() if pp == parent]
        found += kids
        todo += kids
    return [
        _Child(c, Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        for c in found
    ]


def _alive(pid: int) -> bool:
    """Running (a zombie, exited and waiting for init to reap it, is not)."""
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _kill_when(
    proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 150
) -> list[_Child]:
    """SIGKILL ``proc`` once ``ready()``; the processes it had started (taken just before the kill)."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(
                    f"the stage ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}"
                )
            assert time.monotonic() < deadline, f"never saw {what}"
            time.sleep(0.05)
        children = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return children


def _assert_no_orphans(children: list[_Child], timeout: float = 10) -> None:
    """Every process the killed stage had started is gone: none keeps writing to the stage's files."""
    deadline = time.monotonic() + timeout
    while any(_alive(c.pid) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [c for c in children if _alive(c.pid)]
    for c in left:  # never leave them behind, whatever the verdict
        with contextlib.suppress(ProcessLookupError):
            os.kill(c.pid, signal.SIGKILL)
    assert not left, f"processes outlived the killed stage: {left}"


# ------------------------------------------------------------------------------------ predictor dataset

N_RANDOM, N_STRATIFIED = 6, 6
VALUES = ("accuracy", "acc_drop", "kl", "logit_mse", "size_bytes", "avg_weight_bits", "avg_act_bits", "bops")


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["type"] == "plan":
            out.append(rec)
    return out


def _values(records: list[dict[str, Any]]) -> list[tuple]:
    """What a measurement says about a plan (eval_seconds, a timing, left out)."""
    return [(r["plan_id"], r["w_bits"], r["a_bits"], *(r[k] for k in VALUES)) for r in records]


@pytest.fixture(scope="module")
def reference_dataset(digits_cnn_task: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted build (this process, one torch thread as the driver) at its default cache path."""
    from workbench import predictor as P

    home = tmp_path_factory.mktemp("ref-home")
    _share_signing_key(home)
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_HOME", str(home))
    try:
        cfg = P.PlanDatasetConfig(n_random=N_RANDOM, n_stratified=N_STRATIFIED, seed=0)
        ds = P.build_plan_dataset(digits_cnn_task, None, cfg, progress=False, num_threads=1)
    finally:
        mp.undo()
    return Path(ds.info["path"])


@pytest.mark.timeout(300)
def test_predictor_build_killed_midway_resumes_each_plan_once(driver, tmp_path, reference_dataset):
    env = _env(tmp_path, driver, slow=0.3)
    args = {"n_random": N_RANDOM, "n_stratified": N_STRATIFIED, "out": str(tmp_path / "info.json")}
    folder = tmp_path / "data" / "predictor"

    def measured() -> int:
        files = list(folder.glob("*.jsonl"))
        return len(files[0].read_text().splitlines()) - 1 if files else 0  # lines after the header

    children = _kill_when(_start("predictor", args, env), lambda: measured() >= 4, "4 measured plans")
    _assert_no_orphans(children)
    (file,) = folder.glob("*.jsonl")
    assert file.name == reference_dataset.name  # same model, data and config: the same cache key
    before = _records(file)
    assert 4 <= len(before) < N_RANDOM + N_STRATIFIED

    _run("predictor", args, _env(tmp_path, driver))
    info = json.loads((tmp_path / "info.json").read_text())
    after = _records(file)
    ids = [r["plan_id"] for r in after]
    assert len(ids) == len(set(ids)) == N_RANDOM + N_STRATIFIED  # each plan exactly once
    assert after[: len(before)] == before  # nothing measured before the kill was lost or measured again
    assert info["n_cached"] == len(before) and info["n_measured"] == len(after) - len(before)
    # the same plans, in the same order, with the same measured values as an uninterrupted build: measuring
    # a plan is deterministic (calibration and evaluation on fixed data, one torch thread), so bitwise equal
    assert _values(after) == _values(_records(reference_dataset))


def _build(task: Any, path: Path, **changes: Any):
    from workbench import predictor as P

    cfg = P.PlanDatasetConfig(**{"n_random": N_RANDOM, "n_stratified": N_STRATIFIED, "seed": 0, **changes})
    return P.build_plan_dataset(task, None, cfg, path=path, progress=False, num_threads=1)


@pytest.mark.timeout(120)
def test_predictor_cache_cut_short_or_edited_lines_are_named_and_measured_again(
    digits_cnn_task, reference_dataset, tmp_path
):
    path = tmp_path / "plans.jsonl"
    text = reference_dataset.read_text()
    lines = text.splitlines()
    # a kill in the middle of writing the last line: half of it on disk, no newline
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    with pytest.warns(
        UserWarning, match=rf"{path.name}: dropped 1 bad line\(s\) \(line {len(lines)}: cut short"
    ):
        ds = _build(digits_cnn_task, path)
    assert ds.info["n_measured"] == 1 and ds.info["n_cached"] == len(lines) - 2
    assert _values(_records(path)) == _values(_records(reference_dataset))  # the file is whole again
    assert path.read_text().count("\n") == len(lines)  # the cut line is gone, not kept beside its rerun

    # an edited measurement (a value changed by hand) fails its line checksum: named, measured again
    edited = json.loads(lines[3])
    edited["accuracy"] = 1.0
    path.write_text("\n".join([*lines[:3], json.dumps(edited), *lines[4:]]) + "\n")
    with pytest.warns(UserWarning, match=rf"line 4: plan {edited['plan_id']} fails its checksum"):
        ds = _build(digits_cnn_task, path)
    assert ds.info["n_measured"] == 1
    by_plan = {v[0]: v for v in _values(_records(path))}  # the corrected line now comes last
    assert len(by_plan) == len(lines) - 1 and by_plan == {
        v[0]: v for v in _values(_records(reference_dataset))
    }
    assert dict(zip(ds.frame["plan_id"], ds.frame["accuracy"], strict=True))[edited["plan_id"]] != 1.0


@pytest.mark.timeout(120)
def test_predictor_cache_of_another_config_or_with_a_bad_header_is_refused(
    digits_cnn_task, reference_dataset, tmp_path
):
    from workbench import predictor as P

    # the file of another config (per-tensor plans) put where this config's cache lives: refused, untouched
    home = tmp_path / "home"
    other = tmp_path / "other.jsonl"
    _build(digits_cnn_task, other, n_random=2, n_stratified=0, granularity="per_tensor")
    own = home / "data" / "predictor" / reference_dataset.name
    own.parent.mkdir(parents=True)
    shutil.copy(other, own)
    _share_signing_key(home)
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_HOME", str(home))
    try:
        with pytest.raises(
            ValueError, match=rf"cache file {re.escape(str(own))} holds .*or of another split or granularity"
        ):
            P.build_plan_dataset(
                digits_cnn_task, None, P.PlanDatasetConfig(n_random=2, n_stratified=0), progress=False
            )
    finally:
        mp.undo()
    assert own.read_bytes() == other.read_bytes()

    # a header edited by hand (here its split) fails its checksum: the file cannot be trusted, refused
    lines = reference_dataset.read_text().splitlines()
    header = json.loads(lines[0])
    path = tmp_path / "edited.jsonl"
    path.write_text("\n".join([json.dumps({**header, "split": "test"}), *lines[1:]]) + "\n")
    with pytest.raises(
        ValueError,
        match=rf"cache file {re.escape(str(path))} has no valid header line \(line 1 fails its checksum",
    ):
        _build(digits_cnn_task, path)
    with pytest.raises(ValueError, match="no valid header line"):
        P.PlanDataset.load(path)

    # a build killed while writing its header (nothing measured yet): said, and the file started again
    path.write_text(lines[0][:40])
    with pytest.warns(UserWarning, match=rf"{path.name}: its only line, the header, was cut short"):
        ds = _build(digits_cnn_task, path)
    assert ds.info["n_measured"] == N_RANDOM + N_STRATIFIED
    assert _values(_records(path)) == _values(_records(reference_dataset))


# ---------------------------------------------------------------------------------------------- search


def _trials(url: str, *states: optuna.trial.TrialState) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name="faults", storage=url)
    except KeyError:
        return []
    return study.get_trials(deepcopy=False, states=states or None)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_search_with_two_workers_killed_resumes_keeping_every_completed_trial(driver, tmp_path):
    COMPLETE, RUNNING = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING
    budget = 8
    url = f"sqlite:///{tmp_path}/killed.db"
    args = {"budget": budget, "storage": url, "resume": False, "out": str(tmp_path / "killed.json")}
    # an uninterrupted run with the same seed, on its own storage; it runs meanwhile (the killed run mostly
    # sleeps in its slowed evaluations) and is compared at the end
    ref_url = f"sqlite:///{tmp_path}/reference.db"
    ref_args = {**args, "storage": ref_url, "out": str(tmp_path / "ref.json")}
    ref_proc = _start("search", ref_args, _env(tmp_path / "ref", driver))
    proc = _start("search", args, _env(tmp_path, driver, slow=0.6))
    children = _kill_when(proc, lambda: len(_trials(url, COMPLETE)) >= 3, "3 completed trials")
    assert len([p for p in children if "spawn_main" in p.command]) == 2  # both workers ran
    _assert_no_orphans(children)  # the workers die with the parent: nothing keeps writing to the study
    before = {t.number: (t.params, t.values, t.user_attrs) for t in _trials(url, COMPLETE)}
    time.sleep(1.0)
    assert len(_trials(url, COMPLETE)) == len(before)  # and indeed nothing was written after the kill
    assert 3 <= len(before) < budget

    args = {**args, "resume": True, "out": str(tmp_path / "resumed.json")}
    _run("search", args, _env(tmp_path, driver))
    done = _trials(url, COMPLETE)
    after = {t.number: (t.params, t.values, t.user_attrs) for t in done}
    assert all(after[n] == v for n, v in before.items())  # every completed trial kept exactly as it was
    assert not _trials(url, RUNNING)  # trials the kill left running were marked failed, not left dangling
    measured = [t.user_attrs["plan_key"] for t in done if t.user_attrs["real_eval"]]
    assert len(measured) == len(set(measured)) == budget  # no plan measured twice; the budget met exactly
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["real_evaluations"] == budget

    # An uninterrupted run with the same seed. Two workers interleave their TPE proposals in whatever order
    # the OS schedules them, and a resumed worker's sampler starts again from its seed (its first proposals are
    # plans already measured: cache hits, no evaluation); so which plans get measured, hence the front, differs
    # from run to run even without a kill. What must agree is everything that does not depend on the order:
    # the budget, and the accuracy of every plan both runs measured (a measurement is deterministic).
    _, err = ref_proc.communicate(timeout=240)
    assert ref_proc.returncode == 0, err[-3000:]
    reference = json.loads((tmp_path / "ref.json").read_text())
    ref_measured = [t.user_attrs["plan_key"] for t in _trials(ref_url, COMPLETE) if t.user_attrs["real_eval"]]
    assert reference["real_evaluations"] == len(set(ref_measured)) == len(ref_measured) == budget
    acc = {t.user_attrs["plan_key"]: t.user_attrs["accuracy"] for t in done}
    ref_acc = {t.user_attrs["plan_key"]: t.user_attrs["accuracy"] for t in _trials(ref_url, COMPLETE)}
    common = set(acc) & set(ref_acc)
    assert all(acc[k] == ref_acc[k] for k in common)
    # each run's front is the Pareto front of its own measured trials (accuracy up, weight bytes down)
    for result, trials in ((resumed, done), (reference, _trials(ref_url, COMPLETE))):
        points = {(t.user_attrs["accuracy"], t.user_attrs["weight_bytes"]) for t in trials}
        front = {(f["accuracy"], f["weight_bytes"]) for f in result["front"]}
        assert front <= points
        assert not any(a >= fa and w <= fw and (a, w) != (fa, fw) for fa, fw in front for a, w in points)


@pytest.mark.timeout(120)
def test_search_resume_of_a_study_of_another_model_is_refused(digits_cnn_task, tmp_path, monkeypatch):
    from workbench.search import SearchConfig, SearchError, run_search

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    url = f"sqlite:///{tmp_path}/s.db"
    cfg = SearchConfig(strategy="random", budget=2, storage=url, study_name="s", track=False, progress=False,
                       final_split=None)  # fmt: skip
    run_search(digits_cnn_task, cfg)
    other = copy.deepcopy(digits_cnn_task)
    with torch.no_grad():
        other.model.fc2.bias.add_(0.01)  # another model (say, retrained) under the same task name
    with pytest.raises(
        SearchError, match=r"study 's' in .*s\.db was created for task 'digits_cnn' with another"
    ):
        run_search(other, dataclasses.replace(cfg, resume=True, budget=4))
    assert len(_trials_of(url, "s")) == 2  # the study is untouched
    # the same model resumes (and is not re-measured: the budget grows by the new plans only)
    result = run_search(digits_cnn_task, dataclasses.replace(cfg, resume=True, budget=3))
    assert result.real_evaluations == 3


def _trials_of(url: str, name: str) -> list:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


# ------------------------------------------------------------------------------------------------- QAT


@pytest.mark.timeout(300)
def test_qat_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(driver, tmp_path):
    ckpt = tmp_path / "qat.pt"
    args = {
        "epochs": 3,
        "plan": PLAN,
        "checkpoint": str(ckpt),
        "resume": False,
        "out": str(tmp_path / "killed"),
    }
    # the uninterrupted run (same seed, its own checkpoint) runs meanwhile: the killed one mostly sleeps
    ref_args = {**args, "checkpoint": str(tmp_path / "ref-ckpt.pt"), "out": str(tmp_path / "ref")}
    ref_proc = _start("qat", ref_args, _env(tmp_path, driver))
    children = _kill_when(_start("qat", args, _env(tmp_path, driver, slow=0.04)), ckpt.exists, "a checkpoint")
    _assert_no_orphans(children)
    saved = torch.load(ckpt, weights_only=True)["progress"]
    assert 1 <= saved["epoch"] < 3 and not saved["done"]  # killed between the first checkpoint and the end

    resumed_args = {**args, "resume": True, "out": str(tmp_path / "resumed")}
    _run("qat", resumed_args, _env(tmp_path, driver))
    _, err = ref_proc.communicate(timeout=240)
    assert ref_proc.returncode == 0, err[-3000:]
    resumed = json.loads((tmp_path / "resumed").read_text())
    reference = json.loads((tmp_path / "ref").read_text())
    assert resumed["resumed_at_step"] == saved["global_step"] > 0 and reference["resumed_at_step"] is None
    # The checkpoint holds model, optimizer, schedule position, history and the RNG state, and each epoch's
    # batch order is seeded by (seed, epoch): on one torch thread the resumed run repeats the uninterrupted
    # one's arithmetic exactly, so weights and metrics are bitwise equal (no tolerance needed).
    assert {k: v for k, v in resumed.items() if k != "resumed_at_step"} == {
        k: v for k, v in reference.items() if k != "resumed_at_step"
    }
    a = torch.load(tmp_path / "resumed.pt", weights_only=True)
    b = torch.load(tmp_path / "ref.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def qat_checkpoint(digits_cnn_task: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workbench.qat import QATConfig, train_qat

    path = tmp_path_factory.mktemp("qat") / "ckpt.pt"
    config = QATConfig(epochs=1, checkpoint=str(path), max_steps=3)
    train_qat(digits_cnn_task, PLAN, config, track=False, progress=False)
    return path


def _resume(task: Any, path: Path, plan: str = PLAN, **changes: Any):
    from workbench.qat import QATConfig, train_qat

    config = QATConfig(epochs=1, checkpoint=str(path), resume=True, **changes)
    return train_qat(task, plan, config, track=False, progress=False)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "damage, match",
    [
        ("truncated", r"is not a readable QAT checkpoint \(truncated or corrupted"),
        ("edited weight", r"does not match its content hash: it was edited or corrupted"),
        ("hash removed", r"has no content hash"),
        ("other plan", r"different QAT config or plan \(plan\..*: checkpoint 4 != now 8"),
        ("other config", r"different QAT config or plan \(config\.lr: checkpoint 0\.0005 != now 0\.001\)"),
        ("other model", r"was written for another model"),
    ],
)
def test_qat_bad_checkpoints_are_refused_naming_file_and_mismatch(
    damage, match, qat_checkpoint, digits_cnn_task, tmp_path
):
    from workbench.qat import QATError

    path = tmp_path / f"{damage.replace(' ', '_')}.pt"
    shutil.copy(qat_checkpoint, path)
    task, plan, changes = digits_cnn_task, PLAN, {}
    if damage == "truncated":  # a copy cut short (a full disk, a copy killed midway)
        path.write_bytes(qat_checkpoint.read_bytes()[: qat_checkpoint.stat().st_size // 2])
    elif damage in ("edited weight", "hash removed"):  # torch.load reads these without complaint
        ckpt = torch.load(qat_checkpoint, weights_only=True)
        if damage == "edited weight":
            name = next(k for k, v in ckpt["model_state"].items() if v.is_floating_point() and v.numel() > 1)
            ckpt["model_state"][name] = ckpt["model_state"][name] + 1e-3
        else:
            del ckpt["content_sha256"]
        torch.save(ckpt, path)
    elif damage == "other plan":
        plan = "uniform:w8a8:per_channel"
    elif damage == "other config":
        changes = {"lr": 1e-3}
    else:
        task = copy.deepcopy(digits_cnn_task)
        with torch.no_grad():
            task.model.fc2.bias.add_(0.01)
    data = path.read_bytes()
    with pytest.raises(
        QATError, match=rf"checkpoint {re.escape(str(path))} .*{match}" if damage != "truncated" else match
    ) as e:
        _resume(task, path, plan, **changes)
    assert str(path) in str(e.value)
    assert path.read_bytes() == data  # a refused checkpoint is never touched


@pytest.mark.timeout(120)
def test_qat_flipped_bytes_in_a_checkpoint_are_caught(qat_checkpoint, digits_cnn_task, tmp_path):
    """A bit flipped inside tensor data still loads with torch.load; the content hash refuses it."""
    from workbench.qat import QATError

    data = bytearray(qat_checkpoint.read_bytes())
    for at in (len(data) // 3, len(data) // 2):
        bad = bytearray(data)
        bad[at] ^= 0x10
        path = tmp_path / f"flip{at}.pt"
        path.write_bytes(bad)
        with pytest.raises(
            QATError,
            match=rf"checkpoint {re.escape(str(path))} (does not match its content hash|is not a readable)",
        ):
            _resume(digits_cnn_task, path)
    # the intact checkpoint resumes
    assert _resume(digits_cnn_task, qat_checkpoint).resumed_at_step == 3


# ------------------------------------------------------------------------------------- benchmark suite

STAGE_SCRIPT = """
import json, os, sys, time
from pathlib import Path

name = Path(__file__).stem
out = Path("bench/out")
out.mkdir(parents=True, exist_ok=True)
with (out / "runs.log").open("a") as f:
    f.write(f"{name} start {os.getpid()}\\n")
if name == "b" and float(os.environ.get("FAULT_SLOW") or 0):
    time.sleep(120)  # killed here
(out / f"{name}.json").write_text(json.dumps({"stage": name, "args": sys.argv[1:], "value": len(name) * 7}))
with (out / "runs.log").open("a") as f:
    f.write(f"{name} done\\n")
"""


def _bench_root(path: Path) -> Path:
    for name in "abc":
        (path / "bench").mkdir(parents=True, exist_ok=True)
        (path / "bench" / f"{name}.py").write_text(STAGE_SCRIPT)
    (path / "docs").mkdir()
    (path / "docs" / "BENCHMARKS.md").write_text("# Benchmarks\n\n## A section\n\nkept\n")
    return path


@pytest.mark.timeout(200)
def test_bench_suite_killed_midway_resumes_skipping_finished_stages(driver, tmp_path):
    root = _bench_root(tmp_path / "root")
    log = root / "bench" / "out" / "runs.log"
    args = {
        "root": str(root),
        "stages": ["a", "b", "c"],
        "resume": True,
        "out": str(tmp_path / "killed.json"),
    }

    def b_started() -> bool:
        return log.exists() and "b start" in log.read_text()

    children = _kill_when(_start("bench", args, _env(tmp_path, driver, slow=1)), b_started, "stage b running")
    assert int(log.read_text().split("b start ")[1].split()[0]) in {c.pid for c in children}
    _assert_no_orphans(children)  # the sleeping stage b died with the suite
    assert not (root / "bench" / "out" / "b.json").exists()

    err = _run("bench", {**args, "out": str(tmp_path / "resumed.json")}, _env(tmp_path, driver))
    assert "[bench resume] a: kept, not run again (finished" in err
    assert "[bench resume] b: runs again (not finished in an earlier run)" in err
    runs = [line.rsplit(" ", 1)[0] if "start" in line else line for line in log.read_text().splitlines()]
    assert runs == ["a start", "a done", "b start", "b start", "b done", "c start", "c done"]  # a: once
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert [s["status"] for s in resumed["stages"]] == ["ok (kept from an earlier run)", "ok", "ok"]
    assert resumed["ok"] and resumed["command"].endswith("--resume")

    # an uninterrupted run of the same suite gives the same stage results and document sections
    ref = _bench_root(tmp_path / "ref")
    _run("bench", {**args, "root": str(ref), "resume": False, "out": str(tmp_path / "ref.json")},
         _env(tmp_path, driver))  # fmt: skip
    reference = json.loads((tmp_path / "ref.json").read_text())
    assert [s["results"] for s in resumed["stages"]] == [s["results"] for s in reference["stages"]]
    for name in "abc":
        assert (root / "bench/out" / f"{name}.json").read_text() == (
            ref / "bench/out" / f"{name}.json"
        ).read_text()
    doc, ref_doc = ((r / "docs" / "BENCHMARKS.md").read_text() for r in (root, ref))
    assert "kept" in doc and doc.count("| a |") == ref_doc.count("| a |") == 1
