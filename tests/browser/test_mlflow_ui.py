"""The MLflow UI in a real browser over a store filled by a short pipeline run and a search."""

from __future__ import annotations

import pytest

from workbench.servers import start_mlflow_ui

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tracking store with a pipeline run and a search (parent run + one child run per trial)."""
    from workbench import tracking
    from workbench.cli import main

    tmp = tmp_path_factory.mktemp("mlflow-ui")
    uri = f"sqlite:///{tmp}/mlflow.db"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("WORKBENCH_TRACKING", "1")
    assert main(["pipeline", "--model", "digits_cnn"]) == 0
    search = ["search", "--model", "digits_cnn", "--strategy", "tpe", "--budget", "2", "--storage", ":memory:",
              "--study", "ui-test", "--quiet"]  # fmt: skip
    assert main(search) == 0
    runs = tracking.runs_frame()
    experiment_id = str(runs["experiment_id"].iloc[0])
    yield {"uri": uri, "dir": tmp, "runs": runs, "experiment_id": experiment_id}
    mp.undo()


def test_runs_table_shows_pipeline_and_search_runs_and_compare_view(store, page, artifacts):
    runs = store["runs"]
    names = set(runs["tags.mlflow.runName"])
    parent = runs[runs["tags.workbench.stage"] == "search"]
    children = (
        runs[runs["tags.mlflow.parentRunId"].notna()] if "tags.mlflow.parentRunId" in runs else runs.iloc[:0]
    )
    assert any(n.startswith("pipeline") for n in names) and len(parent) == 1 and len(children) >= 2
    with start_mlflow_ui(store["uri"], artifact_root=store["dir"] / "artifacts", work_dir=store["dir"]) as ui:
        assert ui.url.startswith("http://127.0.0.1:")
        page.goto(f"{ui.url}/#/experiments/{store['experiment_id']}/runs", timeout=60_000)
        pipeline_name = next(n for n in names if n.startswith("pipeline"))
        page.get_by_text(pipeline_name).first.wait_for(timeout=60_000)
        close = page.get_by_role("button", name="Close")
        if close.count():
            close.first.click()
        parent_name = parent["tags.mlflow.runName"].iloc[0]
        page.get_by_text(parent_name).first.wait_for(timeout=30_000)
        # expand the search's parent run: its trial runs appear as children
        expanders = page.locator("button[data-component-id*='runnamecellrenderer']")
        for i in range(expanders.count()):
            expanders.nth(i).click()
        child_name = children["tags.mlflow.runName"].iloc[0]
        page.get_by_text(child_name).first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "mlflow_runs_table.png"), full_page=True)
        # the compare view of two runs (the pipeline run and the search's parent run)
        ids = [
            runs.loc[runs["tags.mlflow.runName"] == pipeline_name, "run_id"].iloc[0],
            parent["run_id"].iloc[0],
        ]
        url = (
            f"{ui.url}/#/compare-runs?runs=[{','.join(repr(i).replace(chr(39), chr(34)) for i in ids)}]"
            f'&experiments=["{store["experiment_id"]}"]'
        )
        page.goto(url, timeout=60_000)
        page.get_by_text(pipeline_name).first.wait_for(timeout=60_000)
        page.get_by_text(parent_name).first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "mlflow_compare.png"), full_page=True)
    assert not ui.running()
