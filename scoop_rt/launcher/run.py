"""One run: start the broker, the workers and the origin, forward output,
wait for the origin, and tear everything down.

Start-up overlaps: every process is started at once and reads its bootstrap
from a pipe. A run on this machine alone listens on a Unix socket that the
launcher binds before anything starts (``ipc``), so the bootstraps are
written at once; a run with remote hosts writes them as soon as the broker
has reported the port it bound. Keys and bootstraps are made while the
processes start, and pyzmq is imported only then. Teardown is layered and
idempotent: the broker ends the run when the origin says goodbye; whatever is
still alive after a grace period is terminated, then its whole process tree
killed.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

from .. import __version__, ipc, shm, tuning
from ..bootstrap import AgentBoot, BrokerBoot, ClientBoot
from ..config import Config
from . import output, spawn

log = logging.getLogger("scoop_rt")



class LaunchError(Exception):
    """The run could not start; the message says why and what to do."""


@dataclass
class RunSpec:
    script: str
    argv: list
    placement: list            # [(host name, workers)], in worker order
    config: Config = field(default_factory=Config)
    bind: str = "127.0.0.1"    # the broker's interface
    advertise: str | None = None  # the name remote workers connect to
    tunnel: bool = False       # remote workers connect back through SSH
    port_range: tuple | None = None

    @property
    def workers(self) -> int:
        return sum(count for _, count in self.placement)


class Run:
    """One run. ``remote`` maps the names of remote hosts in the placement to
    their connected ``SSHHost``; every other host is this machine."""

    def __init__(self, spec: RunSpec, remote: dict | None = None):
        self.spec = spec
        self.remote = remote or {}
        # Forked only where no SSH connection runs threads in this process.
        self.spawner = spawn.LocalSpawner(fork=spec.config.fork and not self.remote)
        self.keys: dict | None = None  # made while the processes start
        self.local_endpoint: ipc.LocalEndpoint | None = None
        # Large buffers go through /dev/shm when every process is on this host.
        self.shm_token = None if self.remote else shm.new_token()
        self.broker: subprocess.Popen | None = None
        self.workers: list = []
        self.origin: subprocess.Popen | None = None
        self.forwarder = output.Forwarder()
        self._stopped = False
        self._signal: tuple | None = None  # (signum, when) of a stop signal
        self.watch = None  # a watch.WorkerWatch once the run is up

    # -- start ----------------------------------------------------------------

    def start(self) -> None:
        if not self.remote and self.spec.port_range is None:
            self.local_endpoint = ipc.listen()
        listener = self.local_endpoint
        # The origin first (``prestart`` may have started it already): a new
        # interpreter, it starts on another core while this process starts
        # the broker and the workers.
        try:
            self.origin, origin_pipe = self.spawner.start_origin()
        except OSError as exc:
            raise LaunchError(f"could not start the script's process: {exc}") from None
        for pipe, target in ((self.origin.stdout, output.stdout()),
                             (self.origin.stderr, output.stderr())):
            if pipe is not None:
                self.forwarder.add_pipe(pipe, target, end_line=False, after_others=True)  # type: ignore[arg-type]
        try:
            self.broker = self.spawner.start_broker(
                "scoop_rt.broker", pass_fds=(listener.fd,) if listener else ())
            if listener:
                listener.close_listener()  # the broker's now, and gone with it
            names = self._names()
            local = [(name, host) for name, host in names if host not in self.remote]
            for _ in local:
                proc = self.spawner.start_worker("scoop_rt.worker")
                self.forwarder.add_pipe(proc.stdout, output.stdout())
                self.forwarder.add_pipe(proc.stderr, output.stderr())
                self.workers.append(proc)
            self.forwarder.start()
            if self._signal:
                self.origin.send_signal(self._signal[0])
            self.keys = _make_keys() if self.spec.config.secure else None
            spawn.write_close(self.broker.stdin, self._broker_boot())
            endpoint = listener.endpoint if listener else self._broker_endpoint()
        except BaseException:
            os.close(origin_pipe)
            raise
        for proc, (name, _) in zip(self.workers, local):
            spawn.write_close(proc.stdin, self._client_boot(endpoint, name).to_json().encode())
        watched = [([name], proc) for proc, (name, _) in zip(self.workers, local)]
        spawn.write_close(os.fdopen(origin_pipe, "wb"),
                          self._client_boot(endpoint, "origin").to_json().encode())
        if listener:
            self._broker_endpoint()  # it started, or the run stops here
        for host_name, host in self.remote.items():
            mine = [name for name, h in names if h == host_name]
            if mine:
                watched.append((mine, self._start_remote(host, endpoint, mine)))
        from .watch import WorkerWatch
        self.watch = WorkerWatch(endpoint, self._client_keys(), watched)  # type: ignore[assignment]
        self.watch.start()  # type: ignore[attr-defined]

    def _names(self) -> list:
        """(worker name, host) for every worker, numbered over the run."""
        names: list = []
        for host, count in self.spec.placement:
            names += [(f"w{len(names) + i}", host) for i in range(count)]
        return names

    def _start_remote(self, host, endpoint: str, names: list):
        port = endpoint.rsplit(":", 1)[1]
        if self.spec.tunnel:
            port = host.forward_remote_port(int(port))
            endpoint = f"tcp://127.0.0.1:{port}"
        elif self.spec.advertise:
            endpoint = f"tcp://{self.spec.advertise}:{port}"
        boots = [self._client_boot(endpoint, name, host.name) for name in names]
        agent = host.start_agent(AgentBoot(workers=boots))
        self.forwarder.add(output.ChannelSource(agent.channel, output.stdout(),
                                                output.stderr()))
        self.workers.append(agent)
        return agent

    def _broker_boot(self) -> bytes:
        listener = self.local_endpoint
        return BrokerBoot(
            config=self.spec.config, keys=self.keys, version=__version__,
            size=self.spec.workers,
            bind=listener.endpoint if listener else self.spec.bind,
            listen_fd=listener.fd if listener else None,
            port_range=self.spec.port_range, parent_pid=os.getpid(),
            shm=self.shm_token).to_json().encode()

    def _client_keys(self) -> dict | None:
        from .. import transport
        return transport.client_keys(self.keys) if self.keys else None

    def _client_boot(self, endpoint: str, name: str, host: str | None = None) -> ClientBoot:
        listener = self.local_endpoint
        return ClientBoot(
            config=self.spec.config, keys=self._client_keys(), endpoint=endpoint,
            name=name, size=self.spec.workers, script=self.spec.script,
            argv=self.spec.argv, host=host or socket.gethostname(),
            broker_host=socket.gethostname(), shm=self.shm_token,
            local=not self.remote,
            outcomes=listener.outcomes_endpoint if listener else None)

    def _broker_endpoint(self) -> str:
        """The endpoint the broker reports on its stdout once bound."""
        out = self.broker.stdout  # type: ignore[union-attr]
        ready, _, _ = select.select([out], [], [], tuning.BROKER_START_TIMEOUT)
        line = out.readline() if ready else b""  # type: ignore[union-attr]
        out.close()  # type: ignore[union-attr]
        try:
            return json.loads(line)["endpoint"]
        except (ValueError, KeyError, TypeError):
            code = self.broker.poll()  # type: ignore[union-attr]
            why = (f"it exited with code {code}" if code is not None
                   else f"it said nothing for {tuning.BROKER_START_TIMEOUT:.0f} s")
            raise LaunchError(f"the broker did not start: {why}") from None

    # -- wait and stop --------------------------------------------------------

    def wait(self) -> int:
        """Wait for the origin; the run's exit code (the script's).

        After a stop signal the script gets ``tuning.STOP_TIMEOUT`` seconds to end;
        then the origin is killed and the code is the signal's (128 + n).
        """
        while True:
            code = spawn.wait_quietly(self.origin, 0.5)
            if code is not None:
                return spawn.exit_status(code)
            if self._signal and time.monotonic() > self._signal[1] + tuning.STOP_TIMEOUT:
                log.error("the script did not stop within %g s of %s; killing it",
                          tuning.STOP_TIMEOUT, signal.Signals(self._signal[0]).name)
                self.origin.kill()  # type: ignore[union-attr]
                self.origin.wait()  # type: ignore[union-attr]
                return 128 + self._signal[0]

    def terminate(self, signum: int = signal.SIGTERM) -> None:
        """Pass a stop signal on to the origin: the script stops, and so does
        the run. A signal that comes before the origin exists waits for it."""
        if self._signal is None:
            self._signal = (signum, time.monotonic())
        if self.origin is not None and self.origin.poll() is None:
            self.origin.send_signal(signum)

    def _broker_left(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the broker to exit.

        It lingers until its goodbyes are delivered, and up to 0.2 s over one
        to a process that was leaving at that moment; once every other
        process of the run is gone, nobody is left to hear them, so it is
        killed instead of waited for.
        """
        others = [p for p in [self.origin, *self.workers] if p]
        end = time.monotonic() + timeout
        while True:
            left = max(0.0, end - time.monotonic())
            if spawn.wait_quietly(self.broker, min(0.01, left)) is not None:
                return True
            if all(p.poll() is not None for p in others):
                _signal(self.broker, signal.SIGKILL)  # type: ignore[arg-type]  # it starts no processes
                return True
            if not left:
                return False

    def stop(self) -> None:
        """Make sure no process of the run is left; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self.watch is not None:
            self.watch.stop()
        grace = self.spec.config.shutdown_grace
        procs = [p for p in [self.origin, self.broker, *self.workers] if p]
        # The broker ends the run on the origin's goodbye; if the origin left
        # without one (killed), the broker hears it from us instead.
        killed = self.origin is None or (self.origin.poll() or 0) < 0
        if self.broker is not None and not self._broker_left(0 if killed else grace / 2):
            _signal(self.broker, signal.SIGTERM)
            _wait_all([self.broker], grace / 2)
        # The broker told every process that had joined; one still here did
        # not hear it (it was starting, or is stuck): stop it. One without a
        # socket open cannot hear anything: it is stopped without a wait.
        for proc in procs:
            if spawn.never_connected(proc):
                _signal(proc, signal.SIGTERM)
        if not _wait_all(procs, tuning.LEAVE_TIME):
            for proc in procs:
                _signal(proc, signal.SIGTERM)
            _wait_all(procs, 0.3)
        for proc in procs:
            spawn.kill_tree(proc)
        _wait_all(procs, 1.0)
        shm.remove_run(self.shm_token)
        if self.local_endpoint is not None:
            self.local_endpoint.remove()
        self.forwarder.close(timeout=1.0)


def _wait_all(procs: list, timeout: float) -> bool:
    end = time.monotonic() + max(timeout, 0)
    for proc in procs:
        try:
            proc.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
    return True


def _signal(proc: subprocess.Popen, signum: int) -> None:
    try:
        if proc.poll() is None:
            proc.send_signal(signum)
    except ProcessLookupError:
        pass


def _make_keys() -> dict:
    from .. import transport  # pyzmq: imported while the processes start
    return transport.make_keys()
