"""Loading a model logged with :meth:`Run.log_model` without running code from the store."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.tracking.store import ensure_store

if TYPE_CHECKING:
    from torch import nn


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
