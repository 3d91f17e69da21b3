"""Ctrl-C handling shared by the long commands (pretrain, collect, finetune): a command puts
its own SIGINT handler in place only when it owns SIGINT, and gives Python's back after."""
from __future__ import annotations

import signal
import threading
from typing import Callable


def owns_sigint() -> bool:
    """Whether a run may put its own SIGINT handler in place: only on the main thread and only
    over Python's default one, never over an ignored SIGINT (``cmd &`` in a script) or a
    caller's handler."""
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)


def take_sigint(handler: Callable) -> bool:
    """Install ``handler`` for SIGINT when the run owns it; returns whether it did."""
    if not owns_sigint():
        return False
    signal.signal(signal.SIGINT, handler)
    return True


def give_back_sigint(taken: bool) -> None:
    """Put Python's default SIGINT handler back after :func:`take_sigint` returned ``taken``."""
    if taken:
        signal.signal(signal.SIGINT, signal.default_int_handler)
