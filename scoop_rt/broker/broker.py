"""The broker: the one stateful hub of a run.

Started by the launcher as ``python -m scoop_rt.broker`` with the bootstrap
on stdin; it binds its ROUTER socket, prints its endpoint as one JSON line on
stdout, and serves until the origin says goodbye, the origin or the launcher
disappears, or it is terminated. Its loop reads as its steps:

    receive   handle every message that has arrived (handlers ``on_*``)
    dispatch  hand queued tasks to workers with free slots
    watch     declare silent peers gone; notice a vanished launcher

Payloads are opaque frames here: the broker never unpickles anything.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import zmq

from .. import protocol, transport
from ..config import Config
from ..protocol import Flags, LostReason, Msg, ProtocolError, Role, Status, TaskState
from .scheduling import Slots

log = logging.getLogger("scoop_rt")

_BATCH = 2000  # messages read before the next dispatch
MAX_PREFETCH = 64  # tasks a worker may ask to hold beyond the one it runs
# Outcomes for one submitter go at once when this many have gathered, or this
# many bytes of them, as a client's batches do.
OUTCOMES_MAX = 64
OUTCOMES_BYTES = 1 << 20
NO_WORKERS_LEFT = "no workers are left in this run"


class _Stop(Exception):
    """Raised by the signal handler to leave the loop."""


@dataclass
class Task:
    submitter: bytes
    tid: int          # the submitter's own id for it
    flags: int
    payload: list
    worker: bytes | None = None
    attempts: int = 0
    queued: bool = False  # has a live entry in the broker's queue


@dataclass
class Peer:
    identity: bytes
    role: str
    name: str
    host: str
    pid: int
    last_seen: float = field(default_factory=time.monotonic)
    heartbeat: bytes | None = None

    def describe(self) -> str:
        return f"{self.role} {self.name} (host {self.host}, pid {self.pid})"


class Broker:
    def __init__(self, boot: dict):
        self.config = Config.from_dict(boot["config"])
        self.version: str = boot["version"]
        self.python: str = "%d.%d" % sys.version_info[:2]
        self.size: int = boot["size"]
        self.parent_pid: int = boot.get("parent_pid") or os.getppid()
        self.shm_token: str | None = boot.get("shm")
        self.ctx = zmq.Context()
        keys = boot.get("keys") if self.config.secure else None
        port_range = tuple(boot["port_range"]) if boot.get("port_range") else None
        self.listener = transport.bind_router(
            self.ctx, boot.get("bind", "127.0.0.1"), keys, port_range,
            boot.get("listen_fd"))
        self.sock = self.listener.sock
        self.endpoint = self.listener.endpoint
        self.peers: dict[bytes, Peer] = {}
        self.workers = Slots()
        self.tasks: dict[int, Task] = {}
        self.by_client: dict[tuple[bytes, int], int] = {}
        # Tasks each worker sent straight to the origin (DIRECT) that the
        # origin has not said it has (RECEIVED): run again if it is lost.
        self.delivered: dict[bytes, set] = {}
        self.queue: deque[int] = deque()  # may hold entries of dropped tasks
        self.queued = 0  # live entries in ``queue``
        # Those that stay at the broker while the queue is short: all but
        # the chunks of maps that no worker has lost yet.
        self.queued_alone = 0
        self.consts: dict[str, list] = {}
        # Outcomes for their submitters, sent once the messages read in one
        # go are handled: results that arrive together leave together.
        # {submitter: [entries, their payload bytes]}
        self.outcomes: dict[bytes, list] = {}
        self.gone: set[str] = set()  # names of workers that died or never came
        self.stop_reason: str | None = None
        self._btids = itertools.count(1)
        self._next_watch = 0.0
        self.handlers = {
            Msg.HELLO: self.on_hello,
            Msg.SUBMIT: self.on_submit,
            Msg.RESULT: self.on_result,
            Msg.WAITING: self.on_waiting,
            Msg.RESUMED: self.on_resumed,
            Msg.PROBE: self.on_probe,
            Msg.SETCONST: self.on_setconst,
            Msg.BYE: self.on_bye,
            Msg.GONE: self.on_gone,
            Msg.CREDIT: self.on_credit,
            Msg.RETURN: self.on_return,
            Msg.RECEIVED: self.on_received,
        }

    # -- the loop -------------------------------------------------------------

    def run(self) -> None:
        try:
            while self.stop_reason is None:
                self.receive(self.config.heartbeat_interval / 2)
                self.send_outcomes()
                self.dispatch()
                self.watch()
                self.send_outcomes()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already
        except _Stop as stop:
            self.stop_reason = str(stop)
        self.shutdown(self.stop_reason or "stopped")

    def receive(self, timeout: float) -> None:
        if not self.sock.poll(timeout * 1000):
            return
        recv, sock, handle = transport.recv_message, self.sock, self.handle
        for _ in range(_BATCH):
            frames = recv(sock)
            if frames is None:
                return
            handle(frames)

    def handle(self, frames: list) -> None:
        identity = protocol.sender_owner(frames[0].bytes)
        try:
            msg = protocol.decode(frames[1:])
        except ProtocolError as exc:
            log.warning("dropped a malformed message: %s", exc)
            return
        if msg.type == Msg.PING:
            self.on_ping(identity)
            return
        peer = self.peers.get(identity)
        if peer is None and msg.type != Msg.HELLO:
            log.debug("dropped %s from an unknown peer", msg.type.name)
            return
        if peer is not None:
            peer.last_seen = time.monotonic()
        handler = self.handlers.get(msg.type)
        if handler is None:
            log.warning("dropped %s: clients do not send it", msg.type.name)
            return
        handler(identity, msg.fields, msg.payload)

    def send(self, identity: bytes, msg_type: Msg, *fields, payload=()) -> None:
        self._send(identity, protocol.encode(msg_type, *fields, payload=payload))

    def send_batch(self, identity: bytes, msg_type: Msg, entries: list,
                   *fields) -> None:
        self._send(identity, protocol.encode_batch(msg_type, entries, *fields))

    def _send(self, identity: bytes, frames: list) -> None:
        if identity in self.outcomes:  # what a peer is told stays in order
            self._send_outcomes(identity)
        transport.send_message(self.sock, [identity, *frames])

    def reply(self, submitter: bytes, entry: tuple) -> None:
        """Queue a task's outcome ``(tid, status, frames)`` for its
        submitter; they go when the messages read in one go are handled, or
        at once when they come to OUTCOMES_MAX or OUTCOMES_BYTES."""
        pending = self.outcomes.get(submitter)
        if pending is None:
            pending = self.outcomes[submitter] = [[], 0]
        pending[0].append(entry)
        pending[1] += sum(len(frame) for frame in entry[2])
        if len(pending[0]) >= OUTCOMES_MAX or pending[1] >= OUTCOMES_BYTES:
            self._send_outcomes(submitter)

    def send_outcomes(self) -> None:
        while self.outcomes:
            self._send_outcomes(next(iter(self.outcomes)))

    def _send_outcomes(self, identity: bytes) -> None:
        entries, _ = self.outcomes.pop(identity)
        if identity in self.peers:
            self.send_batch(identity, Msg.RESULT, entries)

    # -- handlers -------------------------------------------------------------

    def on_hello(self, identity: bytes, f, payload) -> None:
        if f.version != self.version or f.python != self.python:
            self.send(identity, Msg.REFUSED,
                      f"{f.role} {f.name} on {f.host} runs scoop_rt {f.version} "
                      f"on Python {f.python}, but this run uses scoop_rt "
                      f"{self.version} on Python {self.python}: install the "
                      "same versions on every host")
            return
        peer = Peer(identity, f.role, f.name, f.host, f.pid)
        self.peers[identity] = peer
        if f.role == Role.WORKER.value:
            self.workers.add(identity)
            for name, value in self.consts.items():
                self.send(identity, Msg.CONST, name, payload=value)
        self.send(identity, Msg.WELCOME, self.size)
        log.debug("%s joined", peer.describe())

    def on_submit(self, identity: bytes, f, payload) -> None:
        msg = protocol.Message(Msg.SUBMIT, f, payload)
        none_left = self.no_workers_left()
        # Only the origin has a socket for outcomes sent straight to it.
        direct = self.peers[identity].role == Role.ORIGIN.value
        for tid, flags, frames in protocol.split_batch(msg):
            if not direct:
                flags &= ~int(Flags.DIRECT)
            btid = next(self._btids)
            self.tasks[btid] = Task(identity, tid, flags, frames)
            self.by_client[identity, tid] = btid
            if none_left:
                self.fail(btid, LostReason.NO_WORKERS, NO_WORKERS_LEFT)
            else:
                self.enqueue(btid)

    def on_result(self, identity: bytes, f, payload) -> None:
        msg = protocol.Message(Msg.RESULT, f, payload)
        slots = self.workers.get(identity)
        for btid, status, frames in protocol.split_batch(msg):
            if slots is not None:
                slots.running.discard(btid)
            if status == Status.DELIVERED:
                if btid in self.tasks:  # (until the origin has it)
                    self.delivered.setdefault(identity, set()).add(btid)
                continue
            task = self.drop(btid)
            if task is None:
                continue  # cancelled, or already answered by another attempt
            self.by_client.pop((task.submitter, task.tid), None)
            self.reply(task.submitter, (task.tid, status, frames))
        if slots is not None:
            self.workers.changed(identity)

    def on_received(self, identity: bytes, f, payload) -> None:
        """The origin has these tasks' outcomes, which their workers sent
        straight to it (DIRECT): they are done. A worker's slot is freed by
        its own DELIVERED, not here: one running the task again (its first
        worker lost) is still busy with it."""
        for tid in f.tids:
            btid = self.by_client.get((identity, tid))
            task = None if btid is None else self.tasks.get(btid)
            if task is None or not task.flags & Flags.DIRECT:
                continue  # done already (another attempt's), or not such a task
            del self.by_client[identity, tid]
            self.drop(btid)
            self.delivered.get(task.worker, set()).discard(btid)

    def on_waiting(self, identity: bytes, f, payload) -> None:
        slots = self.workers.get(identity)
        if slots is not None:
            slots.blocked += 1
            self.workers.changed(identity)

    def on_resumed(self, identity: bytes, f, payload) -> None:
        slots = self.workers.get(identity)
        if slots is not None and slots.blocked > 0:
            slots.blocked -= 1

    def on_credit(self, identity: bytes, f, payload) -> None:
        self.workers.set_prefetch(identity, max(0, min(f.extra, MAX_PREFETCH)))

    def on_return(self, identity: bytes, f, payload) -> None:
        """A worker gives back tasks it held but never started (its running
        task has run long): they go back to the front of the queue, in their
        order, for whoever is free; cancel() can take them again."""
        slots = self.workers.get(identity)
        if slots is None:
            return
        for btid in reversed(f.tids):
            if btid not in slots.running:
                continue
            slots.running.discard(btid)
            task = self.tasks.get(btid)
            if task is None:
                continue  # dropped meanwhile: its submitter is gone
            task.worker = None
            self.enqueue(btid, front=True)
        self.workers.changed(identity)

    def on_probe(self, identity: bytes, f, payload) -> None:
        btid = self.by_client.get((identity, f.tid))
        task = self.tasks.get(btid) if btid is not None else None
        if task is None:
            state = TaskState.UNKNOWN
        elif task.worker is not None:
            state = TaskState.RUNNING
        elif f.cancel:
            self.drop(btid)  # its queue entry is skipped at dispatch
            del self.by_client[identity, f.tid]
            state = TaskState.CANCELLED
        else:
            state = TaskState.PENDING
        self.send(identity, Msg.STATE, f.tid, int(state))

    def on_setconst(self, identity: bytes, f, payload) -> None:
        if f.name in self.consts:
            log.warning("shared constant %r was set twice; kept the first", f.name)
            return
        self.consts[f.name] = payload
        for other in self.peers:
            if other != identity:
                self.send(other, Msg.CONST, f.name, payload=payload)

    def on_ping(self, identity: bytes) -> None:
        owner = protocol.heartbeat_owner(identity)
        peer = self.peers.get(owner) if owner is not None else None
        if peer is not None:
            peer.last_seen = time.monotonic()
            peer.heartbeat = identity
        self.send(identity, Msg.PONG)

    def on_gone(self, identity: bytes, f, payload) -> None:
        for peer in list(self.peers.values()):
            if peer.role == Role.WORKER.value and peer.name == f.name:
                self.lost(peer, f.reason)
                return
        if f.name in self.gone:
            return  # its heartbeats told already
        # It died before it joined: one worker fewer to wait for.
        self.notify(f"worker {f.name} ended before it joined the run: {f.reason}")
        self.gone.add(f.name)
        if self.no_workers_left():
            for btid in list(self.tasks):
                self.fail(btid, LostReason.NO_WORKERS, NO_WORKERS_LEFT)

    def on_bye(self, identity: bytes, f, payload) -> None:
        self.stop_reason = f"the script ended with code {f.code}"

    # -- steps ----------------------------------------------------------------

    def dispatch(self) -> None:
        """Hand queued tasks to workers with free slots, several to a worker
        in one message when the queue is deep (see scheduling.Slots)."""
        workers = self.workers
        # Shares and tasks ahead count from the queue as it stands before any
        # worker takes its own: the first worker's share does not make the
        # queue look short to the next, so a map's chunks are split evenly.
        # A worker that comes back for more in the same pass is bounded by
        # the queue as it is then: the end of a queue does not pile up ahead
        # at one worker.
        workers.ahead = workers.ahead_now(self.queued, self.queued_alone)
        even_share = workers.share(self.queued)
        served = set()
        while self.queue:
            wid = workers.take()
            if wid is None:
                return
            slots = workers.get(wid)
            if wid in served:
                workers.ahead = workers.ahead_now(self.queued, self.queued_alone)
                if workers.free(slots) <= 0:
                    workers.changed(wid)  # stays out of line
                    continue
            served.add(wid)
            share = min(workers.free(slots), even_share)
            entries = []
            reply_to = []
            stalled = False
            while len(entries) < share:
                btid = self._next_queued()
                if btid is None:
                    break
                task = self.tasks[btid]
                # A task that lost a worker travels alone, and so does one
                # that must not run twice, into a slot of its own: one held
                # in a worker's batch could die with it before it ever ran,
                # and could not be tried again.
                once = task.flags & Flags.NO_RETRY
                alone = task.attempts or once
                if alone and entries:
                    self.enqueue(btid, front=True)
                    break
                if once and slots.free(0) <= 0:
                    self.enqueue(btid, front=True)
                    stalled = True  # until a worker has a slot of its own
                    break
                task.worker = wid
                slots.running.add(btid)
                entries.append((btid, task.flags, task.payload))
                reply_to.append(task.tid if task.flags & Flags.DIRECT else -1)
                if alone:
                    break
            workers.changed(wid)
            if entries:
                self.send_batch(wid, Msg.TASK, entries, reply_to)
            if stalled:
                return

    def enqueue(self, btid: int, front: bool = False) -> None:
        if front:
            self.queue.appendleft(btid)
        else:
            self.queue.append(btid)
        self._count(self.tasks[btid], queued=True)

    def drop(self, btid: int) -> Task | None:
        """Forget a task; its queue entry, if any, is skipped from now on."""
        task = self.tasks.pop(btid, None)
        if task is not None and task.queued:
            self._count(task, queued=False)
        return task

    def _next_queued(self) -> int | None:
        while self.queue:
            btid = self.queue.popleft()
            task = self.tasks.get(btid)
            if task is not None and task.queued:
                self._count(task, queued=False)
                return btid
        return None

    def _count(self, task: Task, queued: bool) -> None:
        """Mark a task as in the queue or out of it, and count it."""
        task.queued = queued
        step = 1 if queued else -1
        self.queued += step
        if task.attempts or not task.flags & Flags.CHUNK:
            # (a retried chunk goes alone into a slot of its own, not ahead)
            self.queued_alone += step

    def watch(self) -> None:
        now = time.monotonic()
        if now < self._next_watch:
            return
        self._next_watch = now + self.config.heartbeat_interval
        limit = self.config.heartbeat_interval * self.config.heartbeat_misses
        for peer in [p for p in self.peers.values() if now - p.last_seen > limit
                     and p.role != Role.WATCHER.value]:
            self.lost(peer, f"silent for {now - peer.last_seen:.1f} s")
        if self.launcher_gone():
            self.stop_reason = "the launcher is gone"

    def launcher_gone(self) -> bool:
        return os.getppid() != self.parent_pid

    def no_workers_left(self) -> bool:
        """Every worker the run was started with is gone (none are restarted)."""
        return not self.workers and len(self.gone) >= self.size

    def lost(self, peer: Peer, reason: str) -> None:
        """A peer is gone: re-run what its worker held, drop what it asked for."""
        del self.peers[peer.identity]
        if peer.role == Role.WORKER.value:
            self.gone.add(peer.name)
        if peer.role == Role.ORIGIN.value:
            self.stop_reason = f"the origin is gone ({reason})"
            return
        slots = self.workers.remove(peer.identity)
        held = sorted((slots.running if slots else set())
                      | self.delivered.pop(peer.identity, set()))
        for btid in reversed(held):  # each goes to the front: keep their order
            self.retry(btid, peer, reason)
        for key in [k for k in self.by_client if k[0] == peer.identity]:
            self.drop(self.by_client.pop(key))
        self.notify(f"{peer.describe()} lost: {reason}; {len(held)} task(s) "
                    "it held go elsewhere")
        if self.no_workers_left():
            for btid in list(self.tasks):
                self.fail(btid, LostReason.NO_WORKERS, NO_WORKERS_LEFT)

    def notify(self, text: str) -> None:
        """Tell the user through the origin, whose heartbeat thread logs it
        at once; the broker logs it itself while there is no origin yet."""
        origin = next((p for p in self.peers.values()
                       if p.role == Role.ORIGIN.value and p.heartbeat), None)
        if origin is None:
            log.warning("%s", text)
        else:
            self.send(origin.heartbeat, Msg.NOTICE, text)

    def retry(self, btid: int, peer: Peer, reason: str) -> None:
        task = self.tasks.get(btid)
        if task is None:
            return
        task.attempts += 1
        task.worker = None
        where = f"worker {peer.name} on host {peer.host} ({reason})"
        if task.flags & Flags.NO_RETRY:
            self.fail(btid, LostReason.NO_RETRY_LOST,
                      f"the task was lost with {where}; it was submitted not "
                      "to run twice, so it was not run again")
        elif task.attempts >= self.config.max_attempts:
            self.fail(btid, LostReason.TOO_MANY_ATTEMPTS,
                      f"the task was tried {task.attempts} times and each "
                      f"time its worker died; last {where}")
        else:
            self.enqueue(btid, front=True)

    def fail(self, btid: int, reason: LostReason, text: str) -> None:
        """Give up on a task: its submitter gets a LOST outcome, whose
        reason picks the exception and whose text the user reads."""
        task = self.drop(btid)
        self.by_client.pop((task.submitter, task.tid), None)
        self.reply(task.submitter, (task.tid, int(Status.LOST),
                                    protocol.lost_payload(reason, text)))

    def shutdown(self, reason: str) -> None:
        # SIGTERM is ignored by now (run() and _on_signal), and each peer's
        # pending outcomes go before its SHUTDOWN (_send).
        log.info("stopping: %s", reason)
        for peer in self.peers.values():
            self.send(peer.identity, Msg.SHUTDOWN, reason)
            if peer.heartbeat:
                self.send(peer.heartbeat, Msg.SHUTDOWN, reason)
        self.listener.close(linger_ms=200)
        self.ctx.term()
        if self.launcher_gone():
            # The launcher removes the run's shared-memory files at its end;
            # killed, it never will.
            from .. import shm
            shm.remove_run(self.shm_token)


def _on_signal(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the broker stops
    raise _Stop(f"stopped by signal {signal.Signals(signum).name}")


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher handles Ctrl-C
    boot = json.loads(sys.stdin.read())
    sys.stdin = open(os.devnull)
    from ..bootstrap import setup_logging
    setup_logging(Config.from_dict(boot["config"]), "broker")
    broker = Broker(boot)
    signal.signal(signal.SIGTERM, _on_signal)
    print(json.dumps({"endpoint": broker.endpoint}), flush=True)
    broker.run()


if __name__ == "__main__":
    main()
