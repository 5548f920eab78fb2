"""Ctrl-C and SIGTERM as one exception that every verb handles the same way.

    with interrupts_raise():                  # cli.main: SIGTERM raises Interrupted, like Ctrl-C
        with on_interrupt(lambda: f"{n} files in {out} are complete"):
            work()

`Interrupted` is a KeyboardInterrupt (so `except Exception` never swallows it and every
`finally` / `atomic_write` clean-up runs) that remembers which signal stopped the run and,
once a verb has said so, what was kept. The CLI's error boundary prints it as one line and
exits 128 + the signal number (130 for SIGINT, 143 for SIGTERM). A verb that leaves partial
work behind on purpose (training's checkpoint) raises its own Interrupted with that line.

An exception raised where Python cannot pass it on - a finalizer (`__del__`, a weakref or GC
callback), where it prints "Exception ignored in ..." and goes on - or caught by a library's
broad `except BaseException`, is lost, and the run finishes as if no signal had come. CI saw
that once: an export sent SIGINT while tracing (torch.export runs many finalizers) wrote its
engine and exited 0. So the handlers also record the signal, and a verb calls
`raise_if_interrupted()` before it commits its result (the exporter, before moving the engine
into place), whichever way the exception was lost.
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


# Signals received inside `interrupts_raise()` (cleared on entering and leaving it).
_received: list[int] = []


def _raise_interrupted(signum, frame):
    _received.append(int(signum))
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGTERM raises Interrupted(SIGTERM) where the program is, and Ctrl-C Interrupted(SIGINT) (a
    KeyboardInterrupt, as Python's own handler raises); both are recorded for
    `raise_if_interrupted`. A SIGINT that is ignored (a background job) stays ignored.

    Main thread only (signal handlers cannot be set elsewhere); the previous handlers are restored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupted)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        old[signal.SIGINT] = signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        _received.clear()


def raise_if_interrupted() -> None:
    """Raise Interrupted for a signal received inside `interrupts_raise()` whose exception was lost
    on the way (see the module doc); nothing otherwise. Call it right before committing a result."""
    if _received:
        raise Interrupted(_received[-1])


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


__all__ = ["Interrupted", "as_interrupted", "interrupts_raise", "on_interrupt", "raise_if_interrupted"]
