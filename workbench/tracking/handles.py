"""Run handles: :class:`Run` logs params, metrics, tables, plans, figures and models to one MLflow run by id;
:class:`NullRun` accepts the same calls and records nothing."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.tracking.convert import _artifact_file, _keep_index, _metric_items, flatten_params, to_jsonable
from workbench.tracking.store import _client

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

_FIGURE_FORMATS = ("html", "png", "svg")


class NullRun:
    """A run that records nothing: every method accepts the same arguments as :class:`Run` and returns None."""

    enabled = False
    run_id: str | None = None
    experiment_id: str | None = None

    def __repr__(self) -> str:
        return "NullRun()"

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """No-op."""

    def log_params(self, params: Any, *, prefix: str = "") -> None:
        """No-op."""

    def log_config(self, config: Any, name: str = "config", *, prefix: str = "") -> None:
        """No-op."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """No-op."""

    def log_json(self, obj: Any, name: str) -> None:
        """No-op."""

    def log_dataframe(self, df: pd.DataFrame, name: str) -> None:
        """No-op."""

    def log_plan(self, plan: Any, name: str = "plan") -> None:
        """No-op."""

    def log_figure(self, fig: Any, name: str, fmt: str = "html") -> None:
        """No-op."""

    def log_model(
        self, model: nn.Module, name: str = "model", example_input: torch.Tensor | None = None
    ) -> None:
        """No-op."""

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """No-op."""


@dataclasses.dataclass(frozen=True)
class Run:
    """Handle on one MLflow run; every method logs to this run by id (safe with nested runs)."""

    run_id: str
    experiment_id: str
    uri: str
    enabled = True

    @property
    def _c(self):
        return _client(self.uri)

    @property
    def artifact_uri(self) -> str:
        """Where this run's artifacts live (a ``file://`` URI for local stores)."""
        return self._c.get_run(self.run_id).info.artifact_uri

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set string tags on the run."""
        from mlflow.entities import RunTag

        self._c.log_batch(self.run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])

    def log_params(self, params: Any, *, prefix: str = "") -> None:
        """Log a dict / dataclass as params, nested keys flattened with dots (see :func:`flatten_params`)."""
        from mlflow.entities import Param

        flat = flatten_params(params, prefix=prefix)
        self._c.log_batch(self.run_id, params=[Param(k, v) for k, v in flat.items()])

    def log_config(self, config: Any, name: str = "config", *, prefix: str = "") -> None:
        """Log a config (dataclass or dict) as flattened params and as ``config/<name>.json``."""
        self.log_params(config, prefix=prefix)
        self.log_json(config, _artifact_file(name, "config", "json"))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics (None values skipped) at ``step`` (default 0)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step or 0) for k, v in _metric_items(metrics)]
        self._c.log_batch(self.run_id, metrics=batch)

    def log_json(self, obj: Any, name: str) -> None:
        """Log ``obj`` (converted by :func:`to_jsonable`) as the JSON artifact ``name`` (``.json`` appended)."""
        text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False)
        self._c.log_text(self.run_id, text, _artifact_file(name, "", "json"))

    def log_dataframe(self, df: pd.DataFrame, name: str) -> None:
        """Log a DataFrame as ``tables/<name>.csv``; the index is written unless it is an unnamed RangeIndex
        or an unnamed copy of a column (a profile frame's ``layer``)."""
        self._c.log_text(self.run_id, df.to_csv(index=_keep_index(df)), _artifact_file(name, "tables", "csv"))

    def log_plan(self, plan: Any, name: str = "plan") -> None:
        """Log a QuantPlan (any object with ``.to_dict()``) or a dict as ``plans/<name>.json``."""
        if not (isinstance(plan, Mapping) or callable(getattr(plan, "to_dict", None))):
            raise TypeError(f"plan must be a dict or have .to_dict(), got {type(plan).__name__}")
        self.log_json(plan, _artifact_file(name, "plans", "json"))

    def log_figure(self, fig: Any, name: str, fmt: str = "html") -> None:
        """Log a plotly figure as ``figures/<name>.<fmt>``.

        ``html`` embeds plotly.js inline (about 5 MB) so it renders offline in the MLflow UI; ``png`` / ``svg``
        need the ``kaleido`` package and a Chromium.
        """
        if fmt not in _FIGURE_FORMATS:
            raise ValueError(f"fmt must be one of {_FIGURE_FORMATS}, got {fmt!r}")
        if not callable(getattr(fig, "to_html", None)):
            raise TypeError(f"fig must be a plotly Figure, got {type(fig).__name__}")
        artifact = _artifact_file(name, "figures", fmt)
        if fmt == "html":
            self._c.log_text(self.run_id, fig.to_html(include_plotlyjs=True, full_html=True), artifact)
            return
        if importlib.util.find_spec("kaleido") is None:
            raise RuntimeError(
                f"log_figure(fmt={fmt!r}) needs the 'kaleido' package (and a Chromium, e.g. apt-get install "
                "chromium); install it with `pip install kaleido`, or use fmt='html'"
            )
        data = fig.to_image(format=fmt)
        self._log_bytes(data, artifact)

    def log_model(
        self, model: nn.Module, name: str = "model", example_input: torch.Tensor | None = None
    ) -> str:
        """Log a torch model (pickle format, pinned torch requirement: fast); return its ``models:/`` URI.

        Load it back with :func:`load_model`.
        """
        import mlflow.pytorch
        import torch

        example = example_input.detach().cpu().numpy() if example_input is not None else None
        torch_req = f"torch=={torch.__version__.split('+')[0]}"
        pt_logger = logging.getLogger("mlflow.pytorch")
        level = pt_logger.level
        pt_logger.setLevel(logging.ERROR)  # pickle is chosen on purpose; silence the caution warning
        try:
            info = mlflow.pytorch.log_model(
                model,
                name=name,
                input_example=example,
                pip_requirements=[torch_req],
                serialization_format="pickle",
                run_id=self.run_id,
            )
        finally:
            pt_logger.setLevel(level)
        return info.model_uri

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Log a local file (or folder) under ``artifact_path``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact not found: {path}")
        if path.is_dir():
            self._c.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._c.log_artifact(self.run_id, str(path), artifact_path)

    def _log_bytes(self, data: bytes, artifact_file: str) -> None:
        folder, _, filename = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / filename
            local.write_bytes(data)
            self._c.log_artifact(self.run_id, str(local), folder or None)


RunHandle = Run | NullRun
