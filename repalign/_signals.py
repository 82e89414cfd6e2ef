"""SIGTERM treated as Ctrl-C for the duration of long work that already handles Ctrl-C."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Within ``with``, a SIGTERM (``kill``, ``scancel``, a preemption) raises
    ``KeyboardInterrupt`` like Ctrl-C, so the code's own interruption handling (finish
    what is written, say how to resume) runs instead of the process ending on the spot.

    Only from the main thread, and only where SIGTERM has its default action (a handler
    someone else installed is left alone); the previous handler is restored on exit.
    """
    install = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if install else None
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGTERM, previous)
