"""The benchmark suite behind docs/BENCHMARKS.md: ``python -m workbench bench --suite {quick,full}``.

A suite is an ordered list of benchmark scripts (``bench/*.py`` of a source checkout), each with the arguments
of that suite. Every script writes its own ``## `` sections of docs/BENCHMARKS.md in place and its raw results
under ``bench/out/``; the suite runs them in fresh processes (so one script's caches and threads cannot skew
the next one's timings), times them, and writes the machine, versions, commands and stage times as the
"## Suite" section plus one JSON that gathers every script's results.

Resume: every stage that finishes is recorded in ``bench/out/suite-<suite>.state.json`` (written atomically)
with its command, a fingerprint of its inputs (the script, its optional input, the workbench sources) and the
SHA-256 of its results file. ``run_suite(..., resume=True)`` (or ``WORKBENCH_BENCH_RESUME=1``) skips, and says
so, every stage whose record still matches; a stage killed midway, or whose command, inputs or results file
changed since, runs again. A stage's process is killed with the suite's (Linux), so none is left running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("quick", "full")
SUITE_HEADING = "## Suite: machine, versions, commands"
STATE_VERSION = 1
KEPT_STATUS = "ok (kept from an earlier run)"  # a finished stage skipped by resume=True


@dataclasses.dataclass(frozen=True)
class Stage:
    """One benchmark script with its arguments; ``results``: the JSON it writes (relative to the root)."""

    name: str
    script: str
    args: tuple[str, ...] = ()
    results: str | None = None
    optional_input: str | None = None  # skipped (and said so) when this file is missing
    skip_reason: str = ""

    def command(self) -> list[str]:
        return ["python", self.script, *self.args]


def suite_stages(suite: str) -> list[Stage]:
    """The stages of ``suite`` (``quick``: under 20 minutes on 2 cores from a cold cache; ``full``: the numbers
    quoted in docs/BENCHMARKS.md at their full repeat counts, about an hour)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; valid choices: {', '.join(SUITES)}")
    quick = suite == "quick"
    # the peers run in their own venv (.venv-peers, set up on first use), then are compared with ours
    peers = Stage(
        "peers (AIMET AMP, NNCF HAWQ: setup if needed, run, compare)",
        "bench/peers_bench.py",
        ("--run-peers",),
        results="bench/out/peers_bench.json",
    )
    return [
        Stage(
            "ptq, timings, sensitivity, predictor",
            "bench/run_benchmarks.py",
            ("--repeats", "3", "--plans", "150") if quick else ("--repeats", "5", "--plans", "300"),
        ),
        Stage(
            "fronts (both models, every strategy)",
            "bench/fronts_bench.py",
            ("--budget", "20", "--seeds", "3", "--qat-epochs", "3", "--predictor-plans", "150")
            if quick
            else ("--budget", "40", "--seeds", "3", "--qat-epochs", "8", "--predictor-plans", "300"),
            results="bench/out/fronts.json",
        ),
        *(
            []
            if quick
            else [
                Stage(
                    "search variants (digits_resnet)",
                    "bench/search_bench.py",
                    results="bench/out/search.json",
                ),
                Stage("qat (digits_resnet)", "bench/qat_bench.py", results="bench/out/qat_bench.json"),
                Stage(
                    "bring your own model: DigitsBert on dynamic int8 / bf16",
                    "bench/transformer_bench.py",
                    results="bench/out/transformer.json",
                ),
                Stage(
                    "bring your own model: weight-only mixed precision on DigitsBert",
                    "bench/byom_bench.py",
                    results="bench/out/byom.json",
                ),
            ]
        ),
        Stage(
            "hardware deployment and estimator",
            "bench/hardware_bench.py",
            ("--repeats", "3", "--skip-resnet18") if quick else (),
            results="bench/out/hardware_bench.json",
        ),
        Stage(
            "runtime adaptation",
            "bench/runtime_bench.py",
            ("--models", "digits_resnet", "--budgets", "0.45") if quick else (),
            results="bench/out/runtime_bench.json",
        ),
        Stage(
            "parallel plan evaluation (1 vs 2 workers)",
            "bench/parallel_bench.py",
            ("--budget", "48", "--repeats", "2") if quick else ("--budget", "64", "--repeats", "5"),
            results="bench/out/parallel.json",
        ),
        Stage("hawq-v3 replication", "bench/hawq_bench.py", results="bench/out/hawq.json"),
        peers,
    ]


@dataclasses.dataclass
class StageResult:
    name: str
    command: str
    status: str  # "ok", "failed (exit N)" or "skipped: why"
    seconds: float
    results: Any = None
    log_tail: str = ""
    note: str = ""  # resume: why the stage was kept, or why it ran again


@dataclasses.dataclass
class SuiteResult:
    suite: str
    machine: dict[str, Any]
    stages: list[StageResult]
    seconds: float
    command: str

    @property
    def ok(self) -> bool:
        return all(s.status in ("ok", KEPT_STATUS) or s.status.startswith("skipped") for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "command": self.command,
            "machine": self.machine,
            "seconds": self.seconds,
            "ok": self.ok,
            "stages": [dataclasses.asdict(s) for s in self.stages],
        }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, memory, OS, Python and the packages that matter."""
    import torch

    mem = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    flags = ""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {
            p: _version(p)
            for p in ("torch", "torchvision", "numpy", "scikit-learn", "scipy", "optuna", "mlflow", "plotly")
        },
        "date_utc": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
    }


Runner = Callable[[list[str], Path], tuple[int, str]]


def _kill_with_parent_fn() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when the suite's process dies (Linux
    ``PR_SET_PDEATHSIG``), so a suite killed midway leaves no stage running on; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # in the child, between fork and exec: no imports, no locks
        prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the suite died before prctl took effect
            os._exit(1)

    return preexec


def _subprocess_runner(argv: list[str], root: Path) -> tuple[int, str]:
    """Run one script with this interpreter; its output goes to the terminal and the last lines are kept."""
    proc = subprocess.Popen(  # noqa: S603 - our own scripts, with this interpreter
        [sys.executable, *argv[1:]],
        cwd=root,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # the script's lines reach the terminal as they come
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_kill_with_parent_fn(),  # only prctl and getppid run in it
    )
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(line)
        tail = [*tail[-39:], line]
    return proc.wait(), "".join(tail)


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _workbench_fingerprint() -> str:
    """SHA-256 of every ``workbench/**/*.py`` this suite imports: a stage measured with other code is stale."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for file in sorted(package.rglob("*.py")):
        h.update(str(file.relative_to(package)).encode())
        h.update(file.read_bytes())
    return h.hexdigest()


def _inputs_fingerprint(stage: Stage, root: Path, code: str) -> str:
    parts = [json.dumps(stage.command()), _sha256(root / stage.script) or "", code]
    if stage.optional_input:
        parts.append(_sha256(root / stage.optional_input) or "missing")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def state_path(suite: str, root: Path = ROOT) -> Path:
    """Where :func:`run_suite` records finished stages of ``suite`` (see the module docstring)."""
    return root / "bench" / "out" / f"suite-{suite}.state.json"


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it: a process killed meanwhile leaves
    the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_state(path: Path, suite: str) -> dict[str, Any]:
    """Finished stages recorded in ``path`` (empty, with a warning naming the file, when it is unreadable or
    belongs to another suite or format)."""
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
            raise ValueError("not a suite state file")
        if state.get("version") != STATE_VERSION or state.get("suite") != suite:
            raise ValueError(f"version {state.get('version')!r} of suite {state.get('suite')!r}")
    except (OSError, ValueError) as e:
        warnings.warn(f"bench state file {path} is unusable ({e}); every stage runs again", stacklevel=3)
        return {}
    return state["stages"]


def _kept_reason(stage: Stage, record: Any, root: Path, fingerprint: str) -> tuple[bool, str]:
    """(keep, why): whether a finished stage's record still matches this run."""
    if not isinstance(record, dict):
        return False, "not finished in an earlier run"
    if record.get("command") != stage.command():
        return (
            False,
            f"command changed since the earlier run ({' '.join(map(str, record.get('command') or []))})",
        )
    if record.get("inputs") != fingerprint:
        return False, "its script, input or the workbench code changed since the earlier run"
    if stage.results:
        sha = _sha256(root / stage.results)
        if sha is None:
            return False, f"its results file {stage.results} is missing"
        if sha != record.get("results_sha256"):
            return False, f"its results file {stage.results} changed since the earlier run"
    return True, f"finished {record.get('finished_utc', '?')} UTC with the same command, inputs and results"


def run_suite(
    suite: str = "quick",
    *,
    root: Path = ROOT,
    only: Sequence[str] | None = None,
    runner: Runner | None = None,
    doc: Path | None = None,
    resume: bool | None = None,
    state: Path | None = None,
) -> SuiteResult:
    """Run every stage of ``suite`` in order (``only``: stage scripts' stems to keep, e.g. ``fronts_bench``),
    then write the suite section of ``doc`` (default ``docs/BENCHMARKS.md``). A failing stage does not stop the
    others; its status says so.

    Each stage that finishes is recorded in ``state`` (default :func:`state_path`). ``resume`` (None: the
    ``WORKBENCH_BENCH_RESUME`` environment variable, ``1`` meaning yes) keeps the stages recorded there whose
    command, inputs and results file still match (status :data:`KEPT_STATUS`, their earlier seconds and
    results) and runs the others; without it the record starts over."""
    if resume is None:
        resume = os.environ.get("WORKBENCH_BENCH_RESUME", "").strip().lower() in ("1", "true", "yes")
    stages = suite_stages(suite)
    if only:
        stems = {Path(s.script).stem for s in stages}
        bad = sorted(set(only) - stems)
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; valid choices: {', '.join(sorted(stems))}")
        stages = [s for s in stages if Path(s.script).stem in set(only)]
    runnable = [s for s in stages if not s.optional_input or (root / s.optional_input).exists()]
    missing = [s.script for s in runnable if not (root / s.script).exists()]
    if missing:
        raise FileNotFoundError(
            f"benchmark scripts {missing} not found under {root}: the suite runs from a source checkout"
        )
    runner = runner or _subprocess_runner
    machine = machine_info()
    state_file = state if state is not None else state_path(suite, root)
    finished: dict[str, Any] = _read_state(state_file, suite) if resume else {}
    code = _workbench_fingerprint()

    def record(name: str, entry: dict[str, Any] | None) -> None:
        if entry is None:
            finished.pop(name, None)
        else:
            finished[name] = entry
        body = {"version": STATE_VERSION, "suite": suite, "stages": finished}
        _atomic_write_text(state_file, json.dumps(body, indent=1) + "\n")

    if not resume:
        record("", None)  # a fresh record: nothing of an earlier run is kept
    t_all = time.perf_counter()
    done: list[StageResult] = []
    for stage in stages:
        cmd = " ".join(stage.command())
        if stage.optional_input and not (root / stage.optional_input).exists():
            done.append(StageResult(stage.name, cmd, f"skipped: {stage.skip_reason}", 0.0))
            continue
        fingerprint = _inputs_fingerprint(stage, root, code)
        note = ""
        if resume:
            keep, note = _kept_reason(stage, finished.get(stage.name), root, fingerprint)
            verb = "kept, not run again" if keep else "runs again"
            print(f"[bench resume] {stage.name}: {verb} ({note})", file=sys.stderr, flush=True)
            if keep:
                entry = finished[stage.name]
                results = None
                if stage.results:
                    results = json.loads((root / stage.results).read_text())
                done.append(StageResult(stage.name, cmd, KEPT_STATUS, float(entry.get("seconds", 0.0)), results,
                                        note=note))  # fmt: skip
                continue
        record(stage.name, None)  # running: a kill from here on leaves it unfinished
        t0 = time.perf_counter()
        code_, tail = runner(stage.command(), root)
        seconds = time.perf_counter() - t0
        results = None
        if code_ == 0 and stage.results and (root / stage.results).exists():
            results = json.loads((root / stage.results).read_text())
        status = "ok" if code_ == 0 else f"failed (exit {code_})"
        done.append(StageResult(stage.name, cmd, status, seconds, results, tail if code_ else "", note=note))
        if code_ == 0:
            record(
                stage.name,
                {
                    "command": stage.command(),
                    "inputs": fingerprint,
                    "results": stage.results,
                    "results_sha256": _sha256(root / stage.results) if stage.results else None,
                    "seconds": seconds,
                    "finished_utc": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S}",
                },
            )
    only_part = f" --only {' '.join(only)}" if only else ""
    result = SuiteResult(
        suite=suite,
        machine=machine,
        stages=done,
        seconds=time.perf_counter() - t_all,
        command=f"python -m workbench bench --suite {suite}{only_part}{' --resume' if resume else ''}",
    )
    write_suite_section(doc or root / "docs" / "BENCHMARKS.md", result)
    return result


def suite_section(result: SuiteResult) -> list[str]:
    m = result.machine
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        SUITE_HEADING,
        "",
        f"Last suite run: `{result.command}` (`make bench`{' ' if result.suite == 'quick' else '-full '}runs it)"
        f", {m['date_utc']} UTC, {result.seconds / 60:.1f} min in all.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; AVX512-VNNI {m['avx512_vnni']},"
        f" AVX512-BF16 {m['avx512_bf16']}; GPU {m['gpu'] or 'none'}; {m['os']}.",
        f"- Python {m['python']}; {versions}.",
        "- Seeds: data split, training and calibration are seeded (seed 0); searches use seeds 0..n-1 as each",
        "  section says. Timings are medians over the repeats each section names, with min / max where shown.",
        "",
        "| stage | command | status | seconds |",
        "|---|---|---|---|",
    ]
    for s in result.stages:
        lines.append(f"| {s.name} | `{s.command}` | {s.status} | {s.seconds:.0f} |")
    lines.append("")
    return lines


def markdown_table(rows: list[dict[str, Any]], cols: list[str], fmt: Callable[[Any], str] = str) -> list[str]:
    """A Markdown table (header, rule, one line per row) of ``cols`` of ``rows``, each value through ``fmt``."""
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return out + ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]


def splice_section(doc: Path, heading: str, lines: list[str]) -> None:
    """Replace the section of ``doc`` starting at the line ``heading`` (up to the next ``## ``) with ``lines``,
    or append them; every other section is kept. The one way every benchmark script edits BENCHMARKS.md."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    parts = text.split("\n")
    try:
        start = parts.index(heading)
    except ValueError:
        _atomic_write_text(doc, text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")
        return
    end = next((i for i in range(start + 1, len(parts)) if parts[i].startswith("## ")), len(parts))
    _atomic_write_text(doc, "\n".join([*parts[:start], *lines, *parts[end:]]).rstrip("\n") + "\n")


def write_suite_section(doc: Path, result: SuiteResult) -> None:
    """Replace (or add) the suite section of ``doc``; every other section is kept."""
    lines = suite_section(result)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    parts = text.split("\n")
    if SUITE_HEADING in parts:
        start = parts.index(SUITE_HEADING)
        end = next((i for i in range(start + 1, len(parts)) if parts[i].startswith("## ")), len(parts))
        parts = [*parts[:start], *lines, *parts[end:]]
    else:  # right after the preamble, before the first section
        first = next((i for i, line in enumerate(parts) if line.startswith("## ")), len(parts))
        parts = [*parts[:first], *lines, *parts[first:]]
    _atomic_write_text(doc, "\n".join(parts).rstrip("\n") + "\n")
