"""Rich progress bars: one bar for long loops (extraction, training, caching), and a
transient display of several tasks (metric grids and their statistics)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress


@contextmanager
def progress_bar(
    label: str, total: int, *, start: int = 0, enabled: bool = True
) -> Iterator[Callable[..., None]]:
    """Yield ``update(completed, note=None)``: moves the bar to ``completed`` of ``total``
    and, when given, replaces the note shown after the count. A no-op when not enabled."""
    if not enabled:
        yield lambda completed, note=None: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(label, total=total, completed=start, note="")

        def update(completed: int, note: str | None = None) -> None:
            fields = {} if note is None else {"note": note}
            bar.update(task, completed=completed, **fields)

        yield update


def task_progress(*, enabled: bool = True) -> Progress:
    """A transient multi-task display (``add_task``/``advance``) that is gone when done:
    metric grids, whose results are printed or written afterwards."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=not enabled,
    )
