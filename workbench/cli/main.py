"""``python -m workbench ...``: the parser composed from one module per subcommand, and :func:`main`, which checks
the output paths, runs the command and writes its summary to ``--json PATH``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import workbench.cli.adapt as adapt
import workbench.cli.bench as bench
import workbench.cli.deploy as deploy
import workbench.cli.hardware as hardware
import workbench.cli.pipeline as pipeline
import workbench.cli.predictor as predictor
import workbench.cli.profile as profile
import workbench.cli.qat as qat
import workbench.cli.quantize as quantize
import workbench.cli.replicate_hawq as replicate_hawq
import workbench.cli.search as search
import workbench.cli.sensitivity as sensitivity
import workbench.cli.servers as servers
import workbench.cli.train as train
from workbench._common.signed import TRUST_ENV
from workbench.cli.common import write_json

# in the order ``--help`` lists them
COMMANDS = (
    train, profile, quantize, sensitivity, predictor, search, pipeline, qat, hardware, deploy, adapt,
    replicate_hawq, bench, servers,
)  # fmt: skip
OUTPUT_FLAGS = ("json", "csv", "out", "save", "save_best")


def build_parser() -> argparse.ArgumentParser:
    """The ``workbench`` parser: every command module adds its subcommand (``func``: the module's ``run``)."""
    parser = argparse.ArgumentParser(
        prog="workbench", description="Adaptive mixed-precision quantization workbench"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    for command_parser in sub.choices.values():
        command_parser.add_argument(
            "--trust-old-files",
            action="store_true",
            help="accept files this workbench wrote before it signed them (caches, datasets, checkpoints, packed "
            "models) once; edited or foreign signed files are refused all the same",
        )
    return parser


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, output paths that cannot be written: an existing file without --overwrite, a
    directory, or a path below an existing file."""
    for opt in OUTPUT_FLAGS:
        path = getattr(args, opt, None)
        if not path:
            continue
        flag = f"--{opt.replace('_', '-')}"
        p = Path(path)
        if p.is_dir():
            raise ValueError(f"{flag} {path} is a directory; give a file path")
        blocking = next((a for a in p.parents if a.exists() and not a.is_dir()), None)
        if blocking is not None:
            raise ValueError(f"{flag} {path}: {blocking} is a file, not a directory")
        if p.exists() and not args.overwrite:
            raise FileExistsError(f"{flag} {path} exists; pass --overwrite to replace it")


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` names (default: ``sys.argv[1:]``); 0 on success, 2 (``error: ...`` on stderr) on a
    bad value, a missing or unwritable file, or an unreachable tracking server."""
    args = build_parser().parse_args(argv)
    try:
        if args.trust_old_files:
            os.environ[TRUST_ENV] = "1"
        check_outputs(args)
        if hasattr(args, "no_track") and not args.no_track:
            from workbench import tracking

            if tracking.tracking_enabled():
                tracking.check_reachable()  # a dead tracking server fails here, before any expensive work
        result = args.func(args)
        write_json(args.json, {"command": args.command, **result})
    except (ValueError, OSError) as e:  # FileNotFoundError, FileExistsError, PermissionError are OSErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
