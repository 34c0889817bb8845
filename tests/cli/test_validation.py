"""Every command checks its arguments before any costly work: one bad argument per command fails at once with a
message naming the value and what is valid, while the costly entry points (loading or training a model, running
a suite, a replication or a pipeline) are replaced by functions that fail the test if reached (before:
``predictor --plans 0`` ran minutes of sensitivity analysis first)."""

from __future__ import annotations

import pytest

from workbench.cli import main


class CostlyWorkStarted(AssertionError):
    pass


def _costly(*args, **kwargs):
    raise CostlyWorkStarted("costly work started before the arguments were checked")


@pytest.fixture(autouse=True)
def _no_costly_work(monkeypatch, tmp_path):
    import workbench.benchsuite.suite
    import workbench.pipeline
    import workbench.search.hawq_replication
    import workbench.tasks

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setattr(workbench.pipeline, "make_task", _costly)
    monkeypatch.setattr(workbench.pipeline, "run_pipeline", _costly)
    monkeypatch.setattr(workbench.tasks, "load_task_file", _costly)
    monkeypatch.setattr(workbench.benchsuite.suite, "_run_stage", _costly)
    monkeypatch.setattr(workbench.search.hawq_replication, "run_replication", _costly)


# (argv, a part of the message): refused by the command's checks (exit 2, "error: ..." on stderr)
AT_RUN = [
    (["train", "--device", "cuda:97"], "cuda:97"),
    (["profile", "--batches", "0"], "max_batches"),
    (["quantize", "--plan", "uniform:w4a8", "--ptq", "cle,bogus"], "bogus"),
    (["sensitivity", "--w-bits", "2,7"], "7"),
    (["predictor", "--plans", "12"], "--plans 12 is too few for --folds 5: give --plans >= 13"),
    (["predictor", "--models", "ridge,svm"], "unknown predictor model(s) ['svm']"),
    (["predictor", "--sens-w-bits", "7"], "7"),
    (["search", "--budget", "0"], "budget"),
    (["pipeline", "--device", "cuda:97"], "cuda:97"),  # before: --device was not passed on, CPU ran
    (["qat", "--plan", "uniform:w4a8", "--epochs", "0"], "epochs"),
    (["hardware", "--estimate", "--plan", "uniform:w8a8", "--profile", "no_such_profile"], "no_such_profile"),
    (["deploy", "--plan", "uniform:w8a8", "--repeats", "0"], "repeats"),
    (["adapt", "--budget", "1.5"], "--budget 1.5 must be a fraction in (0, 1]"),
    (["replicate-hawq", "--front-alphas", "1"], "front_alphas must be an integer >= 2, got 1"),
    (["bench", "--only", "no_such_bench"], "unknown stage(s) ['no_such_bench']; valid choices"),
]

# refused by the parser (usage and exit 2)
AT_PARSE = [
    (["predictor", "--plans", "0"], "argument --plans: '0' is not valid; give an integer >= 1"),
    (["predictor", "--folds", "1"], "argument --folds: '1' is not valid; give an integer >= 2"),
    (
        ["hardware", "--measure", "--repeats", "0"],
        "argument --repeats: '0' is not valid; give an integer >= 1",
    ),
    (["tracking-server", "--port", "0"], "'0' is not a TCP port; give an integer in 1-65535"),
    (["ui", "--port", "99999"], "'99999' is not a TCP port; give an integer in 1-65535"),
]


@pytest.mark.parametrize(("argv", "message"), AT_RUN, ids=[" ".join(a) for a, _ in AT_RUN])
def test_a_bad_argument_fails_before_any_costly_work(argv, message, capsys) -> None:
    assert main([*argv, "--no-track"] if argv[0] not in ("replicate-hawq", "bench") else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


@pytest.mark.parametrize(("argv", "message"), AT_PARSE, ids=[" ".join(a) for a, _ in AT_PARSE])
def test_a_bad_number_is_refused_by_the_parser(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
