"""What several `megdecode` sub-command modules share: the twin-size option and the failure exit."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

Size = Annotated[str, typer.Option(help="twin size: tiny | demo | full")]


def fail(message: str) -> NoReturn:
    """Say what went wrong on stderr and exit 1 (a stage's failure, not a usage error)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
