"""Ctrl-C and SIGTERM as one exception that every verb handles the same way.

    with interrupts_raise():                  # cli.main: SIGTERM raises Interrupted, like Ctrl-C
        with on_interrupt(lambda: f"{n} files in {out} are complete"):
            work()

`Interrupted` is a KeyboardInterrupt (so `except Exception` never swallows it and every
`finally` / `atomic_write` clean-up runs) that remembers which signal stopped the run and,
once a verb has said so, what was kept. The CLI's error boundary prints it as one line and
exits 128 + the signal number (130 for SIGINT, 143 for SIGTERM). A verb that leaves partial
work behind on purpose (training's checkpoint) raises its own Interrupted with that line.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `kept` says what stays on disk (empty: not said yet)."""

    def __init__(self, signum: int = signal.SIGINT, kept: str = ""):
        super().__init__(signum, kept)
        self.signum = int(signum)
        self.kept = kept

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def line(self) -> str:
        """The one line the CLI prints."""
        name = NAMES.get(self.signum, signal.Signals(self.signum).name)
        return f"interrupted ({name}): {self.kept or 'no partial file left'}"


def as_interrupted(exc: BaseException) -> Interrupted:
    """A plain KeyboardInterrupt (Python's own Ctrl-C) as an Interrupted for SIGINT."""
    return exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGTERM raises Interrupted(SIGTERM) where the program is, as Ctrl-C raises KeyboardInterrupt.

    Main thread only (signal handlers cannot be set elsewhere); the previous handler is restored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def on_interrupt(describe: Callable[[], str]) -> Iterator[None]:
    """Say what was kept when an interrupt passes through: `describe()` -> the line's tail."""
    try:
        yield
    except KeyboardInterrupt as exc:
        interrupted = as_interrupted(exc)
        if not interrupted.kept:
            interrupted.kept = describe()
        if interrupted is exc:
            raise
        raise interrupted from None


__all__ = ["Interrupted", "as_interrupted", "interrupts_raise", "on_interrupt"]
