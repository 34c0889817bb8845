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


class StaleCacheWarning(UserWarning):
    """A cached file (trained model, cached result) could not be used: damaged, truncated, from another
    configuration or in a format that could run code. It is rebuilt and replaced; the message names the file."""


_KEYS: dict[tuple[str, int, int, int], bytes] = {}


def signing_key() -> bytes:
    """This installation's secret key (``data/.signing-key``, created on first use, mode 0600): every file the
    workbench writes and later trusts is signed with it (HMAC-SHA256, :mod:`workbench._common.signed`) and used
    only when the signature matches, so a file written elsewhere or edited is refused before anything in it is
    used (a pickled predictor is never unpickled)."""
    import os
    import secrets

    path = data_dir() / ".signing-key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".signing-key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
        try:  # appears whole or not at all: another process never reads a half-written key
            os.link(tmp, path)
        except FileExistsError:  # another process created it a moment ago: theirs is the key
            pass
        finally:
            tmp.unlink()
    stat = path.stat()
    stamp = (str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    if stamp in _KEYS:  # every signed line or file asks for the key: read it once per file version
        return _KEYS[stamp]
    key = path.read_bytes()
    if len(key) != 32:
        raise ValueError(
            f"signing key {path} is damaged ({len(key)} bytes, expected 32); delete it to make a new one"
        )
    _KEYS[stamp] = key
    return key
