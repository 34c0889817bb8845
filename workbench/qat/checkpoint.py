"""QAT checkpoints: atomic writes with a SHA-256 of the whole content, the run key and model fingerprint they
are checked against on resume, and the refusals (mismatch, corruption, silent overwrite)."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from workbench._common.io import atomic_write_with
from workbench._common.signed import (
    UntrustedFileError,
    check_signature,
    old_format_error,
    sign_bytes,
    trusting_old_files,
)
from workbench.qat.config import QATConfig, QATError
from workbench.qat.loop import _Progress
from workbench.qat.trainer import _Trainer
from workbench.quant import QuantPlan

CHECKPOINT_FORMAT = "workbench-qat-checkpoint"
CHECKPOINT_VERSION = 3  # 2 added ``content_sha256``, 3 its ``signature`` (HMAC under the installation key)
_SIGNATURE_KIND = "qat-checkpoint"
# Fields that do not change what a run computes: a checkpoint written with other values still resumes.
_RUN_FIELDS = ("checkpoint", "resume", "overwrite", "max_steps")


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over a model's class and state (names, shapes, dtypes, values)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for key, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _run_key(
    config: QATConfig, plan: QuantPlan, steps_per_epoch: int, output_key: str | int | None = None
) -> dict[str, Any]:
    cfg = {k: v for k, v in config.to_dict().items() if k not in _RUN_FIELDS}
    key = {"config": cfg, "plan": plan.to_dict(), "steps_per_epoch": steps_per_epoch}
    if output_key is not None:  # the losses use another output (None keeps earlier checkpoints' keys)
        key["output_key"] = output_key
    return key


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _content_hash(obj: Any) -> str:
    """SHA-256 over a checkpoint's content: tensors by dtype, shape and raw bytes, everything else by type and
    value (mapping keys sorted). ``torch.load`` reads a checkpoint whose tensor bytes were flipped or edited
    without complaint; this hash does not match it any more."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"T:{t.dtype}:{tuple(o.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(o, Mapping):
            h.update(f"D{len(o)}:".encode())
            for k in sorted(o, key=repr):
                walk(k)
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"{type(o).__name__}{len(o)}:".encode())
            for v in o:
                walk(v)
        else:
            h.update(f"{type(o).__name__}:{o!r};".encode())

    walk(obj)
    return h.hexdigest()


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise QATError(
            f"checkpoint {path} is not a readable QAT checkpoint (truncated or corrupted? {type(e).__name__}: {e})"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise QATError(f"checkpoint {path} is not a QAT checkpoint (written by workbench.qat.train_qat)")
    version = ckpt.get("version")
    if version in (1, 2):  # before signatures: used only when old files are trusted
        if not trusting_old_files():
            raise QATError(str(old_format_error(path, "QAT checkpoint")))
        if version == 1:  # written before checkpoints carried a content hash: key and model are still checked
            warnings.warn(
                f"checkpoint {path} predates content hashes (version 1): its contents cannot be verified",
                stacklevel=3,
            )
        else:
            _check_content_hash(path, ckpt)
    elif version != CHECKPOINT_VERSION:
        raise QATError(f"checkpoint {path} has version {version!r}; this code reads {CHECKPOINT_VERSION}")
    else:
        signature = ckpt.pop("signature", None)
        stored = _check_content_hash(path, ckpt)
        try:  # the hash covers the whole content; its signature cannot be recomputed without the key
            check_signature(
                stored.encode(), signature, kind=_SIGNATURE_KIND, path=path, what="QAT checkpoint"
            )
        except UntrustedFileError as e:
            raise QATError(str(e)) from None
    return ckpt


def _check_content_hash(path: Path, ckpt: dict[str, Any]) -> str:
    """Pop and check the checkpoint's content hash; return it."""
    stored = ckpt.pop("content_sha256", None)
    if stored is None or stored != _content_hash(ckpt):
        what = "has no content hash" if stored is None else "does not match its content hash"
        raise QATError(
            f"checkpoint {path} {what}: it was edited or corrupted after it was written; pass a new "
            "checkpoint path or overwrite=True to start over"
        )
    return stored


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: checkpoint {a!r} != now {b!r}"]


def _open_checkpoint(config: QATConfig, key: dict[str, Any], fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: start fresh); refuses mismatches and silent overwrites."""
    if config.checkpoint is None:
        return None
    path = Path(config.checkpoint)
    if path.is_dir():
        raise QATError(f"checkpoint={str(path)!r} is a directory; pass a file path")
    if not path.exists():
        if config.resume:
            raise FileNotFoundError(
                f"resume=True but checkpoint {path} does not exist; run without resume to start it"
            )
        return None
    if config.overwrite:
        return None
    if not config.resume:
        raise FileExistsError(
            f"checkpoint {path} exists; pass resume=True (--resume) to continue it, overwrite=True "
            "(--overwrite) to start over, or a new checkpoint path"
        )
    ckpt = _read_checkpoint(path)
    if ckpt["model_fingerprint"] != fingerprint:
        raise QATError(
            f"checkpoint {path} was written for another model ({ckpt.get('model_class')} with fingerprint "
            f"{ckpt['model_fingerprint'][:12]}, this model's is {fingerprint[:12]}); pass a new checkpoint path "
            "or overwrite=True"
        )
    if ckpt["key_hash"] != _hash(key):
        diffs = _diff(ckpt["key"], key)
        raise QATError(
            f"checkpoint {path} was written by a different QAT config or plan ({'; '.join(diffs[:6])}); pass a "
            "new checkpoint path or overwrite=True"
        )
    return ckpt


def _save_checkpoint(
    path: Path,
    *,
    key: dict[str, Any],
    fingerprint: str,
    model: nn.Module,
    trainer: _Trainer,
    prog: _Progress,
) -> None:
    content = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "key": json.loads(json.dumps(key, default=str)),
        "key_hash": _hash(key),
        "model_fingerprint": fingerprint,
        "model_class": type(model).__name__,
        "model_state": model.state_dict(),
        "optimizer_state": trainer.optimizer.state_dict(),
        "bit_optimizer_state": (
            trainer.bit_optimizer.state_dict() if trainer.bit_optimizer is not None else None
        ),
        "progress": {
            "epoch": prog.epoch,
            "step_in_epoch": prog.step_in_epoch,
            "global_step": prog.global_step,
            "phase": prog.phase,
            "learned_bits": prog.learned_bits,
            "sums": dict(prog.sums),
            "seen": prog.seen,
            "epoch_seconds": prog.epoch_seconds,
            "best_val": prog.best_val,
            "best_epoch": prog.best_epoch,
            "since_best": prog.since_best,
            "history": list(prog.history),
            "done": prog.done,
            "stopped_early": prog.stopped_early,
        },
        "best_state": prog.best_state,
        "rng": torch.get_rng_state(),
        "torch_version": str(torch.__version__),
    }
    content["content_sha256"] = _content_hash(content)
    content["signature"] = sign_bytes(content["content_sha256"].encode(), kind=_SIGNATURE_KIND)
    atomic_write_with(path, lambda tmp: torch.save(content, tmp))
