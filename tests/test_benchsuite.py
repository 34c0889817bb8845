"""The benchmark suite runner: stage lists, skipping, failures, and the document it rewrites (fake runner)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from workbench import benchsuite
from workbench.benchsuite import SUITE_HEADING, run_suite, suite_stages

ROOT = Path(__file__).resolve().parents[1]


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
    monkeypatch.setattr(bs, "suite_stages", lambda suite: [stage])
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
