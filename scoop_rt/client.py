"""What the origin and the workers share: a client of the run that submits
tasks, settles their futures and keeps the shared constants.

A ``Client`` is composed of pieces, each in its own module: the connection
and its drive loop (connection.py), the outbox and its batching rules
(outbox.py), the task held back (holding.py), the heartbeat and the ticker
that runs timed jobs (heartbeat.py, ticker.py), the futures (future.py) and
the constants (constants.py). A role (origin.py, worker.py) makes a client
and adds what it needs: its rules for holding and for waits, its handlers.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable

import zmq

from . import bootstrap, chunks as _chunks, protocol, serialization, tasks, transport, tuning
from .bootstrap import ClientBoot
from .connection import Connection
from .constants import Constants
from .exits import exit_now
from .future import Future
from .heartbeat import Heartbeat
from .holding import Held, Holder
from .protocol import Flags, Msg, Role, TaskState
from .ticker import Ticker

log = logging.getLogger("scoop_rt")


class Client:
    """One process's part of the run: its connection, futures, constants."""

    def __init__(self, boot: ClientBoot, role: Role, where: str):
        self.config = boot.config
        self.role = role
        self.name: str = boot.name
        self.size: int = boot.size
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.where = where.format(name=self.name, host=self.host, pid=self.pid)
        self.keys: dict | None = boot.keys or None
        self.endpoint: str = boot.endpoint
        self.identity = f"{self.name}:{self.pid}:{os.urandom(4).hex()}".encode()
        self.ctx = zmq.Context()
        self.ticker = Ticker()
        self.conn = Connection(self.ctx, self.endpoint, self.keys, self.identity,
                               self.name, self.ticker)
        self.outbox = self.conn.outbox
        self.holder = Holder(self._send_held, self._run_held, self.ticker)
        # The held task's job first: the SUBMIT it may queue is then sent, or
        # timed, by the outbox's job in the same round.
        self.ticker.add(self.holder.job)
        self.ticker.add(self.outbox.job)
        self.constants = Constants(self.conn)
        self.set_const = self.constants.set_const
        self.has_const = self.constants.has_const
        self.get_const = self.constants.get_const
        self.chunk_flags = Flags.CHUNK  # a map's chunks, as submitted here
        self.check_may_submit: Callable[[], None] = lambda: None  # the role's rule
        self.script_error: str | None = None  # why a worker lacks the script
        self.closing: list[Callable[[], None]] = []  # the role's, run by close()
        self.depth = 0  # tasks running here, one inside another
        self.welcomed = False
        self.closed = False
        self._tids = itertools.count(1)
        self._futures: dict[int, Future] = {}
        self.futures_condition = threading.Condition()
        self._states: dict[int, int] = {}
        self._last_submit = 0.0
        self.conn.handlers.update({
            Msg.RESULT: self.on_result, Msg.STATE: self.on_state, Msg.WELCOME: self.on_welcome,
            Msg.REFUSED: self.on_refused, Msg.SHUTDOWN: self.on_shutdown})
        self.heartbeat = Heartbeat(
            self.ctx, self.endpoint, self.keys, self.identity, self.config,
            self.ticker, lambda why: self.on_run_over(why), lambda why: self.leave(why))
        self.block_until = self.conn.block_until
        self.poll = self.conn.poll

    # -- life cycle -----------------------------------------------------------

    def start(self) -> None:
        """Introduce this process to the broker, start the heartbeat, and wait
        for the welcome: then the broker knows this client before anything
        else it sends arrives (on another socket)."""
        from . import __version__
        self.conn.sock.send_multipart(protocol.encode(
            Msg.HELLO, self.role.value, self.name, self.host, self.pid,
            __version__, "{}.{}".format(*sys.version_info[:2])))
        with transport.stop_signals_held():  # the thread keeps them blocked
            self.heartbeat.start()
        bootstrap.warm_allocator()  # while the welcome is on its way
        self.block_until(lambda: self.welcomed, None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.heartbeat.is_alive():
            self.heartbeat.stop()
        for close in self.closing:
            close()
        self.conn.close()
        self.ctx.term()

    def on_run_over(self, reason: str) -> None:
        """The broker is gone while this process still runs: leave."""
        log.error("%s: lost the run (%s); leaving", self.name, reason)
        exit_now(1)

    def leave(self, reason: str) -> None:
        """The broker ended the run (``SHUTDOWN``): leave at once."""
        exit_now(0)

    def send(self, msg_type: Msg, *fields: Any, payload: Sequence = ()) -> None:
        self.outbox.send(msg_type, *fields, payload=payload)

    # -- submitting -------------------------------------------------------------

    def submit_call(self, fn: Callable, args: Sequence, kwargs: dict,
                    flags: Flags = Flags.NONE) -> Future:
        self.check_may_submit()  # before pickling writes any file
        frames = serialization.dump_call(fn, args, kwargs)
        return self.submit(frames, serialization.describe(fn), False, flags)

    def submit_chunk(self, fn: Callable, calls: Sequence,
                     star: bool = False) -> Future:
        """A future whose result is ``(values, error)`` for ``fn`` over
        ``calls`` (items, or argument tuples with ``star``): the values up to
        the first error, and that error or None."""
        self.check_may_submit()
        frames = serialization.dump_chunk(fn, calls, star)
        return self.submit(frames, serialization.describe(fn), True, self.chunk_flags)

    def submit_chunks(self, fn: Callable, chunks: Sequence, star: bool = False) -> list:
        return _chunks.submit_chunks(self, fn, chunks, star)

    def submit(self, frames: list, label: str, chunk: bool, flags: Flags) -> Future:
        future = self.new_future(label, chunk)
        if self.holder.may_hold(chunk):
            self.holder.hold(future, frames, flags)
        else:
            self.send_submit(future._tid, flags, frames)
        return future

    def mark_submitted(self) -> None:
        self._last_submit = time.monotonic()

    def send_submit(self, tid: int, flags: Flags, frames: list) -> None:
        now = time.monotonic()
        # Alone: no more of ours in flight than there are workers (so that
        # each can start on one at once), or no submit came lately.
        quiet = (len(self._futures) <= max(1, self.size)
                 or now - self._last_submit > tuning.SUBMIT_GAP)
        self._last_submit = now
        self.outbox.queue(Msg.SUBMIT, (tid, int(flags), frames), at_once=quiet)

    def _send_held(self, held: Held) -> None:
        self.send_submit(held.future._tid, held.flags, held.frames)

    def new_future(self, label: str, chunk: bool) -> Future:
        tid = next(self._tids)
        future = Future(self, tid, label, chunk)
        self._futures[tid] = future
        return future

    def forget(self, tid: int) -> None:
        self._futures.pop(tid, None)

    def pending(self) -> bool:
        """Whether any future submitted from this process is unfinished."""
        return bool(self._futures)

    def probe(self, tid: int, cancel: bool) -> TaskState:
        """Ask the broker where task ``tid`` stands (and cancel it if queued).

        A task still held back here is pending, and cancelled here."""
        state = self.holder.probe(tid, cancel)
        if state is not None:
            return state
        self._states.pop(tid, None)
        self.send(Msg.PROBE, tid, int(cancel))
        self.block_until(lambda: tid in self._states, None)
        return TaskState(self._states.pop(tid))

    # -- running here -----------------------------------------------------------

    def run_here(self, frames: list) -> tuple:
        """Run a task here, one level deeper; send what it left held."""
        self.depth += 1
        try:
            return tasks.execute(frames, self.where, self.script_error)
        finally:
            self.depth -= 1
            self.holder.send_held()

    def _run_held(self, held: Held) -> None:
        """Run a held task here and settle its future."""
        status, outcome = self.run_here(held.frames)
        future = held.future
        if self._futures.pop(future._tid, None) is not None:
            tasks.settle(future, future._chunk, status, outcome)

    # -- handlers ---------------------------------------------------------------

    def on_result(self, msg: protocol.Message) -> None:
        self.settle_all(protocol.split_batch(msg))

    def settle_all(self, outcomes: list) -> None:
        """Give each ``(tid, status, frames)`` to its future, if still wanted."""
        for tid, status, frames in outcomes:
            future = self._futures.pop(tid, None)
            if future is None or future._settled():
                # Cancelled here, or a stale copy of a re-run task.
                serialization.release(frames)
                continue
            tasks.settle(future, future._chunk, status, frames)

    def on_state(self, msg: protocol.Message) -> None:
        self._states[msg.fields.tid] = msg.fields.state

    def on_welcome(self, msg: protocol.Message) -> None:
        self.size = msg.fields.size
        self.welcomed = True

    def on_refused(self, msg: protocol.Message) -> None:
        log.error("%s", msg.fields.reason)
        exit_now(2)

    def on_shutdown(self, msg: protocol.Message) -> None:
        self.leave(msg.fields.reason)

