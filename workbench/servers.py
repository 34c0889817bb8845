"""Local servers the workbench starts (JupyterLab, the MLflow UI): loopback only, token for JupyterLab, started
and stopped by process id with bounded waits.

Used by the browser tests and ``make screenshots``; ``make lab`` / ``make ui`` start the same servers by hand.
"""

from __future__ import annotations

import os
import secrets
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
    log = work_dir / "mlflow-ui.log"
    proc = _start(
        "mlflow-ui", cmd, log=log, env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=work_dir
    )
    server = Server("mlflow-ui", proc, f"http://{HOST}:{port}", port, log)
    try:
        wait_http(f"{server.url}/health", timeout=timeout, process=proc, log=log)
    except Exception:
        server.stop()
        raise
    return server


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
