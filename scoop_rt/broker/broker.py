"""The broker: the one stateful hub of a run.

Started by the launcher as ``python -m scoop_rt.broker`` with the bootstrap
on stdin; it binds its ROUTER socket, prints its endpoint as one JSON line on
stdout, and serves until the origin says goodbye, the origin or the launcher
disappears, or it is terminated. Its loop reads as its steps:

    receive   handle every message that has arrived (handlers ``on_*``)
    dispatch  send the tasks the policy hands to workers with free slots
    watch     declare silent peers gone; notice a vanished launcher

What it knows of tasks is the task table (``tasktable.TaskTable``), and of
workers' capacity their slots (``scheduling.Slots``); who gets which task is
the policy's to decide (``scheduling.assign``), over that plain data. This
module is the part with sockets: handlers record what a message says there,
and send what it answers.

Payloads are opaque frames here: the broker never unpickles anything.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import zmq

from .. import protocol, transport, tuning
from ..protocol import Flags, LostReason, Msg, ProtocolError, Role, Status
from .scheduling import Slots, assign
from .tasktable import TaskTable

if TYPE_CHECKING:
    from ..bootstrap import BrokerBoot

log = logging.getLogger("scoop_rt")

NO_WORKERS_LEFT = "no workers are left in this run"


class _Stop(Exception):
    """Raised by the signal handler to leave the loop."""


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
    def __init__(self, boot: BrokerBoot):
        self.config = boot.config
        self.version: str = boot.version
        self.python: str = "{}.{}".format(*sys.version_info[:2])
        self.size: int = boot.size
        self.parent_pid: int = boot.parent_pid or os.getppid()
        self.shm_token: str | None = boot.shm
        self.ctx = zmq.Context()
        keys = boot.keys if self.config.secure else None
        self.listener = transport.bind_router(
            self.ctx, boot.bind, keys, boot.port_range or None, boot.listen_fd)
        self.sock = self.listener.sock
        self.endpoint = self.listener.endpoint
        self.peers: dict[bytes, Peer] = {}
        self.workers = Slots()
        self.table = TaskTable()
        self.consts: dict[str, list] = {}
        # Outcomes for their submitters, sent once the messages read in one
        # go are handled: results that arrive together leave together.
        # {submitter: [entries, their payload bytes]}
        self.outcomes: dict[bytes, list] = {}
        self.gone: set[str] = set()  # names of workers that died or never came
        self.stop_reason: str | None = None
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
        if not self.sock.poll(timeout * 1000):  # type: ignore[arg-type]
            return
        recv, sock, handle = transport.recv_message, self.sock, self.handle
        for _ in range(tuning.BROKER_READS):
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
        at once when they come to ``tuning.OUTCOMES_MAX`` or ``OUTCOMES_BYTES``."""
        pending = self.outcomes.get(submitter)
        if pending is None:
            pending = self.outcomes[submitter] = [[], 0]
        pending[0].append(entry)
        pending[1] += sum(len(frame) for frame in entry[2])
        if len(pending[0]) >= tuning.OUTCOMES_MAX or pending[1] >= tuning.OUTCOMES_BYTES:
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
        add = self.table.add
        for tid, flags, frames in protocol.split_batch(msg):
            if not direct:
                flags &= ~int(Flags.DIRECT)
            btid = add(identity, tid, flags, frames, queue=not none_left)
            if none_left:
                self.fail(btid, LostReason.NO_WORKERS, NO_WORKERS_LEFT)

    def on_result(self, identity: bytes, f, payload) -> None:
        msg = protocol.Message(Msg.RESULT, f, payload)
        slots = self.workers.get(identity)
        table = self.table
        for btid, status, frames in protocol.split_batch(msg):
            if slots is not None:
                slots.running.discard(btid)
            if status == Status.DELIVERED:
                table.deliver(identity, btid)  # (the task stays its own)
                continue
            task = table.finish(btid)
            if task is None:
                continue  # cancelled, or already answered by another attempt
            self.reply(task.submitter, (task.tid, status, frames))
        if slots is not None:
            self.workers.changed(identity)

    def on_received(self, identity: bytes, f, payload) -> None:
        """The origin has these tasks' outcomes, which their workers sent
        straight to it (DIRECT): they are done."""
        for tid in f.tids:
            self.table.received(identity, tid)

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
        self.workers.set_prefetch(identity, max(0, min(f.extra, tuning.MAX_PREFETCH)))

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
            self.table.give_back(btid)
        self.workers.changed(identity)

    def on_probe(self, identity: bytes, f, payload) -> None:
        state = self.table.probe(identity, f.tid, bool(f.cancel))
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
            self.fail_all()

    def on_bye(self, identity: bytes, f, payload) -> None:
        self.stop_reason = f"the script ended with code {f.code}"

    # -- steps ----------------------------------------------------------------

    def dispatch(self) -> None:
        """Send the tasks the policy hands to workers with free slots,
        several to a worker in one message when the queue is deep (see
        scheduling.assign)."""
        send_batch = self.send_batch
        for wid, entries, reply_to in assign(self.table, self.workers):
            send_batch(wid, Msg.TASK, entries, reply_to)

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
        held = self.table.held_by(peer.identity, slots.running if slots else set())
        for btid in reversed(held):  # each goes to the front: keep their order
            self.retry(btid, peer, reason)
        self.table.forget_submitter(peer.identity)
        self.notify(f"{peer.describe()} lost: {reason}; {len(held)} task(s) "
                    "it held go elsewhere")
        if self.no_workers_left():
            self.fail_all()

    def notify(self, text: str) -> None:
        """Tell the user through the origin, whose heartbeat thread logs it
        at once; the broker logs it itself while there is no origin yet."""
        origin = next((p for p in self.peers.values()
                       if p.role == Role.ORIGIN.value and p.heartbeat), None)
        if origin is None:
            log.warning("%s", text)
        else:
            self.send(origin.heartbeat, Msg.NOTICE, text)  # type: ignore[arg-type]

    def retry(self, btid: int, peer: Peer, reason: str) -> None:
        """Queue again a task whose worker was lost, or fail it."""
        lost = self.table.lose(btid, self.config.max_attempts)
        if lost is None:
            return
        where = f"worker {peer.name} on host {peer.host} ({reason})"
        if lost == LostReason.NO_RETRY_LOST:
            text = (f"the task was lost with {where}; it was submitted not "
                    "to run twice, so it was not run again")
        else:
            text = (f"the task was tried {self.table.tasks[btid].attempts} "
                    f"times and each time its worker died; last {where}")
        self.fail(btid, lost, text)

    def fail(self, btid: int, reason: LostReason, text: str) -> None:
        """Give up on a task: its submitter gets a LOST outcome, whose
        reason picks the exception and whose text the user reads."""
        task = self.table.finish(btid)
        if task is None:
            return  # answered already
        self.reply(task.submitter, (task.tid, int(Status.LOST),
                                    protocol.lost_payload(reason, text)))

    def fail_all(self) -> None:
        """No worker is left, and none will come: every task fails."""
        for btid in list(self.table.tasks):
            self.fail(btid, LostReason.NO_WORKERS, NO_WORKERS_LEFT)

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
    from ..bootstrap import BrokerBoot, read, setup_logging
    boot = read(sys.stdin, BrokerBoot)
    sys.stdin = open(os.devnull)
    setup_logging(boot.config, "broker")
    broker = Broker(boot)
    signal.signal(signal.SIGTERM, _on_signal)
    print(json.dumps({"endpoint": broker.endpoint}), flush=True)
    broker.run()


if __name__ == "__main__":
    main()
