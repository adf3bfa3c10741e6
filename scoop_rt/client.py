"""What the origin and the workers share: a connection to the broker that
submits tasks, resolves their futures, and keeps the shared constants.

One thread at a time drives the connection (``drive``): it reads every
message that has arrived and handles it. Whoever waits on a future drives, so
the origin needs no I/O thread and a worker serves new tasks while one of its
tasks waits on its own children (nested futures). Other threads that wait at
the same moment sleep on a condition until the driving thread has read more.

A small heartbeat thread with a socket of its own tells the broker that this
process lives, and ends the process when the broker stops answering, so no
process outlives its run.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Callable, NamedTuple

import zmq

from . import protocol, serialization, shm, tasks, transport
from .config import Config
from .exits import exit_now
from .protocol import Flags, Msg, ProtocolError, Role, TaskState

log = logging.getLogger("scoop_rt")

_POLL_SLICE = 0.5  # longest single wait on the socket, so flags are seen
HOLD_LIMIT = 0.005  # longest a worker keeps a child to itself (see worker.py)
# Tasks (and a worker's outcomes) travel in batches: up to BATCH_MAX of them,
# or BATCH_BYTES of payload, in one message. A batch is sent when full, when
# this process is about to wait, or BATCH_DELAY seconds after its first entry
# (by the heartbeat thread). A submit that comes after SUBMIT_GAP seconds
# without one, or while no other future of this process is pending, goes at
# once, so a lone task never waits for company.
BATCH_MAX = 64
BATCH_BYTES = 1 << 20
BATCH_DELAY = 0.002
# The longest the origin keeps to itself that it has the outcomes workers
# sent it straight (RECEIVED): the broker needs it only to forget their tasks.
RECEIVED_WAIT = 0.05
# A map's chunks that took this long to pickle leave without the rest.
PICKLING_WAIT = 0.001
SUBMIT_GAP = 0.001
# While a process holds or batches tasks, its heartbeat thread looks every
# TICK seconds (until it has done neither for ACTIVE_SPAN), so that holding
# and batching need not wake it each time; the first after a quiet spell does.
TICK = 0.002
ACTIVE_SPAN = 0.1


class Held(NamedTuple):
    """A task this process holds back instead of sending (see may_hold)."""

    future: Future
    frames: list
    flags: Flags
    since: float   # monotonic time it was held
    thread: int    # the thread that submitted it, the only one to run it


class Future(cf.Future):
    """A PEP 3148 future whose waits drive the connection to the broker."""

    def __init__(self, client: Client, tid: int, label: str,
                 chunk: bool = False):
        # concurrent.futures.Future's own state, but with the client's one
        # condition instead of a new one per future (a third of what creating
        # a future cost). Waits here drive the client rather than sleep on the
        # condition, so sharing it wakes no one needlessly.
        self._condition = client.futures_condition
        self._state = cf._base.PENDING
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks: list = []
        self._client = client
        self._tid = tid
        self._label = label
        self._chunk = chunk

    def __repr__(self) -> str:
        return f"<Future {self._label} #{self._tid} {self._state.lower()}>"

    def _settled(self) -> bool:
        return self._state in (cf._base.FINISHED, cf._base.CANCELLED,
                               cf._base.CANCELLED_AND_NOTIFIED)

    def done(self) -> bool:
        if not self._settled():
            self._client.poll()
        return self._settled()

    def result(self, timeout: float | None = None) -> Any:
        if timeout is None:
            self._client.run_if_held(self)
        if self._state != cf._base.FINISHED:
            self._client.block_until(self._settled, timeout)
        elif self._exception is None:
            return self._result  # (FINISHED is final: no lock needed to read)
        return super().result(timeout=0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if timeout is None:
            self._client.run_if_held(self)
        self._client.block_until(self._settled, timeout)
        return super().exception(timeout=0)

    def running(self) -> bool:
        if self._state == cf._base.PENDING:
            self._update(self._client.probe(self._tid, cancel=False))
        return super().running()

    def cancel(self) -> bool:
        if self._state == cf._base.PENDING:
            self._update(self._client.probe(self._tid, cancel=True))
        return self._state in (cf._base.CANCELLED, cf._base.CANCELLED_AND_NOTIFIED)

    def _update(self, state: TaskState) -> None:
        # Another thread may settle or cancel the future meanwhile: each step
        # checks, under the condition, the state it changes.
        if state == TaskState.CANCELLED:
            self._client.forget(self._tid)
            super().cancel()  # (not if its result came first)
            wanted = cf._base.CANCELLED  # no executor will look: tell waiters now
        elif state == TaskState.RUNNING:
            wanted = cf._base.PENDING
        else:
            return
        with self._condition:
            if self._state == wanted:
                self.set_running_or_notify_cancel()


class Heartbeat(threading.Thread):
    """Pings the broker from its own socket; ends the process when the broker
    is gone, or has ended the run while the main thread is too busy to leave;
    sends batches that have waited ``BATCH_DELAY``, a child that a busy
    worker has held back for ``HOLD_LIMIT``, and the origin's RECEIVED that
    has waited ``RECEIVED_WAIT`` when it wakes.

    ``stop()`` wakes it at once through an in-process socket, so closing a
    client never waits out a heartbeat interval.
    """

    def __init__(self, client: Client):
        super().__init__(name="scoop_rt-heartbeat", daemon=True)
        self.client = client
        self.stopped = threading.Event()
        self._wake_address = f"inproc://scoop_rt-heartbeat-{id(self)}"
        self._wake = client.ctx.socket(zmq.PAIR)
        self._wake.bind(self._wake_address)
        self.wakes_at = float("inf")  # when its current sleep ends

    def stop(self) -> None:
        self.stopped.set()
        self.nudge()
        self.join(timeout=1.0)
        self._wake.close(linger=0)

    def wake_by(self, deadline: float) -> None:
        """Make sure the thread looks at the client by ``deadline``
        (monotonic): wake it only if it would sleep past that, so a process
        that holds and batches often wakes it seldom."""
        if self.wakes_at > deadline and threading.current_thread() is not self:
            self.nudge()  # (the thread itself looks again before it sleeps)

    def nudge(self) -> None:
        """Wake the thread to look at the client again (from the main thread).

        Never blocks: a thread that has just left (and closed its end) needs
        no waking."""
        try:
            self._wake.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass

    def run(self) -> None:
        c = self.client
        interval = c.config.heartbeat_interval
        sock = transport.connect_heartbeat(c.ctx, c.endpoint, c.keys, c.identity)
        wake = c.ctx.socket(zmq.PAIR)
        wake.connect(self._wake_address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        ping = protocol.encode(Msg.PING)
        last_heard = next_ping = time.monotonic()
        try:
            while not self.stopped.is_set():
                now = time.monotonic()
                if now >= next_ping:
                    silent = now - last_heard
                    if silent > interval * c.config.heartbeat_misses:
                        c.on_run_over(
                            f"the broker has not answered for {silent:.0f} s")
                    sock.send_multipart(ping)
                    next_ping = now + interval
                timeout = next_ping - now
                due = c.due_in()
                if due is not None:
                    timeout = min(timeout, max(0.0, due))
                if now - c.active_at < ACTIVE_SPAN:
                    timeout = min(timeout, TICK)
                # Set after due_in() looked: whoever holds or batches after
                # that sees either this deadline or "awake" (infinity, so it
                # nudges), never a stale one.
                self.wakes_at = time.monotonic() + timeout
                # In whole milliseconds, rounded up: poll(0.4) would be poll(0),
                # and the thread would spin until the deadline.
                events = dict(poller.poll(math.ceil(timeout * 1000)))
                self.wakes_at = float("inf")
                if self.stopped.is_set():
                    return
                if wake in events:
                    wake.recv()
                if sock in events:
                    last_heard = time.monotonic()
                    self.on_message(sock.recv_multipart())
                c.send_due()
        finally:
            try:
                self._drain(sock)
            finally:
                sock.close(linger=0)
                wake.close(linger=0)

    def _drain(self, sock: zmq.Socket) -> None:
        """Log the notices that have arrived, before the process leaves."""
        while sock.poll(0):
            self.on_message(sock.recv_multipart())

    def on_message(self, frames: list) -> None:
        try:
            msg = protocol.decode(frames)
        except ProtocolError as exc:
            log.warning("dropped a malformed message: %s", exc)
            return
        if msg.type == Msg.NOTICE:
            log.warning("%s", msg.fields.text)
        elif msg.type == Msg.SHUTDOWN:
            # The main thread leaves by itself unless a task keeps it busy:
            # then leave from here.
            if not self.stopped.wait(self.client.config.shutdown_grace / 2):
                self.client.leave(msg.fields.reason)


def _warm_allocator(objects: int = 40_000) -> None:
    """Make and drop ``objects`` small objects and a list of them: Python
    keeps one empty arena of its small-object allocator for the next ones
    (about 1 MiB, mapped and touched), and glibc's thresholds for large
    blocks rise, so the first tasks and results do not each pay the
    kernel's page faults (0.3 ms of a first map of 20,000 calls here)."""
    data = list(range(1 << 20, (1 << 20) + objects))
    del data


class Client:
    """One process's connection to the run: a socket, its futures, constants."""

    role: Role = Role.WORKER

    def __init__(self, boot: dict):
        self.config = Config.from_dict(boot["config"])
        self.endpoint: str = boot["endpoint"]
        self.keys: dict | None = boot.get("keys") or None
        self.name: str = boot["name"]
        self.size: int = boot["size"]
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.identity = f"{self.name}:{os.getpid()}:{os.urandom(4).hex()}".encode()
        self.ctx = zmq.Context()
        # Received on by the driving thread only; sent on by start() only.
        self.sock = transport.connect_dealer(self.ctx, self.endpoint, self.keys,
                                             self.identity)
        # Sent on by any thread, under the lock (a ZeroMQ socket must never
        # be used by two threads at once).
        self.tx = transport.connect_dealer(self.ctx, self.endpoint, self.keys,
                                           protocol.sending_identity(self.identity))
        self._send_lock = threading.Lock()
        # On a run local to one machine, where a map's outcomes go straight
        # to the origin (DIRECT, see protocol): the origin binds a socket
        # there, which it reads with its main one; a worker connects to it
        # when the first task whose outcome goes there reaches it.
        self.outcomes_endpoint: str | None = boot.get("outcomes")
        self._outcomes_in: transport.OutcomesInbox | None = None
        self._outcomes_out: transport.OutcomesOutbox | None = None
        self._poller: zmq.Poller | None = None
        self.chunk_flags = Flags.CHUNK  # a map's chunks, as submitted here
        # The origin's tids whose DIRECT outcomes came in and that the broker
        # has not been told of (RECEIVED), since when (under the send lock).
        self._received: list = []
        self._received_since: float | None = None
        # Entries waiting to go as one message, by type (under the send lock).
        self._batches: dict[Msg, list] = {Msg.SUBMIT: [], Msg.RESULT: []}
        self._batch_bytes = 0
        self._batch_since: float | None = None
        self._last_submit = 0.0
        self.active_at = 0.0  # when this process last held or batched a task
        # A task held back by this process, not sent yet (see may_hold).
        self._held: Held | None = None
        self._hold_lock = threading.Lock()
        # Tasks running here, one inside another (held ones run on a wait).
        self._depth = 0
        self.script_error: str | None = None  # why a worker lacks the script
        self.welcomed = False
        self._drive_lock = threading.RLock()
        self._read_more = threading.Condition()
        self._tids = itertools.count(1)
        self._futures: dict[int, Future] = {}
        self.futures_condition = threading.Condition()
        self._states: dict[int, int] = {}
        self._const_frames: dict[str, list] = {}
        self.constants: dict[str, Any] = {}
        self.closed = False
        self._handlers: dict[Msg, Callable] = {
            Msg.RESULT: self.on_result,
            Msg.CONST: self.on_const,
            Msg.STATE: self.on_state,
            Msg.WELCOME: self.on_welcome,
            Msg.REFUSED: self.on_refused,
            Msg.SHUTDOWN: self.on_shutdown,
        }
        self._direct_handlers = {Msg.RESULT: self.on_direct_result}
        self.heartbeat = Heartbeat(self)

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Introduce this process to the broker, start the heartbeat, and wait
        for the welcome: then the broker knows this client before anything
        else it sends arrives (on another socket)."""
        self.sock.send_multipart(protocol.encode(
            Msg.HELLO, self.role.value, self.name, self.host, os.getpid(),
            _version(), "{}.{}".format(*sys.version_info[:2])))
        with transport.stop_signals_held():  # the thread keeps them blocked
            self.heartbeat.start()
        _warm_allocator()  # while the welcome is on its way
        self.block_until(lambda: self.welcomed, None)

    def open_outcomes(self) -> None:
        """Bind the socket the workers send a map's outcomes to (the
        origin, on a run local to one machine): from now on its maps' chunks
        are marked DIRECT, and waits read both sockets. If it cannot be
        bound, outcomes come through the broker, as on a cluster."""
        try:
            inbox = transport.OutcomesInbox(self.outcomes_endpoint, self.keys)  # type: ignore[arg-type]
        except OSError as exc:
            log.debug("%s: outcomes come through the broker (%s)", self.name, str(exc))
            return
        self._outcomes_in = inbox
        self._poller = zmq.Poller()
        self._poller.register(inbox.fileno(), zmq.POLLIN)
        self._poller.register(self.sock, zmq.POLLIN)
        self.chunk_flags = Flags.CHUNK | Flags.DIRECT

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.heartbeat.is_alive():
            self.heartbeat.stop()
        self.tx.close(linger=1000)
        self.sock.close(linger=0)
        if self._outcomes_out is not None:
            self._outcomes_out.close()
        if self._outcomes_in is not None:
            self._outcomes_in.close()
        self.ctx.term()

    def on_run_over(self, reason: str) -> None:
        """The broker is gone while this process still runs: leave."""
        log.error("%s: lost the run (%s); leaving", self.name, reason)
        exit_now(1)

    def leave(self, reason: str) -> None:
        """The broker ended the run (``SHUTDOWN``): leave at once."""
        exit_now(0)

    # -- sending ------------------------------------------------------------

    def send(self, msg_type: Msg, *fields: Any, payload: Sequence = ()) -> None:
        """Send one message, after the batches waiting to go (order kept)."""
        self._send_frames(protocol.encode(msg_type, *fields, payload=payload))

    def _send_frames(self, frames: list) -> None:
        with self._send_lock:
            self._flush_locked()
            transport.send_message(self.tx, frames)

    def queue(self, msg_type: Msg, entry: tuple, at_once: bool = False) -> None:
        """Add ``(tid, flags or status, frames)`` to the batch of ``msg_type``.

        With ``at_once``, a batch that would hold only this entry is sent now.
        """
        nudge = 0.0  # by when the heartbeat thread must look, if it must
        self.active_at = time.monotonic()
        with self._send_lock:
            if self._batch_since is None:
                if at_once:
                    transport.send_message(
                        self.tx, protocol.encode_batch(msg_type, [entry]))
                    self._flush_locked()  # (RECEIVED, if any, goes along)
                    return
                self._batch_since = time.monotonic()
                nudge = self._batch_since + BATCH_DELAY
            batch = self._batches[msg_type]
            batch.append(entry)
            self._batch_bytes += _nbytes(entry[2])
            if len(batch) >= BATCH_MAX or self._batch_bytes >= BATCH_BYTES:
                self._flush_locked()
        if nudge:
            self.heartbeat.wake_by(nudge)

    def flush(self) -> None:
        """Send every batch waiting to go."""
        if self._batch_since is not None:
            with self._send_lock:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if self._batch_since is None and not self._received:
            return
        # Stop signals wait until every batch has gone and is forgotten: one
        # raised in between would lose a batch, or send it again next time.
        with transport.stop_signals_held():
            for msg_type, batch in self._batches.items():
                if batch:
                    transport.send_message(self.tx, protocol.encode_batch(msg_type, batch))
                    batch.clear()
            self._batch_bytes = 0
            self._batch_since = None
            if self._received:
                transport.send_message(self.tx, protocol.encode(Msg.RECEIVED, self._received))
                self._received = []
                self._received_since = None

    def due_in(self) -> float | None:
        """Seconds until something waiting must be sent, or None."""
        now = time.monotonic()
        dues = []
        since = self._batch_since
        if since is not None:
            dues.append(since + BATCH_DELAY - now)
        held = self._held
        if held is not None:
            dues.append(held.since + HOLD_LIMIT - now)
        return min(dues) if dues else None

    def send_due(self) -> None:
        """Send what has waited long enough (from the heartbeat thread)."""
        now = time.monotonic()
        self._take_held(lambda held: now - held.since >= HOLD_LIMIT, send=True)
        since = self._batch_since
        if since is not None and time.monotonic() - since >= BATCH_DELAY:
            self.flush()
        since = self._received_since
        if since is not None and time.monotonic() - since >= RECEIVED_WAIT:
            with self._send_lock:
                self._flush_locked()

    def submit_call(self, fn: Callable, args: Sequence, kwargs: dict,
                    flags: Flags = Flags.NONE) -> Future:
        self.check_may_submit()  # before pickling writes any file
        frames = serialization.dump_call(fn, args, kwargs)
        return self._submit(frames, serialization.describe(fn), False, flags)

    def submit_chunk(self, fn: Callable, calls: Sequence,
                     star: bool = False) -> Future:
        """A future whose result is ``(values, error)`` for ``fn`` over
        ``calls`` (items, or argument tuples with ``star``): the values up to
        the first error, and that error or None."""
        self.check_may_submit()
        frames = serialization.dump_chunk(fn, calls, star)
        return self._submit(frames, serialization.describe(fn), True, self.chunk_flags)

    def submit_chunks(self, fn: Callable, chunks: Sequence,
                      star: bool = False) -> list:
        """Futures for several chunks of one map (see ``submit_chunk``), sent
        together, none held back: the broker sees the whole map at once and
        gives each worker its share in one go. Chunks that are slow to pickle
        (large arrays) leave as soon as PICKLING_WAIT has passed, so workers
        start on them while the rest are pickled. Each future owns its chunk's
        shared memory files. A chunk that cannot be pickled raises; those
        before it that have left run, the others are dropped."""
        self.check_may_submit()
        label = serialization.describe(fn)
        futures: list = []
        pickled: list = []
        try:
            since = time.monotonic()
            for calls in chunks:
                frames = serialization.dump_chunk(fn, calls, star)
                pickled.append((frames, serialization.take_task_files()))
                if time.monotonic() - since >= PICKLING_WAIT:
                    futures += self._send_chunks(label, pickled)
                    since = time.monotonic()
            if pickled:
                futures += self._send_chunks(label, pickled)
        except BaseException:
            for frames, _ in pickled:
                shm.release(frames)  # not sent: their files go
            raise
        return futures

    def _send_chunks(self, label: str, pickled: list) -> list:
        """Futures for the pickled chunks ``(frames, files)``, in one SUBMIT."""
        with transport.stop_signals_held():  # every future made is sent
            futures = [shm.unlink_when_done(self._new_future(label, True), files)
                       for _, files in pickled]
            try:
                self.send_held()  # a task held before them goes first
                self._send_frames(protocol.encode_batch(Msg.SUBMIT, [
                    (future._tid, int(self.chunk_flags), frames)
                    for future, (frames, _) in zip(futures, pickled)]))
            except BaseException:
                for future in futures:
                    self.forget(future._tid)  # never sent: nothing to wait for
                raise
            pickled.clear()  # sent: no longer this caller's to release
        self._last_submit = time.monotonic()
        return futures

    def check_may_submit(self) -> None:
        """Raise if this process may not submit now (see WorkerClient)."""

    def _submit(self, frames: list, label: str, chunk: bool,
                flags: Flags) -> Future:
        future = self._new_future(label, chunk)
        if not self.may_hold(chunk):
            self.send_submit(future._tid, flags, frames)
            return future
        now = self.active_at = time.monotonic()
        with self._hold_lock:
            previous = self._held
            self._held = Held(future, frames, flags, now, threading.get_ident())
            if previous is not None:
                self._send_held(previous)
        if previous is None:
            self.heartbeat.wake_by(now + HOLD_LIMIT)
        return future

    # -- held tasks -----------------------------------------------------------
    #
    # The newest task a process submits may be held back for HOLD_LIMIT
    # seconds instead of being sent: if the process then waits on it, it runs
    # it itself, as a direct call, with no round trip. It is sent as soon as
    # another task is submitted, when the process waits on something else, or
    # when HOLD_LIMIT has passed (the heartbeat thread sends it).

    def may_hold(self, chunk: bool) -> bool:
        """Whether a task being submitted now may be held back."""
        return False

    def _take_held(self, wanted: Callable[[Held], bool] = lambda held: True,
                   send: bool = False) -> Held | None:
        """Stop holding the held task if ``wanted(held)``; return it, or with
        ``send`` queue its SUBMIT. Both under the hold lock, the SUBMIT
        queued before the task stops being held: a thread that finds nothing
        held (``probe``, or ``send_held`` without the lock) finds its SUBMIT
        queued ahead of whatever it sends next (lock order: hold, then send)."""
        with self._hold_lock:
            held = self._held
            if held is None or not wanted(held):
                return None
            if send:
                with transport.stop_signals_held():  # sent and no longer held, or neither
                    self._send_held(held)
                    self._held = None
            else:
                self._held = None
            return held

    def _send_held(self, held: Held) -> None:
        self.send_submit(held.future._tid, held.flags, held.frames)

    def send_held(self) -> None:
        if self._held is not None:  # (checked again under the lock)
            self._take_held(send=True)

    def run_held(self, held: Held) -> None:
        """Run a held task here and settle its future."""
        status, outcome = self._run(held.frames)
        future = held.future
        if self._futures.pop(future._tid, None) is not None:
            tasks.settle(future, future._chunk, status, outcome)

    def run_if_held(self, future: Future) -> None:
        """Run ``future``'s task here if it is the one held back, by this
        thread (another thread's held task is that thread's to run)."""
        held = self._held
        if held is None or held.future is not future:
            return  # (a future is held only as it is submitted: never later)
        me = threading.get_ident()
        held = self._take_held(
            lambda held: held.future is future and held.thread == me)
        if held is not None:
            self.run_held(held)

    def _run(self, frames: list) -> tuple:
        """Run a task here, one level deeper; send what it left held."""
        self._depth += 1
        try:
            return tasks.execute(frames, self.where(), self.script_error)
        finally:
            self._depth -= 1
            self.send_held()

    def where(self) -> str:
        """Where this process's tasks run, for their tracebacks."""
        return f"{self.role.value} {self.name} (host {self.host}, pid {self.pid})"

    def send_submit(self, tid: int, flags: Flags, frames: list) -> None:
        now = time.monotonic()
        # Alone: no more of ours in flight than there are workers (so that
        # each can start on one at once), or no submit came lately.
        quiet = (len(self._futures) <= max(1, self.size)
                 or now - self._last_submit > SUBMIT_GAP)
        self._last_submit = now
        self.queue(Msg.SUBMIT, (tid, int(flags), frames), at_once=quiet)

    def _new_future(self, label: str, chunk: bool) -> Future:
        tid = next(self._tids)
        future = Future(self, tid, label, chunk)
        self._futures[tid] = future
        return future

    def forget(self, tid: int) -> None:
        self._futures.pop(tid, None)

    def probe(self, tid: int, cancel: bool) -> TaskState:
        """Ask the broker where task ``tid`` stands (and cancel it if queued).

        A task still held back here is pending, and cancelled here."""
        with self._hold_lock:  # (a held task is sent under this lock)
            held = self._held
            if held is not None and held.future._tid == tid:
                if not cancel:
                    return TaskState.PENDING
                self._held = None
                return TaskState.CANCELLED
        self._states.pop(tid, None)
        self.send(Msg.PROBE, tid, int(cancel))
        self.block_until(lambda: tid in self._states, None)
        return TaskState(self._states.pop(tid))

    def set_const(self, name: str, value: Any) -> None:
        self.constants[name] = value
        self.send(Msg.SETCONST, name, payload=serialization.dumps(value))

    def has_const(self, name: str) -> bool:
        self.poll()
        return name in self.constants or name in self._const_frames

    def pending(self) -> bool:
        """Whether any future submitted from this process is unfinished."""
        return bool(self._futures)

    def get_const(self, name: str, timeout: float | None) -> Any:
        self.block_until(lambda: name in self.constants
                         or name in self._const_frames, timeout)
        if name not in self.constants and name in self._const_frames:
            self.constants[name] = serialization.loads(self._const_frames.pop(name))
        return self.constants.get(name)

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
        self.flush()
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        self.blocking(True)
        try:
            while not condition():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                slice_ = _POLL_SLICE if left is None else min(left, _POLL_SLICE)
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
            self.blocking(False)

    def run_queued(self) -> bool:
        """Run one task that arrived earlier and waits here (workers only);
        whether there was one."""
        return False

    def before_block(self) -> None:
        """Called before a wait blocks: what is held goes (a worker runs a
        held child itself instead)."""
        self.send_held()

    def blocking(self, starts: bool) -> None:
        """Called when a wait begins and ends; the worker tells the broker."""

    def poll(self) -> None:
        """Handle whatever has arrived, without waiting."""
        self.flush()
        if self._drive_lock.acquire(blocking=False):
            try:
                self._read(0)
            finally:
                self._drive_lock.release()

    def _read(self, timeout: float) -> None:
        if self._poller is None:
            if self.sock.poll(timeout * 1000):  # type: ignore[arg-type]
                self._handle_all(self.sock, self._handlers)
            return
        # Outcomes from workers first: one that arrived before the broker
        # gave up on its task (its worker lost) is the task's outcome.
        ready = dict(self._poller.poll(timeout * 1000))  # type: ignore[arg-type]
        if self._outcomes_in.fileno() in ready:  # type: ignore[union-attr]
            for frames in self._outcomes_in.read():  # type: ignore[union-attr]
                self._handle(frames, self._direct_handlers)
        if self.sock in ready:
            self._handle_all(self.sock, self._handlers)

    def _handle_all(self, sock: zmq.Socket, handlers: dict) -> None:
        """Handle every message waiting on ``sock``."""
        while True:
            frames = transport.recv_message(sock)
            if frames is None:
                return
            self._handle(frames, handlers)

    def _handle(self, frames: list, handlers: dict) -> None:
        try:
            msg = protocol.decode(frames)
            handler = handlers.get(msg.type)
            if handler is None:
                raise ProtocolError(f"{self.role.value} got {msg.type.name}")
        except ProtocolError as exc:
            log.warning("%s dropped a message: %s", self.name, exc)
            return
        handler(msg)

    # -- handlers -------------------------------------------------------------

    def on_direct_result(self, msg: protocol.Message) -> None:
        """Outcomes a worker sent straight here (DIRECT): taken as any
        other. The broker is told (RECEIVED) with the next message sent to
        it, or by the heartbeat thread when it next wakes RECEIVED_WAIT
        after the first: not at each outcome, nor by waking either of them,
        which would cost what relaying the outcomes did."""
        outcomes = protocol.split_batch(msg)
        with self._send_lock:
            if not self._received:
                self._received_since = time.monotonic()
            self._received += [tid for tid, _, _ in outcomes]
        self._settle_all(outcomes)

    def on_result(self, msg: protocol.Message) -> None:
        self._settle_all(protocol.split_batch(msg))

    def _settle_all(self, outcomes: list) -> None:
        """Give each ``(tid, status, frames)`` to its future, if still wanted."""
        for tid, status, frames in outcomes:
            future = self._futures.pop(tid, None)
            if future is None or future._settled():
                # Cancelled here, or a stale copy of a re-run task.
                serialization.release(frames)
                continue
            tasks.settle(future, future._chunk, status, frames)

    def on_const(self, msg: protocol.Message) -> None:
        if msg.fields.name not in self.constants:
            self._const_frames[msg.fields.name] = msg.payload

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


def _nbytes(frames: Sequence) -> int:
    if len(frames) == 1 and isinstance(frames[0], bytes):
        return len(frames[0])  # a pickle head alone: most tasks
    total = 0
    for frame in frames:
        try:
            total += memoryview(frame).nbytes
        except TypeError:
            total += len(frame)
    return total


def _version() -> str:
    from . import __version__
    return __version__


def wait(client: Client | None, fs: Iterable[cf.Future], timeout: float | None,
         return_when: str) -> tuple[set, set]:
    """``concurrent.futures.wait``, driving ``client`` while it blocks."""
    fs = set(fs)
    with cf._base._AcquireFutures(fs):
        done = {f for f in fs if f._state in (cf._base.CANCELLED_AND_NOTIFIED,
                                               cf._base.FINISHED)}
        not_done = fs - done
        if return_when == cf.FIRST_COMPLETED and done:
            return done, not_done
        if return_when == cf.FIRST_EXCEPTION and any(
                not f.cancelled() and f.exception(0) is not None for f in done):
            return done, not_done
        if len(done) == len(fs):
            return done, not_done
        waiter = cf._base._create_and_install_waiters(fs, return_when)  # type: ignore[attr-defined]
    try:
        if client is not None:
            client.block_until(waiter.event.is_set, timeout)
        else:
            waiter.event.wait(timeout)
    finally:
        for f in fs:
            with f._condition:
                f._waiters.remove(waiter)
    done.update(waiter.finished_futures)
    return done, fs - done


def as_completed(client: Client | None, fs: Iterable[cf.Future],
                 timeout: float | None):
    """``concurrent.futures.as_completed``, driving ``client`` while it blocks."""
    end = None if timeout is None else time.monotonic() + timeout
    fs = set(fs)
    total = len(fs)
    with cf._base._AcquireFutures(fs):
        finished = {f for f in fs if f._state in (
            cf._base.CANCELLED_AND_NOTIFIED, cf._base.FINISHED)}
        pending = fs - finished
        waiter = cf._base._create_and_install_waiters(fs, cf._base._AS_COMPLETED)  # type: ignore[attr-defined]
    finished = list(finished)  # type: ignore[assignment]
    try:
        yield from finished
        while pending:
            left = None if end is None else end - time.monotonic()
            if left is not None and left < 0:
                raise cf.TimeoutError(
                    f"{len(pending)} (of {total}) futures unfinished")
            if client is not None:
                client.block_until(waiter.event.is_set, left)
            else:
                waiter.event.wait(left)
            with waiter.lock:
                finished = waiter.finished_futures
                waiter.finished_futures = []
                waiter.event.clear()
            for f in finished:
                if f in pending:
                    yield f
                    pending.remove(f)
    finally:
        for f in fs:
            with f._condition:
                f._waiters.remove(waiter)
