"""Held tasks: which child a process runs in place instead of sending.

The newest task a process submits may be held back, not sent, for
``tuning.HOLD_LIMIT`` seconds: if the process then waits on it (it usually
waits on that very task), it runs it itself, as a direct call, with no round
trip and no core idle. A held task is sent as soon as another is submitted,
when the process waits on something else, or when ``HOLD_LIMIT`` has passed
(the ticker runs ``job``), so siblings still run in parallel elsewhere.

Which tasks may be held is the role's rule (``may_hold``): a worker holds
the children of the task it runs, on its serving thread; the origin, on a
run local to one machine, holds what its main thread submits (see
origin.py). Only the thread that submitted a held task runs it: it runs on
that thread's stack.

Lock order: the hold lock, then the outbox's lock (a held task's SUBMIT is
queued before it stops being held, both under the hold lock, so a thread
that finds nothing held finds its SUBMIT queued ahead of whatever it sends).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable, NamedTuple

from . import transport, tuning
from .protocol import Flags, TaskState

if TYPE_CHECKING:
    from .future import Future
    from .ticker import Ticker


class Held(NamedTuple):
    """A task this process holds back instead of sending."""

    future: Future
    frames: list
    flags: Flags
    since: float   # monotonic time it was held
    thread: int    # the thread that submitted it, the only one to run it


def never(chunk: bool) -> bool:
    return False


class Holder:
    """The one task a process holds back, if any."""

    def __init__(self, send: Callable[[Held], None], run: Callable[[Held], None],
                 ticker: Ticker, may_hold: Callable[[bool], bool] = never):
        self._send = send        # queue a held task's SUBMIT
        self._run = run          # run a held task here and settle its future
        self._ticker = ticker
        self.may_hold = may_hold  # whether a task submitted now may be held
        self.held: Held | None = None
        self._lock = threading.Lock()

    def hold(self, future: Future, frames: list, flags: Flags) -> None:
        """Hold this task; the one held before it goes now."""
        now = self._ticker.active_at = time.monotonic()
        with self._lock:
            previous = self.held
            self.held = Held(future, frames, flags, now, threading.get_ident())
            if previous is not None:
                self._send(previous)
        if previous is None:
            self._ticker.wake_by(now + tuning.HOLD_LIMIT)

    def take(self, wanted: Callable[[Held], bool] = lambda held: True,
             send: bool = False) -> Held | None:
        """Stop holding the held task if ``wanted(held)``; return it, or with
        ``send`` queue its SUBMIT. Both under the hold lock, the SUBMIT
        queued before the task stops being held."""
        with self._lock:
            held = self.held
            if held is None or not wanted(held):
                return None
            if send:
                with transport.stop_signals_held():  # sent and no longer held, or neither
                    self._send(held)
                    self.held = None
            else:
                self.held = None
            return held

    def send_held(self) -> None:
        """Send the held task, whoever's it is."""
        if self.held is not None:  # (checked again under the lock)
            self.take(send=True)

    def run_mine(self) -> None:
        """Run the held task here if this thread submitted it (a worker
        about to wait runs its child rather than idle)."""
        me = threading.get_ident()
        held = self.take(lambda held: held.thread == me)
        if held is not None:
            self._run(held)

    def run_if_held(self, future: Future) -> None:
        """Run ``future``'s task here if it is the one held back, by this
        thread (another thread's held task is that thread's to run)."""
        held = self.held
        if held is None or held.future is not future:
            return  # (a future is held only as it is submitted: never later)
        me = threading.get_ident()
        held = self.take(lambda held: held.future is future and held.thread == me)
        if held is not None:
            self._run(held)

    def probe(self, tid: int, cancel: bool) -> TaskState | None:
        """Where task ``tid`` stands if it is held (pending; with ``cancel``,
        cancelled here); None if it is not held."""
        with self._lock:  # (a held task is sent under this lock)
            held = self.held
            if held is None or held.future._tid != tid:
                return None
            if not cancel:
                return TaskState.PENDING
            self.held = None
            return TaskState.CANCELLED

    def job(self, now: float) -> float | None:
        """The ticker's job: send a task held for ``HOLD_LIMIT``."""
        self.take(lambda held: now - held.since >= tuning.HOLD_LIMIT, send=True)
        held = self.held
        return None if held is None else held.since + tuning.HOLD_LIMIT - now
