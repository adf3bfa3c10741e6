"""Telling the broker at once when a worker process exits.

The launcher watches its local workers, and each host agent its own: when
one exits while the run goes on, a ``GONE`` message names it and says how it
ended (exit code or signal), so its tasks run elsewhere without waiting for
heartbeats to go silent.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import zmq

from .. import __version__, protocol, transport
from ..protocol import Msg, Role

_POLL = 0.1


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class WorkerWatch(threading.Thread):
    """Polls worker processes; reports each that exits until ``stop()``."""

    def __init__(self, endpoint: str, keys: dict | None, workers: list):
        """``workers``: [(names, process)]: a worker process has one name, a
        host agent the names of all the workers it started."""
        super().__init__(name="scoop_rt-watch", daemon=True)
        self.endpoint = endpoint
        self.keys = keys
        self.workers = list(workers)
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout=2.0)

    def run(self) -> None:
        ctx = zmq.Context()
        identity = f"watcher:{os.getpid()}:{os.urandom(4).hex()}".encode()
        sock = transport.connect_dealer(ctx, self.endpoint, self.keys, identity)
        try:
            sock.send_multipart(protocol.encode(
                Msg.HELLO, Role.WATCHER.value, "watcher", socket.gethostname(),
                os.getpid(), __version__, "%d.%d" % sys.version_info[:2]))
            watching = list(self.workers)
            while watching and not self._stopping.wait(_POLL):
                for names, proc in list(watching):
                    code = proc.poll()
                    if code is not None and not self._stopping.is_set():
                        watching.remove((names, proc))
                        for name in names:
                            sock.send_multipart(protocol.encode(
                                Msg.GONE, name, describe_exit(code)))
        finally:
            sock.close(linger=500)
            ctx.term()
