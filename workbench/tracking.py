"""MLflow helpers: the one module of the package that imports mlflow (lazily, so ``import workbench`` stays fast).

Every stage records itself through :func:`start_run`, which yields a small handle with ``log_*`` methods::

    with tracking.start_run("profile", params={"task": "digits"}) as run:
        run.log_dataframe(df, "profile")
        run.log_figure(fig, "latency")

The store is a sqlite database, ``sqlite:///<mlruns>/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` says otherwise;
artifacts go next to the database (``<mlruns>/<experiment>/<run_id>/artifacts``). With an ``http(s)://`` URI (a
shared tracking server, ``python -m workbench tracking-server``) the server decides where artifacts go and runs
fail fast with :class:`TrackingUnreachableError` when it does not answer. Set ``WORKBENCH_TRACKING=0``
(or pass ``enabled=False``) and :func:`start_run` yields a :class:`NullRun` whose methods do nothing, so library
code can always log without a store.

Artifact layout inside a run: ``config/<name>.json``, ``tables/<name>.csv``, ``plans/<name>.json``,
``figures/<name>.html|png|svg``, ``<name>.json`` for :meth:`Run.log_json`, and the model under its own name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib.util
import json
import logging
import math
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from workbench.paths import mlruns_dir

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

__all__ = [
    "DISABLE_ENV",
    "NullRun",
    "Run",
    "TrackingUnreachableError",
    "active_run",
    "artifact_root",
    "check_reachable",
    "ensure_store",
    "flatten_params",
    "get_experiment",
    "load_model",
    "runs_frame",
    "start_run",
    "to_jsonable",
    "tracking_enabled",
    "tracking_uri",
]

DISABLE_ENV = "WORKBENCH_TRACKING"
STAGE_TAG = "workbench.stage"
_MAX_PARAM_LEN = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_MAX_KEY_LEN = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
_FIGURE_FORMATS = ("html", "png", "svg")
REACH_TIMEOUT = 5.0  # seconds to wait for a tracking server's answer before failing
_ready_stores: set[str] = set()


# --------------------------------------------------------------------------------------------- store


def tracking_enabled() -> bool:
    """False when the env var ``WORKBENCH_TRACKING`` is ``0``/``false``/``no``/``off``."""
    return os.environ.get(DISABLE_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<mlruns_dir()>/mlflow.db`` (absolute path)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{(mlruns_dir() / 'mlflow.db').resolve()}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for other schemes / in-memory databases.

    As in SQLAlchemy, ``sqlite:///rel.db`` is relative to the cwd and ``sqlite:////abs/x.db`` is absolute.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = unquote(uri[len(prefix) :].split("?", 1)[0])
    if path in ("", ":memory:"):
        return None
    return Path(path).resolve()


def _is_remote(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (``http://`` / ``https://``) rather than a local store."""
    return urlsplit(uri).scheme.lower() in ("http", "https")


class TrackingUnreachableError(ConnectionError, ValueError):
    """The tracking server named by the URI does not answer (a ValueError too: the CLI reports it as a bad setting)."""


def check_reachable(uri: str | None = None, *, timeout: float = REACH_TIMEOUT) -> None:
    """For an ``http(s)://`` tracking URI, raise :class:`TrackingUnreachableError` (naming the URI) unless the server
    answers ``<uri>/health`` within ``timeout`` seconds (200, or 401 / 403 from an authenticating server). Local
    stores are not checked.

    MLflow's own client retries a dead server for minutes; this check makes a run fail in seconds instead.
    """
    uri = uri or tracking_uri()
    if not _is_remote(uri):
        return
    parts = urlsplit(uri)
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    try:
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError as e:
        raise TrackingUnreachableError(f"MLflow tracking URI {uri!r} is not valid: {e}") from None
    shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))  # no credentials in messages
    health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=timeout):  # noqa: S310 - http(s) only, checked above
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):  # an authenticating server or proxy answered; MLflow's client logs in
            return
        reason = f"{health} answered HTTP {e.code} {e.reason}, not as an MLflow tracking server does"
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            reason = f"no answer within {timeout:g} s"
    raise TrackingUnreachableError(
        f"the MLflow tracking server {shown} (MLFLOW_TRACKING_URI) is not reachable: {reason}. Start it "
        "(python -m workbench tracking-server), point MLFLOW_TRACKING_URI at a running one, or run without "
        f"tracking (--no-track, or {DISABLE_ENV}=0)"
    )


def artifact_root(uri: str | None = None) -> Path:
    """Folder that holds run artifacts: the sqlite database's folder, or ``mlruns_dir()`` for other stores.

    With the default URI both are ``<root>/mlruns``; a test pointing ``MLFLOW_TRACKING_URI`` at
    ``sqlite:///<tmp>/mlflow.db`` keeps its artifacts under ``<tmp>`` too.
    """
    db = _sqlite_path(uri or tracking_uri())
    return db.parent if db is not None else mlruns_dir()


def _client(uri: str | None = None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri or tracking_uri())


def ensure_store(uri: str | None = None) -> str:
    """Create the artifact folder and the tracking database (once per process); return the URI.

    Call it before starting parallel writers: sqlite schema creation is not safe to race. For a tracking server
    (``http(s)://``) it only checks that the server answers (:func:`check_reachable`).
    """
    uri = uri or tracking_uri()
    if uri in _ready_stores:
        return uri
    if _is_remote(uri):  # a tracking server: nothing to create here, but fail fast if it is down
        check_reachable(uri)
        _client(uri).search_experiments(max_results=1)
        _ready_stores.add(uri)
        return uri
    artifact_root(uri).mkdir(parents=True, exist_ok=True)
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    # schema creation logs two INFO lines ("Creating initial MLflow database tables...") on stderr, which show as
    # red boxes in a notebook; they say nothing a user needs, so they are kept at WARNING for this call only
    db_logger = logging.getLogger("mlflow.store.db.utils")
    level = db_logger.level
    db_logger.setLevel(logging.WARNING)
    try:
        _client(uri).search_experiments(max_results=1)
    finally:
        db_logger.setLevel(level)
    _ready_stores.add(uri)
    return uri


def get_experiment(name: str = "workbench", *, uri: str | None = None) -> str:
    """Id of experiment ``name``, created with artifact location ``<artifact_root>/<name>`` if missing (on a
    tracking server: the server's default location, so clients on any machine upload through it)."""
    from mlflow.exceptions import MlflowException

    if not name or not name.strip():
        raise ValueError(f"experiment name must be a non-empty string, got {name!r}")
    uri = ensure_store(uri)
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None if _is_remote(uri) else (artifact_root(uri) / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another writer
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# ---------------------------------------------------------------------------------------- conversion


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types for dataclasses, ``.to_dict()`` objects, numpy / torch scalars and arrays, paths, enums."""
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict) and not isinstance(obj, type):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy arrays / scalars, torch tensors
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


def flatten_params(obj: Any, *, prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Flatten nested dicts / dataclasses into ``{"a.b": "value"}`` strings suitable for MLflow params.

    Lists are kept whole as JSON; values longer than MLflow's limit are truncated with a trailing ``...``.
    """
    plain = to_jsonable(obj)
    if not isinstance(plain, dict):
        raise TypeError(
            f"params must be a dict, dataclass or object with .to_dict(), got {type(obj).__name__}"
        )
    out: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{key}{sep}{k}" if key else str(k))
            return
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > _MAX_PARAM_LEN:
            text = text[: _MAX_PARAM_LEN - 3] + "..."
        out[key[:_MAX_KEY_LEN]] = text

    walk(plain, prefix)
    return out


def _metric_items(metrics: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(key, float) pairs; None values are skipped, tensors / numpy scalars converted."""
    items = []
    for key, value in metrics.items():
        if value is None:
            continue
        if hasattr(value, "item"):
            value = value.item()
        items.append((str(key), float(value)))
    return items


def _keep_index(df: pd.DataFrame) -> bool:
    """Whether ``df.to_csv`` should write the index: not for an unnamed RangeIndex or an unnamed column copy."""
    import pandas as pd

    if any(n is not None for n in df.index.names):
        return True
    if isinstance(df.index, pd.RangeIndex):
        return False
    values = df.index.tolist()
    return not any(df[c].tolist() == values for c in df.columns if df[c].dtype == df.index.dtype)


def _artifact_file(name: str, folder: str, ext: str) -> str:
    """``folder/name.ext`` (``name`` may already carry the extension or a sub-folder)."""
    if not name or name.startswith("/") or ".." in Path(name).parts:
        raise ValueError(f"artifact name must be a relative name without '..', got {name!r}")
    if not name.endswith(f".{ext}"):
        name = f"{name}.{ext}"
    return f"{folder}/{name}" if folder else name


# -------------------------------------------------------------------------------------------- handles


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


# ---------------------------------------------------------------------------------------------- runs


@contextlib.contextmanager
def start_run(
    stage: str,
    *,
    experiment: str = "workbench",
    run_name: str | None = None,
    params: Any = None,
    tags: Mapping[str, Any] | None = None,
    nested: bool = False,
    parent_run_id: str | None = None,
    enabled: bool | None = None,
) -> Iterator[RunHandle]:
    """Start an MLflow run for ``stage`` (tag ``workbench.stage``) and yield its :class:`Run` handle.

    ``params`` (dict or dataclass, nested keys flattened) are logged at start. ``nested=True`` makes it a
    child of the active run; ``parent_run_id`` makes it a
    child of that run (also from another process, e.g. a search worker). With ``enabled=False`` or ``WORKBENCH_TRACKING=0`` a :class:`NullRun` is yielded.
    The run ends FINISHED, or FAILED if the block raises.
    """
    if not stage or not isinstance(stage, str):
        raise ValueError(f"stage must be a non-empty string, got {stage!r}")
    if enabled is None:
        enabled = tracking_enabled()
    if not enabled:
        yield NullRun()
        return
    import mlflow

    uri = ensure_store()
    experiment_id = get_experiment(experiment, uri=uri)
    mlflow.set_tracking_uri(uri)
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    all_tags[STAGE_TAG] = stage
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name or stage,
        nested=nested or parent_run_id is not None,
        parent_run_id=parent_run_id,
        tags=all_tags,
    ) as active:
        run = Run(run_id=active.info.run_id, experiment_id=experiment_id, uri=uri)
        if params:
            run.log_params(params)
        yield run


def active_run() -> RunHandle:
    """Handle on the innermost active MLflow run of this thread, or a :class:`NullRun` when there is none.

    Lets library code log into whatever run its caller started, without passing handles around.
    """
    if not tracking_enabled():
        return NullRun()
    import sys

    if "mlflow" not in sys.modules:  # no run can be active if mlflow was never imported
        return NullRun()
    import mlflow

    active = mlflow.active_run()
    if active is None:
        return NullRun()
    return Run(
        run_id=active.info.run_id, experiment_id=active.info.experiment_id, uri=mlflow.get_tracking_uri()
    )


def runs_frame(
    experiment: str = "workbench",
    *,
    stage: str | None = None,
    filter_string: str = "",
    max_results: int = 1000,
) -> pd.DataFrame:
    """Runs of ``experiment`` as a DataFrame (newest first): ``run_id``, ``status``, ``params.*``, ``metrics.*``,
    ``tags.*`` columns as :func:`mlflow.search_runs` gives them. Empty if the experiment is missing or tracking is
    disabled. ``stage`` filters on the ``workbench.stage`` tag.
    """
    import pandas as pd

    if not tracking_enabled():
        return pd.DataFrame()
    import mlflow

    uri = ensure_store()
    exp = _client(uri).get_experiment_by_name(experiment)
    if exp is None:
        return pd.DataFrame()
    clauses = [filter_string] if filter_string else []
    if stage is not None:
        clauses.append(f"tags.`{STAGE_TAG}` = '{stage}'")
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string=" and ".join(clauses),
        max_results=max_results,
        order_by=["attributes.start_time DESC"],
        output_format="pandas",
    )


def _torch_module_classes() -> list[type]:
    """Every module class of ``torch.nn`` (Conv2d, Linear, Sequential, ...): rebuilding one runs no code of a file."""
    from torch import nn

    return [c for c in vars(nn).values() if isinstance(c, type) and issubclass(c, nn.Module)]


def load_model(model_uri: str, *, allowed_classes: Iterable[type] = ()) -> nn.Module:
    """Load a model logged with :meth:`Run.log_model` (``models:/...`` or ``runs:/...`` URI), in eval mode.

    The model file is read with ``torch.load(weights_only=True)``: nothing in it is executed, and it may only be
    made of ``torch.nn`` module classes (Sequential, Conv2d, Linear, ...) plus the module classes you trust in
    ``allowed_classes`` (e.g. your own model class). Anything else (a class of another module, a function, code a
    shared tracking server was fed) is refused with a ValueError naming the URI and what it asked for. MLflow's own
    loader is not used: it unpickles the file and imports the pickle module its metadata names.
    """
    import pickle

    import mlflow
    import torch

    allowed = [*_torch_module_classes(), *allowed_classes]
    bad = [c for c in allowed if not (isinstance(c, type) and issubclass(c, torch.nn.Module))]
    if bad:
        raise ValueError(f"allowed_classes must be torch.nn.Module subclasses, got {bad}")
    mlflow.set_tracking_uri(ensure_store())
    with tempfile.TemporaryDirectory(prefix="workbench-model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)).resolve()
        model_path = local / "data" / "model.pth"
        if not model_path.is_file():
            raise ValueError(
                f"{model_uri} holds no data/model.pth: it was not logged by workbench's Run.log_model (pickle "
                "format); load it with MLflow directly if you trust its source"
            )
        try:
            with torch.serialization.safe_globals(allowed):
                model = torch.load(model_path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            wanted = re.search(r"GLOBAL ([\w.]+)", str(e))
            detail = f"it asks for {wanted.group(1)}" if wanted else str(e).strip().splitlines()[-1][:300]
            raise ValueError(
                f"model {model_uri} was refused: loading it would run code outside the torch.nn module classes "
                f"({detail}). If that is your own model class and you trust the store, pass "
                "allowed_classes=[YourModel]"
            ) from None
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model {model_uri} holds a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()
