"""The notebooks with widgets used by hand run in JupyterLab in a real browser (Run All, no error output), then
the widgets: the bit-width map explorer (notebook 03) and the runtime budget slider (notebook 06). Every
notebook, these two included, is also executed headless with the same checks (no error, nothing on stderr) and
a probe of its results (tests/test_notebooks.py, tests/test_notebook_0*.py): a browser run of a notebook without
a widget to use would repeat that run and check nothing more."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest

from workbench.servers import start_jupyter_lab

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# small parameters, as in the headless notebook tests
PARAMS = {
    "03_search.ipynb": (
        "MODEL = 'digits_cnn'\nBUDGET = 4\nSTRATEGIES = ['uniform', 'ilp', 'tpe']\nPREDICTOR_PLANS = 40\nTRACK = True\n"
        "STORAGE = 'sqlite:///{tmp}/search.db'\n"
    ),
    "06_runtime_adaptation.ipynb": (
        "MODEL = 'digits_cnn'\nBUDGETS = (0.45, 0.6)\nPOLICIES = ('rule', 'cascade')\nSHIFTS = ('clean', 'noise')\n"
        "PROBE_SAMPLES = 32\nTRACK = True\n"
    ),
}


def test_every_notebook_runs_headless_and_every_widget_notebook_in_the_browser():
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    headless = "".join(p.read_text() for p in (ROOT / "tests").glob("test_notebook*.py"))
    assert [n for n in notebooks if f'"{n}"' not in headless] == []
    assert set(PARAMS) <= set(notebooks)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab over copies of the notebooks with small parameters; its own tracking store."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    root.mkdir()
    for name, params in PARAMS.items():
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", []))
        cell.source += "\n" + params.format(tmp=tmp)
        nbformat.write(nb, root / name)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}  # warnings are not hidden: none may show
    server = start_jupyter_lab(root, work_dir=tmp / "server", env=env)
    yield server, root
    server.stop()
    assert not server.running()


def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _open_and_run_all(page, server, name: str, *, timeout: float = 600.0) -> None:
    # ?reset: a fresh workspace, so the tabs of earlier notebooks are not restored
    page.goto(f"{server.url}/lab/tree/{name}?reset&token={server.token}", timeout=90_000)
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").first.wait_for(timeout=90_000)
    time.sleep(2)
    if page.locator(".jp-Dialog .jp-mod-accept").count():  # "Select Kernel" when the notebook names none
        page.locator(".jp-Dialog .jp-mod-accept").click()
    page.locator(".jp-StatusBar-Widget", has_text="Idle").first.wait_for(timeout=90_000)  # kernel connected
    code_cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell")
    prompts = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputArea-prompt")

    def started() -> bool:
        return any(t.strip() not in ("", "[ ]:") for t in prompts.all_inner_texts())

    for _ in range(3):  # Run All, retried if the click came before the kernel was really ready
        page.get_by_text("Run", exact=True).first.click()
        page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
        try:
            _wait(started, 15, "the first cell to start")
            break
        except TimeoutError:
            page.keyboard.press("Escape")
    status = page.locator(".jp-StatusBar-Widget").first

    def idle() -> bool:  # the kernel idle and no cell queued or running (cells out of view show no prompt)
        return "| Idle" in status.inner_text() and not any("*" in t for t in prompts.all_inner_texts())

    _wait(lambda: idle() and (time.sleep(2) or idle()), timeout, f"{name} to finish")
    assert code_cells.count() > 0


def _read_complete_notebook(path: Path, timeout: float = 60.0) -> dict:
    """The notebook JSON once JupyterLab has finished writing it: the server writes the file in place, so a read
    right after its modification time changes can see it empty or half written. Wait until the file parses and
    is unchanged (size and modification time) between two reads."""
    deadline = time.monotonic() + timeout
    while True:
        stat = path.stat()
        text = path.read_text()
        time.sleep(0.5)
        again = path.stat()
        try:
            nb = json.loads(text)
        except ValueError:
            nb = None
        stable = (
            (stat.st_size, stat.st_mtime_ns)
            == (again.st_size, again.st_mtime_ns)
            == (len(text.encode()), stat.st_mtime_ns)
        )
        if isinstance(nb, dict) and stable:
            return nb
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not completely written within {timeout:.0f} s")


def _saved_errors(page, root: Path, name: str) -> list[str]:
    """Save the notebook from the browser and list the error outputs it holds."""
    before = (root / name).stat().st_mtime
    page.keyboard.press("Control+s")
    _wait(lambda: (root / name).stat().st_mtime > before, 30, f"{name} to be saved")
    nb = _read_complete_notebook(root / name)
    errors = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append(f"{out.get('ename')}: {out.get('evalue')}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                errors.append(f"stderr: {''.join(out.get('text', ''))[:500]}")
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    ran = [c for c in code if c.get("execution_count")]
    if not errors:
        assert len(ran) == len(code), f"{name}: {len(ran)} of {len(code)} code cells ran"
    return errors


def _shutdown_kernels(server) -> None:
    """Stop every kernel of the server (one notebook's kernel must not slow the next one down)."""
    import urllib.request

    base = f"{server.url}/api/kernels"
    with urllib.request.urlopen(f"{base}?token={server.token}", timeout=10) as r:  # noqa: S310 - loopback
        kernels = json.loads(r.read())
    for k in kernels:
        req = urllib.request.Request(f"{base}/{k['id']}?token={server.token}", method="DELETE")
        urllib.request.urlopen(req, timeout=30).close()  # noqa: S310 - loopback


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_notebook_runs_all_cells_without_errors(lab, page, artifacts, name):
    server, root = lab
    try:
        _run_and_check(page, server, root, artifacts, name)
    finally:
        _shutdown_kernels(server)


def _run_and_check(page, server, root, artifacts, name) -> None:
    _open_and_run_all(page, server, name)
    page.screenshot(path=str(artifacts / f"lab_{name.replace('.ipynb', '')}.png"), full_page=False)
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.click(position={"x": 5, "y": 5})
    errors = _saved_errors(page, root, name)
    assert not errors, errors
    if name == "03_search.ipynb":
        _use_explorer(page, artifacts)
    if name == "06_runtime_adaptation.ipynb":
        _use_budget_slider(page, artifacts)


def _scroll_to(page, locator, *, tries: int = 60):
    """Scroll the notebook until ``locator`` is rendered (JupyterLab renders cells lazily)."""
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.hover()
    for _ in range(tries):
        if locator.count():
            locator.last.scroll_into_view_if_needed()
            return locator.last
        page.mouse.wheel(0, 600)
        time.sleep(0.3)
    raise TimeoutError("widget not found in the notebook")


def _use_explorer(page, artifacts) -> None:
    """Change a layer's bits in the bit-width map explorer: the predicted size / accuracy shown must change."""
    summary = _scroll_to(page, page.locator(".widget-html", has_text="predicted accuracy"))
    before = summary.inner_text()
    select = page.locator(".widget-gridbox .widget-dropdown select").nth(1)  # first unit's first knob
    options = [o for o in select.locator("option").all_inner_texts()]
    current = select.evaluate("s => s.options[s.selectedIndex].text")
    target = next(o for o in options if o != current)
    select.select_option(label=target)
    _wait(lambda: summary.inner_text() != before, 30, "the explorer's figures to change")
    page.screenshot(path=str(artifacts / "explorer.png"), full_page=False)
    page.mouse.wheel(0, 500)
    time.sleep(1)
    page.screenshot(path=str(artifacts / "pareto.png"), full_page=False)


def _use_budget_slider(page, artifacts) -> None:
    """Drag the runtime budget slider: the displayed accuracy and cost must change."""
    panel = ".widget-vbox:has(.widget-slider)"  # the BudgetExplorer: slider, note, label, histogram
    label = _scroll_to(page, page.locator(f"{panel} .widget-html", has_text="avg BOPs"))
    before = label.inner_text()
    track = page.locator(f"{panel} .widget-slider .noUi-target").last
    handle = page.locator(f"{panel} .widget-slider .noUi-handle").last
    readout = page.locator(f"{panel} .widget-slider .widget-readout").last
    box, hbox = track.bounding_box(), handle.bounding_box()
    page.mouse.move(hbox["x"] + hbox["width"] / 2, hbox["y"] + hbox["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.95, hbox["y"] + hbox["height"] / 2, steps=8)
    page.mouse.up()
    status = page.locator(".jp-StatusBar-Widget").first

    def updated() -> bool:  # the label describes the budget the slider now shows, and the kernel is done
        value = readout.inner_text().strip()
        return "| Idle" in status.inner_text() and f"at {value} of the" in label.inner_text()

    _wait(lambda: updated() and (time.sleep(1) or updated()), 120, "the runtime figures to follow the slider")
    after = label.inner_text()
    assert after.split(" of the")[0] != before.split(" of the")[0], (before, after)  # another budget fraction
    assert "accuracy" in after and "avg BOPs" in after, after
    page.screenshot(path=str(artifacts / "budget_slider.png"), full_page=False)
