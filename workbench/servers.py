"""Local servers the workbench starts (JupyterLab, the MLflow UI, a shared MLflow tracking server and the
PostgreSQL behind it): loopback unless asked otherwise, token for JupyterLab, started and stopped by process id
(or ``pg_ctl``) with bounded waits.

Used by the browser tests and ``make screenshots``; ``make lab`` / ``make ui`` start the same servers by hand, and
``python -m workbench tracking-server`` (``make tracking-server``) starts PostgreSQL plus an MLflow tracking server
for a team. This module never imports mlflow: the MLflow servers run as subprocesses.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server process started by the workbench: its URL (with the token for JupyterLab) and log file."""

    name: str
    process: subprocess.Popen
    url: str
    port: int
    log: Path
    token: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, *, timeout: float = 15.0) -> int | None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        if self.process.poll() is not None:
            return self.process.returncode
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return self.process.poll()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_http(
    url: str, *, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Poll ``url`` until it answers 200, the process dies, or ``timeout`` seconds pass (then raise)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(
                f"server exited with code {process.returncode} before answering {url}:\n{tail}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback URL built here
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            last = str(e)
        time.sleep(0.25)
    tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s ({last}):\n{tail}")


def _start(
    name: str, cmd: list[str], *, log: Path, env: dict[str, str] | None, cwd: Path | None
) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "w")  # noqa: SIM115 - the server owns the file for its lifetime
    return subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group: stop() ends the server and its kernels
    )


def start_jupyter_lab(
    root: Path,
    *,
    work_dir: Path,
    token: str | None = None,
    port: int | None = None,
    timeout: float = 90.0,
    env: dict[str, str] | None = None,
) -> Server:
    """JupyterLab on 127.0.0.1 serving ``root``, with a token (random unless given); settings, workspaces and
    runtime files under ``work_dir`` so nothing of the user's is touched."""
    token = token or secrets.token_hex(16)
    port = port or free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    settings = work_dir / "settings"
    notif = settings / "@jupyterlab" / "apputils-extension"
    notif.mkdir(parents=True, exist_ok=True)
    (notif / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", HOST, "--port", str(port),
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
    ]  # fmt: skip
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = work_dir / "jupyterlab.log"
    extra = {
        "JUPYTER_RUNTIME_DIR": str(work_dir / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(work_dir / "workspaces"),
        **(env or {}),
    }
    proc = _start("jupyterlab", cmd, log=log, env=extra, cwd=root)
    server = Server("jupyterlab", proc, f"http://{HOST}:{port}", port, log, token)
    try:
        wait_http(f"{server.url}/api/status?token={token}", timeout=timeout, process=proc, log=log)
    except Exception:
        server.stop()
        raise
    return server


def start_mlflow_ui(
    backend_store_uri: str,
    *,
    artifact_root: Path,
    work_dir: Path,
    port: int | None = None,
    timeout: float = 90.0,
) -> Server:
    """The MLflow UI (one worker, job execution off) on 127.0.0.1 over ``backend_store_uri``."""
    port = port or free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", backend_store_uri,
        "--default-artifact-root", str(artifact_root), "--host", HOST, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    url = f"http://{HOST}:{port}"
    return _start_mlflow("mlflow-ui", cmd, work_dir=work_dir, url=url, port=port, health=url, timeout=timeout)


def _start_mlflow(
    name: str, cmd: list[str], *, work_dir: Path, url: str, port: int, health: str, timeout: float
) -> Server:
    """Start an MLflow server process (job execution off), wait for ``<health>/health``; stop it on failure."""
    log = work_dir / f"{name}.log"
    proc = _start(name, cmd, log=log, env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=work_dir)
    server = Server(name, proc, url, port, log)
    try:
        wait_http(f"{health}/health", timeout=timeout, process=proc, log=log)
    except BaseException:
        server.stop()
        raise
    return server


# ---------------------------------------------------------------------------------------- PostgreSQL

POSTGRES_LIB = Path("/usr/lib/postgresql")


def postgres_bin(name: str) -> str:
    """Path of PostgreSQL's ``name`` program (``initdb``, ``pg_ctl``, ``psql``): the newest
    ``/usr/lib/postgresql/<version>/bin/<name>``, else ``name`` on the PATH; FileNotFoundError if neither."""
    found = sorted(POSTGRES_LIB.glob(f"*/bin/{name}"), key=lambda p: _version_key(p.parts[-3]))
    if found:
        return str(found[-1])
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(
            f"PostgreSQL's {name} is not installed (looked in {POSTGRES_LIB}/*/bin and the PATH); install it with "
            "scripts/install-system-deps.sh (apt-get install postgresql)"
        )
    return path


def postgres_available() -> bool:
    """Whether ``initdb``, ``pg_ctl`` and ``psql`` can be found (see :func:`postgres_bin`)."""
    try:
        for name in ("initdb", "pg_ctl", "psql"):
            postgres_bin(name)
    except FileNotFoundError:
        return False
    return True


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)) or (0,)


@dataclass
class PostgresServer:
    """A PostgreSQL cluster started by :func:`start_postgres`; ``url`` is its SQLAlchemy URL."""

    data_dir: Path
    port: int
    database: str
    log: Path
    user_prefix: tuple[str, ...] = ()  # ("runuser", "-u", "postgres", "--") when started as root
    name: str = "postgres"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@{HOST}:{self.port}/{self.database}"

    def running(self) -> bool:
        r = subprocess.run([*self.user_prefix, postgres_bin("pg_ctl"), "-D", str(self.data_dir), "status"],
                           capture_output=True, timeout=30)  # fmt: skip
        return r.returncode == 0

    def stop(self, *, timeout: float = 60.0) -> None:
        """``pg_ctl -m fast stop``: open sessions are rolled back, committed data kept. A no-op if stopped."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        subprocess.run(
            [*self.user_prefix, postgres_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
             "-t", str(int(timeout)), "stop"],
            capture_output=True, timeout=timeout + 30,
        )  # fmt: skip

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _tail(path: Path, n: int = 2000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def start_postgres(
    base_dir: str | os.PathLike[str],
    *,
    port: int | None = None,
    database: str = "mlflow",
    timeout: float = 60.0,
) -> PostgresServer:
    """A private PostgreSQL cluster under ``base_dir`` (``data/`` and ``postgres.log``), listening on
    127.0.0.1:``port`` only (TCP; no Unix socket), with the database ``database`` created if missing.

    An existing cluster in ``base_dir/data`` is started as it is, so a restarted server keeps its data. Connections
    from this machine are trusted as the ``postgres`` user: keep it on a machine you control. As root the cluster
    runs as the ``postgres`` user (``runuser``), which must be able to reach ``base_dir``.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", database):
        raise ValueError(f"database must be a plain identifier (letters, digits, _), got {database!r}")
    base = Path(base_dir).expanduser().resolve()
    data, log = base / "data", base / "postgres.log"
    initdb, pg_ctl, psql = postgres_bin("initdb"), postgres_bin("pg_ctl"), postgres_bin("psql")
    base.mkdir(parents=True, exist_ok=True)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        prefix = ("runuser", "-u", "postgres", "--")
        shutil.chown(base, "postgres", "postgres")
        if data.exists():
            shutil.chown(data, "postgres", "postgres")
        if log.exists():
            shutil.chown(log, "postgres", "postgres")
        if subprocess.run([*prefix, "test", "-w", str(base)], capture_output=True, timeout=30).returncode:
            raise ValueError(
                f"the postgres user cannot write to {base}: PostgreSQL refuses to run as root, so its folder must "
                "be reachable by the postgres user (every parent folder searchable); pick one under /srv or /tmp"
            )
    if (data / "PG_VERSION").exists():
        if (data / "postmaster.pid").exists() and PostgresServer(data, 0, database, log, prefix).running():
            raise ValueError(f"a PostgreSQL server is already running on {data}; stop it first")
    else:
        if data.exists() and any(data.iterdir()):
            raise ValueError(f"{data} exists, is not empty and holds no PostgreSQL cluster")
        r = subprocess.run(
            [*prefix, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if r.returncode:
            raise RuntimeError(f"initdb failed for {data}:\n{(r.stdout + r.stderr)[-2000:]}")
    port = port or free_port()
    opts = f"-p {port} -c listen_addresses={HOST} -c unix_socket_directories=''"
    server = PostgresServer(data, port, database, log, prefix)
    try:
        r = subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", str(int(timeout)), "start"],
            capture_output=True, text=True, timeout=timeout + 30,
        )  # fmt: skip
    except BaseException:  # interrupted or timed out while starting: leave nothing running
        server.stop()
        raise
    if r.returncode:
        server.stop()
        raise RuntimeError(
            f"PostgreSQL did not start on {HOST}:{port} ({data}):\n{r.stderr[-1000:]}\n{_tail(log)}"
        )
    try:
        conn = [psql, "-h", HOST, "-p", str(port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                "-tAc"]  # fmt: skip
        exists = subprocess.run([*conn, f"select 1 from pg_database where datname = '{database}'"],
                                capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        if exists.stdout.strip() != "1":
            subprocess.run([*conn, f'create database "{database}"'], capture_output=True, text=True, timeout=60,
                           check=True)  # fmt: skip
    except subprocess.CalledProcessError as e:
        server.stop()
        raise RuntimeError(f"could not create database {database!r} on {HOST}:{port}: {e.stderr}") from e
    except BaseException:
        server.stop()
        raise
    return server


# ---------------------------------------------------------------------------------- tracking server


def _port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (SO_REUSEADDR as servers set it: TIME_WAIT is free)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_tracking_server(
    *,
    backend_uri: str,
    artifact_root: str | os.PathLike[str],
    host: str = HOST,
    port: int | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    allowed_hosts: str | None = None,
    timeout: float = 120.0,
) -> Server:
    """An MLflow tracking server (``mlflow server``, one worker, job execution off) over ``backend_uri`` that
    serves artifacts itself (``--serve-artifacts``): clients on other machines upload and download them through
    it, and they are stored under ``artifact_root``. Binds ``host`` (127.0.0.1 unless asked; ``0.0.0.0`` for a
    team); ``allowed_hosts`` is MLflow's ``--allowed-hosts`` (needed when clients use a host name). The log is
    ``work_dir/mlflow-server.log`` (default: next to ``artifact_root``).
    """
    artifacts = Path(artifact_root).expanduser().resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir).expanduser().resolve() if work_dir is not None else artifacts.parent
    work.mkdir(parents=True, exist_ok=True)
    local = HOST if host in ("0.0.0.0", "") else host  # noqa: S104 - the address checked, not bound
    if port is None:
        port = free_port()
    elif not _port_free("" if host == "0.0.0.0" else host, port):  # noqa: S104
        raise ValueError(f"port {port} on {host} is already in use; pick another with --port")
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, "--serve-artifacts",
        "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    shown = socket.gethostname() if host == "0.0.0.0" else host  # noqa: S104
    return _start_mlflow(
        "mlflow-server", cmd, work_dir=work, url=f"http://{shown}:{port}", port=port,
        health=f"http://{local}:{port}", timeout=timeout,
    )  # fmt: skip


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS: tuple[str, ...] = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip
