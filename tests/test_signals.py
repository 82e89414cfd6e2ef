import signal

import pytest

from repalign._signals import sigterm_as_keyboard_interrupt

pytestmark = pytest.mark.usefixtures("default_stop_signals")


def test_sigterm_raises_keyboard_interrupt_inside_and_default_outside():
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(KeyboardInterrupt), sigterm_as_keyboard_interrupt():
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_handler_installed_by_someone_else_is_left_alone():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with sigterm_as_keyboard_interrupt():
            signal.raise_signal(signal.SIGTERM)  # their handler runs, no KeyboardInterrupt
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
