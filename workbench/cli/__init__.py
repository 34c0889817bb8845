"""``python -m workbench ...``: thin subcommands over the package; each writes its summary to ``--json PATH``.

One module per subcommand (``train``, ``profile``, ``quantize``, ``sensitivity``, ``predictor``, ``search``,
``pipeline``, ``qat``, ``hardware``, ``deploy``, ``adapt``, ``replicate_hawq``, ``bench``, ``servers`` for
``tracking-server``), each with ``add_parser(subparsers)`` and ``run(args)``; :mod:`.common` holds the shared flags
and helpers, :mod:`.main` composes the parser and runs a command.
"""

from __future__ import annotations

from workbench.cli.main import build_parser, check_outputs, main
from workbench.cli.pipeline import NEXT_STEPS

__all__ = ["NEXT_STEPS", "build_parser", "check_outputs", "main"]
