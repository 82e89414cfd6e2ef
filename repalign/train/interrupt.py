"""Stop a training run cleanly on Ctrl-C or SIGTERM (a cluster scheduler's preemption notice).

The first SIGINT or SIGTERM only raises a flag. The loop finishes the step in flight,
saves ``RUN/last`` (a consistent state: ``--resume`` then continues as if never
stopped) and raises :class:`RunInterrupted`. A second Ctrl-C aborts at once without
saving, because a step cut in half (some parameters updated, others not) must not be
written over ``RUN/last``. Once training is over and saved, a signal stops the final
evaluation at once (a resumed run redoes it).

Without these handlers a SIGTERM (SLURM's ``scancel``, a preemption, ``kill``) ended
the process on the spot and lost every step since the last periodic checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal after saving a checkpoint it can resume from.

    A :class:`KeyboardInterrupt`, so code that already treats Ctrl-C as "stop, do not
    retry" (a notebook, the demo's cache) treats it the same.
    """

    def __init__(self, signal_name: str, step: int, checkpoint: Path) -> None:
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(
            f"{signal_name} received: stopped after step {step} and saved {checkpoint}; "
            "continue with --resume"
        )

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal (130, 143)."""
        return 128 + int(signal.Signals[self.signal_name])


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """Data-loader worker init: leave SIGINT/SIGTERM to the main process.

    A terminal's Ctrl-C and a scheduler's SIGTERM reach every process of the job; a
    worker killed by them would make the main process fail on its next batch instead
    of stopping cleanly. The workers still exit with the main process.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopOnSignal:
    """Within ``with``: SIGINT and SIGTERM set :attr:`received` instead of ending the process.

    Handlers can only be installed from the main thread; elsewhere this does nothing
    (and Python's default Ctrl-C behaviour applies). A signal the process ignores (a
    ``nohup`` job's SIGINT, say) stays ignored. The previous handlers are restored on exit.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}
        self._saved: tuple[int, Path] | None = None

    def stop_at_once(self, step: int, checkpoint: Path) -> None:
        """From now on a signal raises :class:`RunInterrupted` at once, without waiting for a
        step boundary: call it once ``checkpoint`` holds everything (before a final
        evaluation, which a resumed run simply redoes). Raises now if a signal came already."""
        self._saved = (step, checkpoint)
        if self.received is not None:
            raise RunInterrupted(self.received, step, checkpoint)

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._saved is not None:
            self.received = self.received or name
            raise RunInterrupted(self.received, *self._saved)
        if self.received is None:
            self.received = name
            log.warning(
                "%s received: stopping after the step in flight and saving a checkpoint "
                "(press Ctrl-C again to abort without saving)",
                name,
            )
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
