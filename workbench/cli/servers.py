"""``workbench tracking-server``: a shared MLflow tracking server over PostgreSQL for a team
(:mod:`workbench.servers`), in the foreground until Ctrl-C; ``workbench ui``: the MLflow UI over the workbench's
store (``MLFLOW_TRACKING_URI``, else ``$WORKBENCH_HOME/mlruns``), what ``make ui`` runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tracking-server",
        help="a shared MLflow tracking server (PostgreSQL + artifacts) for a team; Ctrl-C stops",
    )
    p.add_argument("--home", help="its PostgreSQL data (pg/) and artifacts (default: data/tracking)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0: other machines)")
    p.add_argument("--port", type=port_number, default=5001, help="the tracking server's port (1-65535)")
    p.add_argument("--pg-port", type=port_number, help="PostgreSQL's port on 127.0.0.1 (default: a free one)")
    p.add_argument("--allowed-hosts", help="MLflow's --allowed-hosts, needed when clients use a host name")
    p.set_defaults(func=run, json=None)
    ui = sub.add_parser(
        "ui",
        help="the MLflow UI (foreground) over the workbench's store: MLFLOW_TRACKING_URI, else "
        "$WORKBENCH_HOME/mlruns/mlflow.db; what `make ui` runs",
    )
    ui.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0: other machines)")
    ui.add_argument("--port", type=port_number, default=5000, help="the UI's port (1-65535)")
    ui.set_defaults(func=run_ui, json=None)


def port_number(text: str) -> int:
    """An argparse ``type``: a TCP port, 1-65535 (0 and other values exit naming the value and the range)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port; give an integer in 1-65535")
    return port


def run_ui(args: argparse.Namespace) -> dict[str, Any]:
    """Replace this process with ``mlflow ui`` over the workbench's tracking store (one worker, job execution
    off), so that Ctrl-C stops it; returns only where ``os.execvpe`` does (in tests)."""
    import os
    import sys

    from workbench.tracking.store import ui_store_args

    store = ui_store_args()
    cmd = [sys.executable, "-m", "mlflow", "ui", *store, "--host", args.host, "--port", str(args.port)]
    cmd += ["--workers", "1"]
    print(f"MLflow UI on http://{args.host}:{args.port} over {store[1]}", flush=True)
    os.execvpe(cmd[0], cmd, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    return {"backend_store_uri": store[1], "artifact_root": store[3], "command": cmd}


def _print_usage(args: argparse.Namespace, server, pg, home: Path) -> None:
    """Where the server is, and how this and other machines point MLFLOW_TRACKING_URI at it."""
    import socket

    port = server.port
    print(
        f"MLflow tracking server {server.url}: runs in PostgreSQL ({pg.url}), artifacts in {home}/artifacts"
    )
    print(f"logs: {server.log}, {pg.log}\n")
    print("On this machine:")
    local = f"http://127.0.0.1:{port}" if args.host == "0.0.0.0" else server.url  # noqa: S104
    print(f"  export MLFLOW_TRACKING_URI={local}")
    print("  python -m workbench pipeline    # every stage logs its runs and artifacts to the server")
    print("On other machines (same command; artifacts are uploaded through the server):")
    if args.host in ("127.0.0.1", "localhost"):
        print(
            f"  ssh -N -L {port}:127.0.0.1:{port} {socket.gethostname()} &    # it listens on 127.0.0.1 only;"
        )
        print(f"  export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}    # or restart it with --host 0.0.0.0")
    else:
        print(f"  export MLFLOW_TRACKING_URI={server.url}")
    print(f"Ctrl-C stops it; runs and artifacts stay under {home} for the next start.", flush=True)


def _serve(args: argparse.Namespace, home: Path, started: list) -> None:
    """Start PostgreSQL and the tracking server (appended to ``started`` as they come up) and wait while the
    server runs; a server that exits by itself is an error."""
    import time

    from workbench.servers import start_postgres, start_tracking_server

    try:
        pg = start_postgres(home / "pg", port=args.pg_port)
        started.append(pg)
        server = start_tracking_server(
            backend_uri=pg.url, artifact_root=home / "artifacts", host=args.host, port=args.port,
            work_dir=home, allowed_hosts=args.allowed_hosts,
        )  # fmt: skip
        started.append(server)
    except (RuntimeError, TimeoutError) as e:
        raise ValueError(f"the tracking server did not start: {e}") from e
    _print_usage(args, server, pg, home)
    while server.running():
        time.sleep(1.0)
    raise ValueError(
        f"the MLflow tracking server exited (code {server.process.returncode}); see {server.log}"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    import signal

    from workbench.paths import data_dir

    home = Path(args.home).expanduser().resolve() if args.home else data_dir() / "tracking"
    stop_signals = (signal.SIGINT, signal.SIGTERM)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in stop_signals}
    started: list = []  # [pg, server] as far as they started
    try:
        _serve(args, home, started)
    except KeyboardInterrupt:
        print("\nstopping the tracking server and PostgreSQL", flush=True)
    finally:
        for s in stop_signals:  # a second Ctrl-C must not cut the shutdown short
            signal.signal(s, signal.SIG_IGN)
        try:
            for proc in reversed(started):  # the server, then PostgreSQL
                proc.stop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    if len(started) < 2:  # interrupted while starting
        return {"tracking_uri": None, "home": str(home)}
    pg, server = started
    return {"tracking_uri": server.url, "backend": pg.url, "home": str(home)}
