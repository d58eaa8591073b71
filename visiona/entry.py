"""The ``visiona`` console script: answers ``--version`` before the command line loads.

Building the typer command tree imports typer, click and pydantic (typer builds a
pydantic adapter per parameter); ``--version`` needs none of it, so it is answered
here from the package metadata alone. Everything else goes to :mod:`visiona.cli`.
"""

from __future__ import annotations

import sys

from visiona import __version__


def main() -> None:
    """Console-script entry point: the fast path for ``--version``, then the full CLI."""
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"visiona {__version__}\n")
        sys.stdout.flush()
        return
    from visiona.cli import main as cli_main  # noqa: PLC0415 - loaded only when needed

    cli_main()
