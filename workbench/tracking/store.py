"""Where runs are stored: the tracking URI (a sqlite file by default, or a tracking server), its artifact folder,
the store created once per process, experiments, and the fail-fast check of a tracking server."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from workbench.paths import mlruns_dir

DISABLE_ENV = "WORKBENCH_TRACKING"
STAGE_TAG = "workbench.stage"
REACH_TIMEOUT = 5.0  # seconds to wait for a tracking server's answer before failing
_ready_stores: set[str] = set()


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


def ui_store_args(uri: str | None = None) -> list[str]:
    """The ``mlflow ui`` flags that open the workbench's store (``MLFLOW_TRACKING_URI``, else the sqlite database
    under ``WORKBENCH_HOME``'s ``mlruns/``): ``--backend-store-uri`` and ``--default-artifact-root`` (its folder
    created). A tracking server (``http(s)://``) serves its own UI: ValueError naming it (credentials hidden)."""
    uri = uri or tracking_uri()
    if _is_remote(uri):
        parts = urlsplit(uri)
        shown = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
        raise ValueError(
            f"MLFLOW_TRACKING_URI is the tracking server {shown}: it serves its own UI, open that URL in a "
            "browser (unset MLFLOW_TRACKING_URI for the local store's UI)"
        )
    root = artifact_root(uri)
    root.mkdir(parents=True, exist_ok=True)
    return ["--backend-store-uri", uri, "--default-artifact-root", str(root)]


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
