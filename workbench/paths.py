"""Where the workbench keeps its files: ``data/`` (datasets, trained models, caches) and ``mlruns/``.

Both are anchored at the project root (the folder holding ``pyproject.toml`` above this package) so that a
notebook run from ``notebooks/`` and a CLI run from the root share one cache and one tracking store. Set
``WORKBENCH_HOME`` to put them somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The folder that holds ``data/`` and ``mlruns/``."""
    env = os.environ.get("WORKBENCH_HOME")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file():
        return here
    return Path.cwd().resolve()


def data_dir() -> Path:
    """``<root>/data``: cached datasets, trained models, predictor datasets."""
    return project_root() / "data"


def mlruns_dir() -> Path:
    """``<root>/mlruns``: the MLflow sqlite store and its artifacts."""
    return project_root() / "mlruns"
