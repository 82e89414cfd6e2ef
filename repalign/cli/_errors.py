"""How every CLI verb reports a user error: one red line on stderr, exit status 2."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

stderr = Console(stderr=True)


def fail(message: object) -> typer.Exit:
    """Print ``error: message`` to stderr and return the exit to raise (``raise fail(...)``)."""
    # escaped: a message quoting a list or a path ("tasks=[ap,itc]", "run[2].nc") is not markup
    stderr.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    return typer.Exit(2)
