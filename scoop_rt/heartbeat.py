"""A client's heartbeat: liveness both ways, on a thread and a socket of
its own.

The thread pings the broker every ``Config.heartbeat_interval`` and ends
the process (``on_run_over``) when the broker has not answered for
``heartbeat_misses`` intervals, so no process outlives its run. The broker
also uses this socket for what must reach a busy process at once: a NOTICE
for the user (logged here), and SHUTDOWN (if the main thread has not left
within half the shutdown grace, ``leave`` is called from here).

The same thread runs the process's timed jobs (``ticker.Ticker``) between
pings; ``stop()`` wakes it at once through an in-process socket, so closing
a client never waits out a heartbeat interval.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable

import zmq

from . import protocol, transport
from .config import Config
from .protocol import Msg, ProtocolError
from .ticker import Ticker

log = logging.getLogger("scoop_rt")


class Heartbeat(threading.Thread):
    def __init__(self, ctx: zmq.Context, endpoint: str, keys: dict | None,
                 identity: bytes, config: Config, ticker: Ticker,
                 on_run_over: Callable[[str], None], leave: Callable[[str], None]):
        super().__init__(name="scoop_rt-heartbeat", daemon=True)
        self.ctx = ctx
        self.endpoint = endpoint
        self.keys = keys
        self.identity = identity
        self.config = config
        self.ticker = ticker
        self.on_run_over = on_run_over
        self.leave = leave
        self.stopped = threading.Event()
        self._wake_address = f"inproc://scoop_rt-heartbeat-{id(self)}"
        self._wake = ctx.socket(zmq.PAIR)
        self._wake.bind(self._wake_address)
        ticker.thread = self
        ticker.nudge = self.nudge

    def stop(self) -> None:
        self.stopped.set()
        self.nudge()
        self.join(timeout=1.0)
        self._wake.close(linger=0)

    def nudge(self) -> None:
        """Wake the thread to run its jobs again. Never blocks: a thread
        that has just left (and closed its end) needs no waking."""
        try:
            self._wake.send(b"", zmq.NOBLOCK)
        except zmq.Again:
            pass

    def run(self) -> None:
        interval = self.config.heartbeat_interval
        sock = transport.connect_heartbeat(self.ctx, self.endpoint, self.keys,
                                           self.identity)
        wake = self.ctx.socket(zmq.PAIR)
        wake.connect(self._wake_address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        ping = protocol.encode(Msg.PING)
        ticker = self.ticker
        last_heard = next_ping = time.monotonic()
        try:
            while not self.stopped.is_set():
                now = time.monotonic()
                if now >= next_ping:
                    silent = now - last_heard
                    if silent > interval * self.config.heartbeat_misses:
                        self.on_run_over(
                            f"the broker has not answered for {silent:.0f} s")
                    sock.send_multipart(ping)
                    next_ping = now + interval
                timeout = next_ping - now
                due = ticker.run(time.monotonic())
                if due is not None:
                    timeout = min(timeout, max(0.0, due))
                # Set after the jobs ran: whoever holds or batches after that
                # sees either this deadline or "awake" (infinity, so it
                # nudges), never a stale one.
                ticker.wakes_at = time.monotonic() + timeout
                # In whole milliseconds, rounded up: poll(0.4) would be poll(0),
                # and the thread would spin until the deadline.
                events = dict(poller.poll(math.ceil(timeout * 1000)))
                ticker.wakes_at = float("inf")
                if self.stopped.is_set():
                    return
                if wake in events:
                    wake.recv()
                if sock in events:
                    last_heard = time.monotonic()
                    self.on_message(sock.recv_multipart())
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
            if not self.stopped.wait(self.config.shutdown_grace / 2):
                self.leave(msg.fields.reason)
