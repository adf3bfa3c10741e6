"""Remote hosts over SSH, with paramiko: one transport per host.

``SSHHost.connect`` honours ``~/.ssh/config`` (HostName, User, Port,
IdentityFile, UserKnownHostsFile), takes keys from the agent and ``~/.ssh``,
and checks the host key against known_hosts unless unknown hosts are trusted
explicitly. Every failure becomes a ``HostFailure`` whose message names the
host, the reason and what to do. ``probe`` asks the host what the run needs
(cores, Python, scoop_rt, the script); ``start_agent`` runs the host agent
(``launcher/agent.py``) that starts the host's workers; the run's keys go to
it over the channel's stdin, never on a command line.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..bootstrap import AgentBoot


SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"

# Exit codes of the remote shell prelude, to tell its failures apart.
_NO_FOLDER = 90
_NO_PROLOG = 91
_NO_COMMAND = 127

_PROBE = """\
import json, os, sys
info = {"cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count(),
        "python": "%d.%d.%d" % sys.version_info[:3],
        "script": os.access(sys.argv[1], os.R_OK)}
try:
    import scoop_rt
    info["scoop_rt"] = scoop_rt.__version__
    import zmq, cloudpickle, psutil
except Exception as exc:
    info["error"] = "%s: %s" % (type(exc).__name__, exc)
print(json.dumps(info))
"""


class HostFailure(Exception):
    """A host that cannot take part in the run; the message says why."""

    def __init__(self, host: str, reason: str):
        super().__init__(f"host {host}: {reason}")
        self.host = host
        self.reason = reason


@dataclass
class SSHOptions:
    connect_timeout: float = 10.0
    accept_unknown_hosts: bool = False
    python: str = ""                  # the remote interpreter
    prolog: str | None = None         # a file sourced before the worker starts
    path: str = field(default_factory=os.getcwd)  # the workers' folder
    pythonpath: str | None = None


def _paramiko():
    """paramiko, imported when a host is first contacted: it takes a tenth
    of a second, which a run on this machine alone need not pay."""
    import paramiko
    return paramiko


def load_config():
    paramiko = _paramiko()
    path = os.path.expanduser("~/.ssh/config")
    if os.path.exists(path):
        return paramiko.SSHConfig.from_path(path)
    return paramiko.SSHConfig()


class SSHHost:
    def __init__(self, name: str, options: SSHOptions,
                 config=None):
        entry = (config or _paramiko().SSHConfig()).lookup(name)
        self.name = name
        self.options = options
        self.hostname = entry.get("hostname", name)
        self.port = int(entry.get("port", 22))
        self.user = entry.get("user") or getpass.getuser()
        self.identities = [os.path.expanduser(p) for p in entry.get("identityfile", [])]
        known = entry.get("userknownhostsfile", "")
        self.known_hosts = [os.path.expanduser(p) for p in known.split()]
        self.client: Any = None  # a paramiko.SSHClient once connected

    def __repr__(self) -> str:
        return f"SSHHost({self.name!r})"

    # -- connection ---------------------------------------------------------

    def connect(self) -> None:
        """Open the transport, or raise ``HostFailure`` saying why not."""
        paramiko = _paramiko()
        client = paramiko.SSHClient()
        client.load_system_host_keys()
        for path in [SYSTEM_KNOWN_HOSTS, *self.known_hosts]:
            if os.path.exists(path):
                client.load_system_host_keys(path)
        client.set_missing_host_key_policy(
            paramiko.AutoAddPolicy() if self.options.accept_unknown_hosts
            else paramiko.RejectPolicy())
        timeout = self.options.connect_timeout
        where = f"{self.user}@{self.hostname}:{self.port}"
        try:
            client.connect(
                self.hostname, port=self.port, username=self.user,
                key_filename=[p for p in self.identities if os.path.exists(p)] or None,
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                allow_agent=True, look_for_keys=True)
        except paramiko.BadHostKeyException:
            raise self._fail(
                f"its host key has changed since it was recorded in known_hosts; "
                f"if {self.hostname} was reinstalled, remove its line "
                f"(ssh-keygen -R {self.hostname})") from None
        except paramiko.AuthenticationException:
            raise self._fail(
                f"ssh refused the key for {self.user}; is your public key in "
                f"~{self.user}/.ssh/authorized_keys there?") from None
        except paramiko.ssh_exception.NoValidConnectionsError:
            raise self._fail(f"connection refused at {where}; is sshd running "
                             "there?") from None
        except socket.gaierror:
            raise self._fail(f"the name {self.hostname!r} does not resolve; "
                             "check the hostfile or ~/.ssh/config") from None
        except (socket.timeout, TimeoutError):
            raise self._fail(f"no answer from {where} within {timeout:g} s; is "
                             "it up and reachable?") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise self._fail(
                    f"its host key is unknown (not in known_hosts); add it with "
                    f"'ssh-keyscan -p {self.port} {self.hostname} >> "
                    f"~/.ssh/known_hosts', or pass --accept-unknown-hosts") from None
            raise self._fail(f"ssh failed: {exc}") from None
        except OSError as exc:
            raise self._fail(f"cannot connect to {where}: {exc.strerror or exc}") from None
        self.client = client

    def _fail(self, reason: str) -> HostFailure:
        return HostFailure(self.name, reason)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    # -- commands -----------------------------------------------------------

    def shell(self, argv: list) -> str:
        """A remote shell command: go to the folder, source the prolog, set
        PYTHONPATH, then exec ``argv``; each step's failure has its own code."""
        o = self.options
        steps = [f"cd {shlex.quote(o.path)} 2>/dev/null || exit {_NO_FOLDER}"]
        if o.prolog:
            steps.append(f". {shlex.quote(o.prolog)} || exit {_NO_PROLOG}")
        if o.pythonpath:
            steps.append(f"export PYTHONPATH={shlex.quote(o.pythonpath)}"
                         "${PYTHONPATH:+:$PYTHONPATH}")
        steps.append(f"exec {shlex.join(argv)}")
        return "; ".join(steps)

    def run(self, argv: list, timeout: float) -> tuple[int, str, str]:
        """Run ``argv`` (through ``shell``); (exit code, stdout, stderr)."""
        channel = self.client.get_transport().open_session(timeout=timeout)
        channel.settimeout(timeout)
        try:
            channel.exec_command(self.shell(argv))
            channel.shutdown_write()
            out = channel.makefile("rb").read().decode(errors="replace")
            err = channel.makefile_stderr("rb").read().decode(errors="replace")
            return channel.recv_exit_status(), out, err
        except socket.timeout:
            raise self._fail(f"{argv[0]} did not answer within {timeout:g} s") from None
        finally:
            channel.close()

    def probe(self, script: str) -> dict:
        """What the host has: cores, Python and scoop_rt versions, the script."""
        python = self.options.python
        code, out, err = self.run([python, "-c", _PROBE, script],
                                  self.options.connect_timeout)
        if code == _NO_FOLDER:
            raise self._fail(f"the folder {self.options.path} does not exist "
                             "there; pass --path with one that does")
        if code == _NO_PROLOG:
            raise self._fail(f"the prolog {self.options.prolog} failed or is "
                             f"missing there: {_last_line(err)}")
        if code == _NO_COMMAND:
            raise self._fail(f"no Python interpreter at {python} there; pass "
                             "--python-interpreter with the right path")
        try:
            info = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise self._fail(f"{python} failed there: {_last_line(err)}") from None
        return info

    def start_agent(self, boot: AgentBoot) -> RemoteProcess:
        """Start the host agent with its workers' bootstraps."""
        channel = self.client.get_transport().open_session(
            timeout=self.options.connect_timeout)
        channel.exec_command(self.shell(
            [self.options.python, "-m", "scoop_rt.launcher.agent"]))
        channel.sendall(boot.to_json().encode() + b"\n")
        return RemoteProcess(self, channel)

    def forward_remote_port(self, local_port: int) -> int:
        """``--tunnel``: a port on the host's loopback that leads to
        ``local_port`` on this machine's loopback, through the SSH transport."""
        transport = self.client.get_transport()

        def handler(channel, origin, server) -> None:
            threading.Thread(target=_splice, args=(channel, local_port),
                             daemon=True, name="scoop_rt-tunnel").start()

        return transport.request_port_forward("127.0.0.1", 0, handler=handler)


def _splice(channel, local_port: int) -> None:
    """Copy bytes both ways between a forwarded channel and the local port."""
    import selectors
    try:
        sock = socket.create_connection(("127.0.0.1", local_port), timeout=10)
    except OSError:
        channel.close()
        return
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, (sock, channel))
    sel.register(channel, selectors.EVENT_READ, (channel, sock))
    try:
        while True:
            for key, _ in sel.select():
                src, dst = key.data
                data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
    except OSError:
        return
    finally:
        sel.close()
        sock.close()
        channel.close()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


class RemoteProcess:
    """The host agent on the far side of a channel, as a ``Popen`` look-alike."""

    pid = None
    stdin = stdout = stderr = None

    def __init__(self, host: SSHHost, channel):
        self.host = host
        self.channel = channel
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and (self.channel.exit_status_ready()
                                        or self.channel.closed):
            # A channel closed without an exit status: the agent was lost.
            self.returncode = (self.channel.recv_exit_status()
                               if self.channel.exit_status_ready() else 255)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if end is not None and time.monotonic() >= end:
                raise subprocess.TimeoutExpired(f"agent on {self.host.name}", timeout or 0.0)
            time.sleep(0.02)
        return code

    def send_signal(self, signum: int) -> None:
        self.terminate()

    def terminate(self) -> None:
        """Close the agent's stdin: it stops its workers and leaves."""
        try:
            self.channel.shutdown_write()
        except (OSError, EOFError, _paramiko().SSHException):
            pass

    def kill(self) -> None:
        self.terminate()
        self.channel.close()
