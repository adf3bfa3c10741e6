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
import time

import zmq

from .. import __version__, protocol, transport, tuning
from ..protocol import Msg, Role
from . import spawn


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
        host agent (``ssh.RemoteProcess``) the names of all the workers it
        started. An agent's own reports on its workers say more than its
        exit does, so its exit is reported ``tuning.AGENT_DELAY`` seconds late, and
        only for workers the broker has not heard of yet."""
        super().__init__(name="scoop_rt-watch", daemon=True)
        self.endpoint = endpoint
        self.keys = keys
        self.workers = list(workers)
        self._stopping = threading.Event()
        self._report_exited = False

    def stop(self, report_exited: bool = False) -> None:
        """Stop watching; with ``report_exited``, first report every process
        that has exited and was not reported yet (an agent whose workers all
        ended must say so before it leaves)."""
        self._report_exited = report_exited
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
                os.getpid(), __version__, "{}.{}".format(*sys.version_info[:2])))
            watching = list(self.workers)
            due: list = []  # (when, names, reason)
            while (watching or due) and not self._stopping.wait(tuning.WATCH_POLL):
                now = time.monotonic()
                for names, proc in list(watching):
                    code = proc.poll()
                    if code is None:
                        continue
                    watching.remove((names, proc))
                    if spawn.is_local(proc):
                        due.append((now, names, describe_exit(code)))
                    else:
                        due.append((now + tuning.AGENT_DELAY, names,
                                    f"its host's agent ended ({describe_exit(code)})"))
                self._send(sock, [e for e in due if e[0] <= now], due)
            if self._report_exited:
                due += [(0, names, describe_exit(proc.poll()))
                        for names, proc in watching if proc.poll() is not None]
                self._send(sock, list(due), due)
        finally:
            # Reports still queued when the launcher stops are moot: the run
            # is over, and the broker may be gone (they would wait 0.5 s).
            sock.close(linger=500 if self._report_exited else 0)
            ctx.term()

    @staticmethod
    def _send(sock, entries: list, due: list) -> None:
        for entry in entries:
            due.remove(entry)
            for name in entry[1]:
                sock.send_multipart(protocol.encode(Msg.GONE, name, entry[2]))
