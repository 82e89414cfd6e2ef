"""Signal dispositions for tests that send signals: a job started in the background by a
non-interactive shell (some CI runners, `cmd &`) inherits SIGINT ignored, and the code
under test rightly leaves an ignored signal alone. These tests are about the usual case."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture
def default_stop_signals() -> Iterator[None]:
    """SIGINT raising KeyboardInterrupt and SIGTERM at its default, as in a terminal."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def default_signals_in_child() -> None:
    """``preexec_fn`` for a subprocess: SIGINT and SIGTERM at their defaults (an ignored
    disposition would otherwise be inherited across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
