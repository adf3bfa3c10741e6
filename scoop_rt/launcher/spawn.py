"""Starting the processes of a run on this machine. ``LocalSpawner`` gives
back objects with the ``subprocess.Popen`` interface the launcher needs
(``pid``, ``poll``, ``wait``, ``terminate``, ``kill``, ``stdin``, ``stdout``,
``stderr``). Workers on another host are not started here: the launcher
starts that host's agent over SSH (``ssh.SSHHost.start_agent``, whose
``RemoteProcess`` has the same interface), and the agent starts them with a
``LocalSpawner`` of its own.

A local broker and local workers are forked from the launcher when it can
(``Forked``): a new interpreter spends about 40 ms of CPU importing pyzmq,
cloudpickle and the runtime, and on a small machine five of them in a row
were most of a short run's wall time. The launcher imports all that once, and
each fork starts with it done. The origin is always a fresh interpreter: it
runs the user's script as ``__main__``, with everything Python does at exit.
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence

from ..envnames import ROLE as ENV_ROLE
from ..exits import exit_code, exit_now, flush_stdio
from . import prestart


def module_argv(python: str, module: str, *args: str) -> list:
    return [python, "-m", module, *args]


class LocalSpawner:
    """Processes on this machine, each worker in a session of its own so the
    terminal's Ctrl-C reaches only the origin (the launcher stops the rest).

    ``fork``: start the broker and the workers by forking this process (see
    the module's docstring), where that is safe: on a platform with ``fork``
    and while this process runs no other thread, since a fork copies only the
    calling thread and any lock another one held stays held in the copy.
    Otherwise each is a new interpreter running ``python -m <module>``.
    """

    def __init__(self, env: dict | None = None, fork: bool = False):
        self.env = dict(os.environ if env is None else env)
        self.fork = fork

    def _env(self, role: str) -> dict:
        env = dict(self.env)
        env[ENV_ROLE] = role
        return env

    def _may_fork(self) -> bool:
        return self.fork and hasattr(os, "fork") and threading.active_count() == 1

    def start_broker(self, module: str, pass_fds: Sequence[int] = ()):
        """``pass_fds``: a listening socket the broker is to take over."""
        return self._start(module, "broker", stderr=False, pass_fds=pass_fds)

    def start_worker(self, module: str):
        return self._start(module, "worker", stderr=True)

    def _start(self, module: str, role: str, stderr: bool, pass_fds: Sequence[int] = ()):
        """``module``'s ``main`` in a session of its own, with pipes for its
        stdin and stdout (and, with ``stderr``, its stderr)."""
        env = self._env(role)
        if self._may_fork():
            return Forked(module, env, stderr=stderr, pass_fds=pass_fds)
        return _own_group(subprocess.Popen(
            module_argv(python(), module), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE if stderr else None,
            env=env, start_new_session=True, pass_fds=pass_fds))

    def start_origin(self) -> tuple:
        """The origin: a new interpreter, the one ``prestart`` started if
        there is one. Returns (process, the writing end of its bootstrap
        pipe); see ``prestart.spawn_origin``."""
        pid, out, err, boot = prestart.take() or prestart.spawn_origin(self.env)
        return Child(pid, "scoop_rt.origin", stdout=out, stderr=err), boot


class Child:
    """A child process of this one, known by its pid, with the part of the
    ``subprocess.Popen`` interface the run uses. ``stdin``, ``stdout`` and
    ``stderr`` are our ends of its pipes (descriptors, made file objects
    here), or None."""

    def __init__(self, pid: int, name: str, stdin: int | None = None,
                 stdout: int | None = None, stderr: int | None = None):
        self.pid = pid
        self.args = [name]
        self.returncode: int | None = None
        self._lock = threading.Lock()
        self.stdin = open(stdin, "wb") if stdin is not None else None
        self.stdout = open(stdout, "rb") if stdout is not None else None
        self.stderr = open(stderr, "rb") if stderr is not None else None

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            return self._reap(0)  # type: ignore[return-value]  # (a blocking wait)
        end = time.monotonic() + timeout
        while (code := self.poll()) is None:
            left = end - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            _sleep_on(self.pid, left)
        return code

    def _reap(self, flags: int) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, flags)
                except ChildProcessError:  # reaped unasked: as Popen, say 0
                    pid, status = self.pid, 0
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # not reaped: the pid is still the child's
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Forked(Child):
    """A child forked from this process to run ``<module>.main()`` in a
    session of its own, as ``python -m <module>`` would.

    The child gets pipes for stdin, stdout and (``stderr``) stderr, keeps no
    other descriptor of this process but ``pass_fds``, takes ``env`` as its
    environment, and names itself after the module (``ps -o comm``, psutil's
    ``name()``); its command line stays the launcher's. It never returns
    into this process's code: it leaves with ``exit_now`` whatever happens.
    """

    own_group = True

    def __init__(self, module: str, env: dict, stderr: bool,
                 pass_fds: Sequence[int] = ()):
        main = importlib.import_module(module).main  # imported once, here
        child_in, parent_in = os.pipe()
        parent_out, child_out = os.pipe()
        parent_err, child_err = os.pipe() if stderr else (None, None)
        flush_stdio()  # or the child would write it again
        try:
            pid = os.fork()
        except OSError:
            for fd in (child_in, parent_in, parent_out, child_out, parent_err, child_err):
                if fd is not None:
                    os.close(fd)
            raise
        if pid == 0:
            try:
                _become(main, module, env, child_in, child_out, child_err, pass_fds)
            finally:
                os._exit(1)  # never back into the launcher's code
        for fd in (child_in, child_out, child_err):
            if fd is not None:
                os.close(fd)
        super().__init__(pid, module, parent_in, parent_out, parent_err)


def _become(main, module: str, env: dict, stdin: int, stdout: int,
            stderr: int | None, pass_fds: Sequence[int]) -> None:
    """In a forked child: shed the launcher's state, run ``main``, leave."""
    code = 1
    try:
        os.setsid()
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        if stderr is not None:
            os.dup2(stderr, 2)
        _close_all_but(pass_fds)
        # The launcher's stdio objects (flushed before the fork) now write
        # to this process's pipes, with the launcher's encoding and
        # buffering; only a stream it had closed needs a new one.
        if sys.stdin is None:
            sys.stdin = open(0, closefd=False)
        if sys.stdout is None:
            sys.stdout = open(1, "w", closefd=False)
        if sys.stderr is None:
            sys.stderr = open(2, "w", buffering=1, closefd=False,
                              errors="backslashreplace")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        import logging
        logging.getLogger("scoop_rt").handlers.clear()
        os.environ.clear()
        os.environ.update(env)
        _name_process(module)
        main()
        code = 0
    except SystemExit as exc:
        code = exit_code(exc.code)
    except BaseException:  # what an interpreter would print before it exits
        traceback.print_exc()
    finally:
        exit_now(code)


def _close_all_but(keep: Sequence[int]) -> None:
    """Close every descriptor from 3 up but those in ``keep``."""
    low = 3
    for fd in sorted(fd for fd in keep if fd >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)


def _name_process(module: str) -> None:
    """Name this process after its role (the kernel keeps 15 bytes)."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(module[:15])
    except OSError:
        pass  # no /proc here: the name stays the launcher's


def is_local(proc) -> bool:
    """Whether ``proc`` is a process of this machine (not a host agent)."""
    return isinstance(proc, (subprocess.Popen, Child))


def _own_group(proc: subprocess.Popen) -> subprocess.Popen:
    """Mark a process started as the leader of a group of its own."""
    proc.own_group = True  # type: ignore[attr-defined]
    return proc


def kill_tree(proc) -> None:
    """Kill a process and everything it started, however deep. A remote
    process (``ssh.RemoteProcess``) is told to stop its own."""
    if not is_local(proc):
        proc.kill()
        return
    if proc.returncode is not None:
        # Reaped: its pid may be another process's now, and what it started
        # is no longer its children; but a process group outlives its
        # leader, and Linux gives no new process the id of a group still in
        # use, so what a worker started (a task's subprocess) still goes.
        # (psutil is imported only past here: it costs a run's end more than
        # the rest of the teardown.)
        if getattr(proc, "own_group", False):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return
    import psutil
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        family = []
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in [*family]:
        try:
            p.kill()
        except psutil.Error:
            pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def never_connected(proc) -> bool:
    """Whether a local process of the run is alive without a socket open:
    still starting (its imports, say), so it has neither joined the run nor
    heard the broker's goodbye, or it has lost every connection to the
    broker. False when that cannot be told (no /proc, a remote process)."""
    if not is_local(proc) or proc.poll() is not None:
        return False
    folder = f"/proc/{proc.pid}/fd"
    try:
        links = [os.readlink(os.path.join(folder, fd)) for fd in os.listdir(folder)]
    except OSError:  # gone meanwhile, or no /proc here
        return False
    return not any(link.startswith("socket:") for link in links)


def wait_quietly(proc, timeout: float) -> int | None:
    """``proc.wait(timeout)``, without the busy polling ``Popen.wait`` does
    under a timeout (it wakes dozens of times a second): on Linux the wait
    sleeps on a pidfd. Returns the return code, or None on timeout."""
    if proc.returncode is not None or not hasattr(os, "pidfd_open"):
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
    _sleep_on(proc.pid, timeout)
    return proc.poll()


def _sleep_on(pid: int, timeout: float) -> None:
    """Sleep until the child ``pid`` exits or ``timeout`` passes: on a pidfd
    where there is one, else (briefly) on the clock."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd here, or already reaped
        time.sleep(min(timeout, 0.005))
        return
    try:
        select.select([fd], [], [], timeout)
    except InterruptedError:
        pass
    finally:
        os.close(fd)


def exit_status(returncode: int) -> int:
    """A process's return code as a shell reports it (signals as 128 + n)."""
    return 128 - returncode if returncode < 0 else returncode


def write_close(pipe, data: bytes) -> None:
    """Write a bootstrap to a process's stdin and close it."""
    try:
        pipe.write(data)
        pipe.close()
    except BrokenPipeError:
        pass  # the process died at start; teardown will notice


def python() -> str:
    return sys.executable
