"""A client's connection to the broker: its sockets, its handler table, and
the drive loop that reads them.

One thread at a time drives the connection (``block_until``, ``poll``): it
reads every message that has arrived and gives each to its handler. Whoever
waits drives, so the origin needs no I/O thread and a worker serves new
tasks while one of its tasks waits on its own children (nested futures).
Other threads that wait at the same moment sleep on a condition until the
driving thread has read more.

A wait does more than read, by the role's rules, which the role gives as
plain functions (``before_block``, ``on_wait``, ``run_queued``): a worker
about to wait runs its held child instead, tells the broker it waits, and
runs tasks that came in while it waits; the origin sends what it holds.

Sockets: ``sock`` (HELLO, and every message the broker sends this client
but those for the heartbeat's own socket: NOTICE, and SHUTDOWN once more),
read by the driving thread only; ``tx`` (everything else this client sends),
written under the outbox's lock by any thread. A ZeroMQ socket must never be
used by two threads at once.

Lock order (a thread that holds one lock may take only those below it):

    drive lock          the driving thread's, for as long as it reads and handles
    hold lock           holding.Holder: the task held back
    prefetch lock       worker.Serving: the prefetch told to the broker
    outbox lock         outbox.Outbox: batches, and every send on ``tx``
    futures condition   every Future's (shared): settling, waiters

``read_more`` (a condition) is taken last: nothing is taken while it is
held (a nested wait, inside a task that runs under the drive lock,
notifies it with the drive lock held).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import zmq

from . import protocol, transport, tuning
from .outbox import Outbox
from .protocol import Message, Msg, ProtocolError
from .ticker import Ticker

log = logging.getLogger("scoop_rt")


def _nothing() -> None:
    pass


def _none_queued() -> bool:
    return False


class Connection:
    def __init__(self, ctx: zmq.Context, endpoint: str, keys: dict | None,
                 identity: bytes, name: str, ticker: Ticker):
        self.name = name
        self.sock = transport.connect_dealer(ctx, endpoint, keys, identity)
        self.tx = transport.connect_dealer(ctx, endpoint, keys,
                                           protocol.sending_identity(identity))
        self.outbox = Outbox(self._send, ticker)
        self.handlers: dict[Msg, Callable[[Message], None]] = {}
        # The role's rules for a wait (see the module's text).
        self.before_block: Callable[[], None] = _nothing
        self.on_wait: Callable[[bool], None] | None = None
        self.run_queued: Callable[[], bool] = _none_queued
        # A second source of messages (the origin's socket for outcomes
        # workers send straight to it), read before the broker's.
        self._inbox: transport.OutcomesInbox | None = None
        self._inbox_handlers: dict[Msg, Callable[[Message], None]] = {}
        self._poller: zmq.Poller | None = None
        self._drive_lock = threading.RLock()
        self._read_more = threading.Condition()

    def _send(self, frames: list) -> None:
        transport.send_message(self.tx, frames)

    def add_inbox(self, inbox: transport.OutcomesInbox,
                  handlers: dict[Msg, Callable[[Message], None]]) -> None:
        self._inbox = inbox
        self._inbox_handlers = handlers
        self._poller = zmq.Poller()
        self._poller.register(inbox.fileno(), zmq.POLLIN)
        self._poller.register(self.sock, zmq.POLLIN)

    def close(self) -> None:
        self.tx.close(linger=1000)
        self.sock.close(linger=0)
        if self._inbox is not None:
            self._inbox.close()

    # -- driving --------------------------------------------------------------

    def block_until(self, condition: Callable[[], bool],
                    timeout: float | None) -> bool:
        """Read and handle messages until ``condition()`` or the timeout.

        Returns whether the condition holds. Never raises TimeoutError itself:
        the caller decides what a timeout means.
        """
        if condition():
            return True
        self.before_block()
        if condition():
            return True
        self.outbox.flush()
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        on_wait = self.on_wait
        if on_wait is not None:
            on_wait(True)
        try:
            while not condition():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                slice_ = tuning.POLL_SLICE if left is None else min(left, tuning.POLL_SLICE)
                if self._drive_lock.acquire(blocking=False):
                    try:
                        if not self.run_queued():
                            self._read(slice_)
                    finally:
                        self._drive_lock.release()
                    with self._read_more:
                        self._read_more.notify_all()
                else:
                    with self._read_more:
                        self._read_more.wait(slice_)
            return True
        finally:
            if on_wait is not None:
                on_wait(False)

    def poll(self) -> None:
        """Handle whatever has arrived, without waiting."""
        self.outbox.flush()
        if self._drive_lock.acquire(blocking=False):
            try:
                self._read(0)
            finally:
                self._drive_lock.release()

    def _read(self, timeout: float) -> None:
        if self._poller is None:
            if self.sock.poll(int(timeout * 1000)):
                self._handle_all()
            return
        # Outcomes from workers first: one that arrived before the broker
        # gave up on its task (its worker lost) is the task's outcome.
        ready = dict(self._poller.poll(int(timeout * 1000)))
        if self._inbox is not None and self._inbox.fileno() in ready:
            for frames in self._inbox.read():
                self._handle(frames, self._inbox_handlers)
        if self.sock in ready:
            self._handle_all()

    def _handle_all(self) -> None:
        """Handle every message waiting on the broker's socket."""
        while True:
            frames = transport.recv_message(self.sock)
            if frames is None:
                return
            self._handle(frames, self.handlers)

    def _handle(self, frames: list, handlers: dict) -> None:
        try:
            msg = protocol.decode(frames)
            handler = handlers.get(msg.type)
            if handler is None:
                raise ProtocolError(f"{self.name} got {msg.type.name}")
        except ProtocolError as exc:
            log.warning("%s dropped a message: %s", self.name, exc)
            return
        handler(msg)
