"""The bit-width map explorer at real-model scale, in JupyterLab in a real browser: a random-init EfficientNet-Lite1
(65 units) shows the compact map (one row per unit, its current bits coloured), a click on a bits button changes
that layer (its colour and the summary follow) and the sort buttons reorder the rows."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from tests.browser.test_jupyterlab import (
    _open_and_run_all,
    _saved_errors,
    _scroll_to,
    _shutdown_kernels,
    _wait,
)
from workbench.servers import start_jupyter_lab
from workbench.ui.bitmap import EMPTY_COLOUR, bits_colour

pytestmark = pytest.mark.slow
pytest.importorskip("efficientnet_lite_pytorch")
ROOT = Path(__file__).resolve().parents[2]
NAME = "bitmap_lite1.ipynb"
UNIT = "_blocks.3._expand_conv"
CELLS = [
    "import torch\n\ntorch.set_num_threads(1)",
    (
        "from workbench.real_models import build_real_model\n"
        "from workbench.search import CostModel, SearchSpace\n"
        "from workbench.ui.explorer import BitWidthExplorer\n\n"
        "model = build_real_model('efficientnet_lite1', pretrained=False, image_size=64, seed=0)\n"
        "space = SearchSpace(model)\n"
        "cost_model = CostModel(model, torch.randn(1, 3, 64, 64), fp32_latency_ms=1.0)\n"
        "# a stand-in per-layer sensitivity (random-init weights): the mean absolute weight\n"
        "modules = dict(model.named_modules())\n"
        "sensitivity = {n: float(modules[n].weight.detach().abs().mean()) for n in space.layers}\n"
        "explorer = BitWidthExplorer(space, cost_model, sensitivity=sensitivity, track=False,\n"
        "                            title='EfficientNet-Lite1 (random init)')\n"
        "print(explorer.view, len(space.units))"
    ),
    "explorer.widget",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bitmap_lab")
    root = tmp / "notebooks"
    root.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / NAME)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    server = start_jupyter_lab(
        root, work_dir=tmp / "server", env={"PYTHONPATH": path, "WORKBENCH_TRACKING": "0"}
    )
    yield server, root
    _shutdown_kernels(server)
    server.stop()


def _rgb(colour: str) -> str:
    """``#rrggbb`` as the browser's computed ``rgb(r, g, b)``."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def _line(text: str, key: str) -> str:
    """The summary line starting with ``key``."""
    return next(line for line in text.splitlines() if line.startswith(key))


def _background(locator) -> str:
    return locator.evaluate("b => getComputedStyle(b).backgroundColor")


def test_lite1_map_renders_and_a_click_changes_a_layer(lab, page, artifacts):
    server, root = lab
    _open_and_run_all(page, server, NAME, timeout=300)
    grid = ".jp-NotebookPanel:not(.lm-mod-hidden) .widget-gridbox"
    summary = _scroll_to(page, page.locator(".widget-html", has_text="predicted accuracy"))
    rows = page.locator(f"{grid} button[title$=': 2 bits']")
    _wait(lambda: rows.count() == 65, 60, "the map's 65 rows")
    assert page.locator(f"{grid} button[title$=': 8 bits']").count() == 65
    two = page.locator(f'{grid} button[title="{UNIT}: 2 bits"]')
    eight = page.locator(f'{grid} button[title="{UNIT}: 8 bits"]')
    assert _background(eight) == _rgb(bits_colour(8)) and _background(two) == _rgb(EMPTY_COLOUR)
    before = summary.inner_text()
    assert "weights 8.00" in _line(before, "avg bits")
    two.click()
    _wait(lambda: summary.inner_text() != before, 30, "the summary to follow the click")
    _wait(lambda: _background(two) == _rgb(bits_colour(2)), 15, "the clicked button to take the 2-bit colour")
    assert _background(eight) == _rgb(EMPTY_COLOUR)
    after = summary.inner_text()
    assert _line(after, "weight size") != _line(before, "weight size")
    assert _line(after, "plan").endswith("edited")
    page.locator(".widget-toggle-buttons").first.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "bitmap_lite1.png"), full_page=False)

    first = page.locator(f"{grid} .widget-html").nth(8)  # after the header's 8 cells: the first row's name
    page.locator(".widget-toggle-buttons button", has_text="weight size").click()
    _wait(lambda: "_fc" in first.inner_text(), 15, "the rows sorted by weight size (the classifier first)")
    errors = _saved_errors(page, root, NAME)
    assert not errors, errors
