"""The benchmark suite runner: stage lists, skipping, failures, and the document it rewrites (fake runner)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from workbench import benchsuite
from workbench.benchsuite import SUITE_HEADING, run_suite, suite_stages

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("suite", ["quick", "full"])
def test_every_stage_script_exists_and_accepts_its_arguments(suite):
    for stage in suite_stages(suite):
        source = (ROOT / stage.script).read_text()
        for arg in stage.args:
            if arg.startswith("--"):
                assert re.search(rf"add_argument\(\s*\"{arg}\"", source), (stage.script, arg)


def test_full_suite_adds_the_long_stages():
    quick = {s.script for s in suite_stages("quick")}
    full = {s.script for s in suite_stages("full")}
    assert quick < full and {"bench/search_bench.py", "bench/qat_bench.py"} <= full - quick
    assert "bench/parallel_bench.py" in quick  # 1 vs 2 search workers: about 3 minutes on 2 cores


def test_unknown_suite_and_stage_are_named():
    with pytest.raises(ValueError, match="'nightly'.*quick, full"):
        suite_stages("nightly")
    with pytest.raises(ValueError, match="nope_bench"):
        run_suite("quick", only=["nope_bench"], runner=lambda argv, root: (0, ""))


def _fake_root(tmp_path: Path) -> Path:
    for stage in suite_stages("quick"):
        p = tmp_path / stage.script
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("# stub\n")
    doc = tmp_path / "docs" / "BENCHMARKS.md"
    doc.parent.mkdir()
    doc.write_text("# Benchmarks\n\nintro\n\n## Fronts\n\nkept table\n\n## Search\n\nalso kept\n")
    return tmp_path


def test_a_stage_whose_input_is_missing_is_skipped_and_said_so(tmp_path, monkeypatch):
    import workbench.benchsuite as bs

    root = _fake_root(tmp_path)
    stage = bs.Stage(
        "opt", "bench/hawq_bench.py", optional_input="bench/out/x.json", skip_reason="x is missing"
    )
    monkeypatch.setattr(bs.suite, "suite_stages", lambda suite: [stage])
    calls = []
    result = bs.run_suite("quick", root=root, runner=lambda argv, cwd: calls.append(argv) or (0, ""))
    assert calls == [] and result.stages[0].status == "skipped: x is missing" and result.ok


def test_suite_runs_stages_in_order_and_keeps_other_sections(tmp_path):
    root = _fake_root(tmp_path)
    calls = []

    def runner(argv, cwd):
        calls.append(argv[1])
        if argv[1] == "bench/fronts_bench.py":
            out = cwd / "bench" / "out" / "fronts.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"hv": 0.5}))
        if argv[1] == "bench/runtime_bench.py":
            return 3, "Traceback: boom\n"
        return 0, ""

    result = run_suite("quick", root=root, runner=runner)
    assert calls == [s.script for s in suite_stages("quick")]  # every stage, in order, after a failure too
    by_name = {s.name: s for s in result.stages}
    assert by_name["runtime adaptation"].status == "failed (exit 3)"
    assert "boom" in by_name["runtime adaptation"].log_tail
    assert by_name["fronts (both models, every strategy)"].results == {"hv": 0.5}
    assert not result.ok
    text = (root / "docs" / "BENCHMARKS.md").read_text()
    assert "kept table" in text and "also kept" in text and "intro" in text
    assert text.index(SUITE_HEADING) < text.index("## Fronts")  # the suite section leads
    assert "failed (exit 3)" in text and "python -m workbench bench --suite quick" in text
    # a second run replaces the suite section instead of adding another one
    run_suite("quick", root=root, runner=lambda argv, cwd: (0, ""), only=["hawq_bench"])
    text = (root / "docs" / "BENCHMARKS.md").read_text()
    assert text.count(SUITE_HEADING) == 1 and "--only hawq_bench" in text and "failed" not in text
    assert json.dumps(result.to_dict())  # serialisable


def test_missing_scripts_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="source checkout"):
        run_suite("quick", root=tmp_path, runner=lambda argv, root: (0, ""))


def test_machine_info_names_versions():
    info = benchsuite.machine_info()
    assert info["cores"] >= 1 and info["versions"]["torch"].startswith("2.")


def _resume_root(tmp_path: Path, monkeypatch, args: tuple[str, ...] = ()) -> tuple[Path, list]:
    """Three stub stages with results files; the workbench-code fingerprint pinned (edits elsewhere in the
    checkout must not make the stages stale mid-test)."""
    import workbench.benchsuite as bs

    root = tmp_path / "root"
    stages = [
        bs.Stage(n, f"bench/{n}.py", (*args, "--n", str(i)), results=f"bench/out/{n}.json")
        for i, n in enumerate(("one", "two", "three"))
    ]
    for s in stages:
        (root / s.script).parent.mkdir(parents=True, exist_ok=True)
        (root / s.script).write_text(f"# stub {s.name}\n")
    monkeypatch.setattr(bs.suite, "suite_stages", lambda suite: list(stages))
    monkeypatch.setattr(bs.suite, "_workbench_fingerprint", lambda: "pinned")
    return root, stages


def _writing_runner(calls: list, fail: str | None = None):
    def runner(argv, cwd):
        name = Path(argv[1]).stem
        calls.append(name)
        if name == fail:
            return 3, "boom\n"
        out = cwd / "bench" / "out" / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"stage": name, "argv": argv}))
        return 0, ""

    return runner


def test_resume_keeps_finished_stages_and_runs_the_rest(tmp_path, monkeypatch, capsys):
    import workbench.benchsuite as bs

    root, _ = _resume_root(tmp_path, monkeypatch)
    calls: list[str] = []
    first = bs.run_suite("quick", root=root, runner=_writing_runner(calls, fail="two"))
    assert calls == ["one", "two", "three"] and not first.ok
    state = json.loads(bs.state_path("quick", root).read_text())
    assert set(state["stages"]) == {"one", "three"}  # a failed stage is not recorded as finished

    calls.clear()
    second = bs.run_suite("quick", root=root, runner=_writing_runner(calls), resume=True)
    assert calls == ["two"]  # finished stages are kept, the failed one runs again
    by_name = {s.name: s for s in second.stages}
    assert (
        by_name["one"].status == by_name["three"].status == bs.KEPT_STATUS and by_name["two"].status == "ok"
    )
    assert by_name["one"].results == first.stages[0].results  # kept stages bring their results and seconds
    assert by_name["one"].seconds == pytest.approx(first.stages[0].seconds)
    assert second.ok and second.command.endswith("--resume")
    err = capsys.readouterr().err
    assert "[bench resume] one: kept, not run again (finished" in err
    assert "[bench resume] two: runs again (not finished in an earlier run)" in err
    assert bs.KEPT_STATUS in (root / "docs" / "BENCHMARKS.md").read_text()

    # a finished stage whose results file changed, or whose script changed, runs again, and says why
    (root / "bench" / "out" / "one.json").write_text('{"edited": true}')
    (root / "bench" / "three.py").write_text("# stub three, edited\n")
    calls.clear()
    bs.run_suite("quick", root=root, runner=_writing_runner(calls), resume=True)
    assert calls == ["one", "three"]
    err = capsys.readouterr().err
    assert "one: runs again (its results file bench/out/one.json changed since the earlier run)" in err
    assert "three: runs again (its script, input or the workbench code changed" in err

    # so does one whose results file is gone, and every stage when the workbench code changed
    (root / "bench" / "out" / "two.json").unlink()
    calls.clear()
    bs.run_suite("quick", root=root, runner=_writing_runner(calls), resume=True)
    assert calls == ["two"] and "results file bench/out/two.json is missing" in capsys.readouterr().err
    monkeypatch.setattr(bs.suite, "_workbench_fingerprint", lambda: "other code")
    calls.clear()
    bs.run_suite("quick", root=root, runner=_writing_runner(calls), resume=True)
    assert calls == ["one", "two", "three"]

    # WORKBENCH_BENCH_RESUME=1 resumes (the CLI's route until it grows a --resume flag); without resume every
    # stage runs and the record starts over
    monkeypatch.setenv("WORKBENCH_BENCH_RESUME", "1")
    calls.clear()
    bs.run_suite("quick", root=root, runner=_writing_runner(calls))
    assert calls == []
    calls.clear()
    bs.run_suite("quick", root=root, runner=_writing_runner(calls, fail="one"), resume=False)
    assert calls == ["one", "two", "three"]
    assert set(json.loads(bs.state_path("quick", root).read_text())["stages"]) == {"two", "three"}


def test_resume_reruns_a_stage_whose_command_changed(tmp_path, monkeypatch, capsys):
    import workbench.benchsuite as bs

    root, _ = _resume_root(tmp_path, monkeypatch)
    calls: list[str] = []
    bs.run_suite("quick", root=root, runner=_writing_runner(calls))
    _resume_root(tmp_path, monkeypatch, args=("--repeats", "5"))  # same scripts, other arguments
    calls.clear()
    bs.run_suite("quick", root=root, runner=_writing_runner(calls), resume=True)
    assert calls == ["one", "two", "three"]
    assert "one: runs again (command changed since the earlier run (python bench/one.py --n 0))" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "content", ['{"version": 1, "suite": "qu', '{"version": 1, "suite": "full", "stages": {}}']
)
def test_a_corrupt_or_foreign_state_file_is_named_and_every_stage_runs(tmp_path, monkeypatch, content):
    import workbench.benchsuite as bs

    root, _ = _resume_root(tmp_path, monkeypatch)
    calls: list[str] = []
    bs.run_suite("quick", root=root, runner=_writing_runner(calls))
    path = bs.state_path("quick", root)
    path.write_text(content)
    calls.clear()
    with pytest.warns(UserWarning, match=rf"bench state file {re.escape(str(path))} is unusable"):
        result = bs.run_suite("quick", root=root, runner=_writing_runner(calls), resume=True)
    assert calls == ["one", "two", "three"] and result.ok
    assert set(json.loads(path.read_text())["stages"]) == {"one", "two", "three"}  # rebuilt


def test_a_stage_process_dies_with_the_suite(tmp_path):
    """The runner's stage processes get PR_SET_PDEATHSIG (Linux): a suite killed midway leaves none running."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "sleep.py").write_text(
        "import os, time\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    )
    code = (
        "import sys; from pathlib import Path; from workbench.benchsuite import _subprocess_runner; "
        f"_subprocess_runner(['python', 'bench/sleep.py'], Path({str(tmp_path)!r}))"
    )
    suite = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.DEVNULL)
    pid_file = tmp_path / "pid"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert suite.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    stage_pid = int(pid_file.read_text())
    os.kill(suite.pid, signal.SIGKILL)
    suite.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{stage_pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":  # exited, waiting to be reaped by init
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        os.kill(stage_pid, signal.SIGKILL)
        pytest.fail("the stage process outlived the killed suite")
