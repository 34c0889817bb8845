"""Untrusted inputs: files the workbench loads never run code, and the servers it starts face this machine only.

Every loader a user can hand a file to (packed model, plan, profile, sensitivity result, QAT checkpoint, weights,
model caches) gets a malicious pickle whose unpickling would create a marker file: each refuses it, and the marker
never appears. A static scan keeps new ``pickle.load`` / ``torch.load(weights_only=False)`` / ``eval`` calls out of
the package. JupyterLab, the MLflow UI and the tracking server bind 127.0.0.1 unless a host is given explicitly,
and JupyterLab answers nothing without its token.
"""

from __future__ import annotations

import ast
import inspect
import os
import pickle
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from workbench import servers

ROOT = Path(__file__).resolve().parents[1]


class _Marker:
    """Unpickling this runs ``touch <path>``: proof that a loader executed code from a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def _write_evil(path: Path, marker: Path, style: str) -> Path:
    """A malicious file: a bare pickle, or torch.save's zip archive holding one (what torch.load reads)."""
    payload = {"format": "workbench-qat-checkpoint", "state_dict": _Marker(marker), "x": _Marker(marker)}
    if style == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))  # torch.save's protocol
    else:
        torch.save(payload, path)
    return path


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()


def _load_packed(p: Path) -> object:
    from workbench.quant import load_packed

    return load_packed(p, _tiny())


def _load_plan(p: Path) -> object:
    from workbench.quant import QuantPlan

    return QuantPlan.load(p)


def _load_profile(p: Path) -> object:
    from workbench.hardware.profile import PrecisionProfile

    return PrecisionProfile.load(p)


def _load_profile_by_name(p: Path) -> object:
    from workbench.hardware.profile import load_profile

    return load_profile(str(p))


def _load_sensitivity(p: Path) -> object:
    from workbench.sensitivity import SensitivityResult

    return SensitivityResult.load(p)


def _load_qat_checkpoint(p: Path) -> object:
    from workbench.qat import _read_checkpoint

    return _read_checkpoint(p)


def _load_weights(p: Path) -> object:
    from workbench.tasks import _load_weights

    return _load_weights(_tiny(), p)


class _Retrain(Exception):
    """Raised instead of training: the cache entry was refused and would be rebuilt."""


def _load_bert_cache(p: Path) -> object:
    import workbench.tasks.digits_bert as tt
    from workbench.paths import StaleCacheWarning

    def no_training(*args, **kwargs):
        raise _Retrain(str(p))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tt, "_cache_path", lambda *a, **k: p)
        mp.setattr(tt, "train_digits_bert", no_training)
        with pytest.warns(StaleCacheWarning, match=str(p)):
            return tt.get_digits_bert()


# (file name, loader, what it raises: None = returns None, i.e. "not usable, rebuild")
LOADERS: dict[str, tuple[str, Callable[[Path], object], type[BaseException] | None]] = {
    "packed model": ("model.wbq", _load_packed, ValueError),  # PlanError
    "plan": ("plan.json", _load_plan, ValueError),  # PlanError
    "profile": ("profile.json", _load_profile, ValueError),  # ProfileError
    "profile by path": ("profile.json", _load_profile_by_name, ValueError),
    "sensitivity result": ("sens.json", _load_sensitivity, ValueError),
    "sensitivity result (.pkl)": ("sens.pkl", _load_sensitivity, ValueError),
    "QAT checkpoint": ("qat.pt", _load_qat_checkpoint, ValueError),  # QATError
    "task weights": ("weights.pt", _load_weights, ValueError),
    "BERT model cache": ("bert.pt", _load_bert_cache, _Retrain),  # named in a warning, then retrained
}


@pytest.mark.parametrize("style", ["pickle", "torch.save"])
@pytest.mark.parametrize("what", sorted(LOADERS))
def test_a_malicious_pickle_is_refused_and_never_runs(what: str, style: str, tmp_path: Path) -> None:
    name, load, raises = LOADERS[what]
    marker = tmp_path / "pwned"
    path = _write_evil(tmp_path / name, marker, style)
    assert raises is not None
    with pytest.raises(raises) as err:
        load(path)
    assert not marker.exists(), f"loading a {what} ran code from the file"
    if issubclass(raises, ValueError):  # the workbench's own errors name the file
        assert str(path) in str(err.value), err.value


@pytest.mark.parametrize("style", ["pickle", "torch.save"])
def test_a_malicious_model_cache_entry_is_not_used(style: str, tmp_path: Path) -> None:
    from workbench.models import _load_cached

    marker = tmp_path / "pwned"
    path = _write_evil(tmp_path / "digits_cnn.pt", marker, style)
    sidecar = tmp_path / "digits_cnn.json"
    sidecar.write_text("{}")
    from workbench.paths import StaleCacheWarning

    with pytest.warns(StaleCacheWarning, match="digits_cnn.pt"):
        assert _load_cached("digits_cnn", path, sidecar) is None  # not usable: get_trained_model retrains it
    assert not marker.exists()


def test_a_malicious_predictor_file_is_refused(tmp_path: Path) -> None:
    from workbench.predictor import AccuracyPredictor

    marker = tmp_path / "pwned"
    path = _write_evil(tmp_path / "predictor.joblib", marker, "pickle")
    with pytest.raises(ValueError, match="not a signed workbench predictor"):
        AccuracyPredictor.load(path)
    # the same pickle behind the right magic but signed with another key (another installation, or forged)
    blob = path.read_bytes()
    forged = tmp_path / "forged.joblib"
    forged.write_bytes(b"WBPRED2\n" + bytes(32) + blob)
    with pytest.raises(ValueError, match="fails its signature check"):
        AccuracyPredictor.load(forged)
    assert not marker.exists(), "AccuracyPredictor.load ran code from the file"


# ------------------------------------------------------------------------------------------- static scan

# calls that run code from the data they read, unless made safe by an argument
_UNSAFE_CALLS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "joblib.load", "cloudpickle.load", "cloudpickle.loads",
    "dill.load", "dill.loads", "pd.read_pickle", "pandas.read_pickle", "torch.jit.load", "yaml.load",
    "yaml.unsafe_load", "marshal.load", "marshal.loads", "shelve.open", "mlflow.pytorch.load_model",
    "mlflow.pyfunc.load_model", "eval", "exec",
}  # fmt: skip
# known, reviewed exceptions: (file, call) -> why
_ALLOWED = {
    (
        "workbench/search/workers.py",
        "torch.load",
    ): "the spawned search workers' payload (the task, with its model "
    "and loaders), written by the parent a moment before into a private tempfile.TemporaryDirectory (mode 0700)",
    ("workbench/predictor/predictor.py", "pickle.loads"): "fitted predictors: unpickled only after their "
    "HMAC-SHA256 under this installation's key matches (test_a_malicious_predictor_file_is_refused)",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _unsafe_calls(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        kwargs = {k.arg: k.value for k in node.keywords}
        const = {k: v.value for k, v in kwargs.items() if isinstance(v, ast.Constant)}
        unsafe_torch = name == "torch.load" and const.get("weights_only") is not True
        unsafe_numpy = name in ("np.load", "numpy.load") and const.get("allow_pickle", False) is not False
        if unsafe_torch or unsafe_numpy or name in _UNSAFE_CALLS:
            found.append((name, node.lineno))
    return found


def test_no_loader_in_the_package_can_run_code_from_a_file() -> None:
    bad = []
    for path in sorted((ROOT / "workbench").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        bad += [f"{rel}:{line} {call}" for call, line in _unsafe_calls(path) if (rel, call) not in _ALLOWED]
    assert not bad, (
        "calls that can run code from the file they read (use torch.load(..., weights_only=True), JSON, npz "
        f"without allow_pickle, or safetensors): {bad}"
    )


def test_the_scan_finds_unsafe_calls(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "import pickle, torch, numpy as np, yaml\n"
        "pickle.load(f)\ntorch.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n"
        "np.load(p)\nnp.load(p, allow_pickle=True)\nyaml.load(s)\neval(s)\n"
    )
    assert [c for c, _ in _unsafe_calls(src)] == [
        "pickle.load", "torch.load", "torch.load", "np.load", "yaml.load", "eval",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------- servers


class _Proc:
    """Stands in for a server process: arguments are checked, nothing is started."""

    pid = -1
    returncode = None

    def poll(self) -> None:
        return None


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Command lines the server helpers would run (no process starts, no waiting)."""
    cmds: list[list[str]] = []

    def fake_start(name, cmd, *, log, env, cwd):
        cmds.append(list(cmd))
        return _Proc()

    monkeypatch.setattr(servers, "_start", fake_start)
    monkeypatch.setattr(servers, "wait_http", lambda *a, **k: None)
    return cmds


def _opt(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_servers_bind_loopback_by_default(launched: list[list[str]], tmp_path: Path) -> None:
    lab = servers.start_jupyter_lab(tmp_path, work_dir=tmp_path / "lab")
    assert _opt(launched[-1], "--ip") == "127.0.0.1" and lab.url.startswith("http://127.0.0.1:")
    tokens = [a.split("=", 1)[1] for a in launched[-1] if a.startswith("--IdentityProvider.token=")]
    assert tokens == [lab.token] and len(lab.token) == 32  # a random 128-bit token
    servers.start_jupyter_lab(tmp_path, work_dir=tmp_path / "lab", token="")  # no way to turn the token off
    assert [a for a in launched[-1] if a.startswith("--IdentityProvider.token=")][
        0
    ] != "--IdentityProvider.token="
    assert not any("allow_remote_access" in a or "--ip=" in a or a == "0.0.0.0" for a in launched[-1])
    ui = servers.start_mlflow_ui("sqlite:///x.db", artifact_root=tmp_path / "a", work_dir=tmp_path / "ui")
    assert _opt(launched[-1], "--host") == "127.0.0.1" and ui.url.startswith("http://127.0.0.1:")
    srv = servers.start_tracking_server(backend_uri="sqlite:///x.db", artifact_root=tmp_path / "art")
    assert _opt(launched[-1], "--host") == "127.0.0.1" and srv.url.startswith("http://127.0.0.1:")
    # JupyterLab and the MLflow UI have no host option at all; the tracking server's is explicit
    assert "host" not in inspect.signature(servers.start_jupyter_lab).parameters
    assert "host" not in inspect.signature(servers.start_mlflow_ui).parameters
    assert inspect.signature(servers.start_tracking_server).parameters["host"].default == "127.0.0.1"
    servers.start_tracking_server(
        backend_uri="sqlite:///x.db", artifact_root=tmp_path / "art", host="0.0.0.0"
    )
    assert _opt(launched[-1], "--host") == "0.0.0.0"  # only when asked for


def test_the_tracking_server_command_binds_loopback_unless_told() -> None:
    from workbench.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["tracking-server"]).host == "127.0.0.1"
    assert parser.parse_args(["tracking-server", "--host", "0.0.0.0"]).host == "0.0.0.0"
    makefile = (ROOT / "Makefile").read_text()
    assert "--ip 127.0.0.1" in makefile and "--host 127.0.0.1" in makefile  # make lab / make ui


def _other_address() -> str | None:
    """An address of this machine that is not loopback (None when it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def _refused_elsewhere(port: int) -> None:
    addr = _other_address()
    if addr is None:
        return
    with socket.socket() as s:
        s.settimeout(3)
        assert s.connect_ex((addr, port)) != 0, f"the server also answers on {addr}:{port}"


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_jupyterlab_answers_on_loopback_only_and_needs_its_token(tmp_path: Path) -> None:
    pytest.importorskip("jupyterlab")
    with servers.start_jupyter_lab(tmp_path, work_dir=tmp_path / "lab", timeout=120) as lab:
        assert _status(f"{lab.url}/api/status?token={lab.token}") == 200
        assert _status(f"{lab.url}/api/status") == 403
        assert _status(f"{lab.url}/api/contents") == 403
        assert _status(f"{lab.url}/api/contents?token=wrong") == 403
        _refused_elsewhere(lab.port)


@pytest.mark.slow  # an MLflow server takes about 5 s to start
def test_mlflow_ui_answers_on_loopback_only(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    with servers.start_mlflow_ui(
        f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "art", work_dir=tmp_path
    ) as ui:
        assert _status(f"{ui.url}/health") == 200
        _refused_elsewhere(ui.port)
