"""Starting the processes of a run. Every spawner gives back objects with the
``subprocess.Popen`` interface the launcher needs (``pid``, ``poll``,
``wait``, ``terminate``, ``kill``, ``stdin``, ``stdout``, ``stderr``), so the
run does not care where a process lives. Local now; SSH and the batch
scheduler's own launcher plug in behind the same ``Spawner`` interface.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from typing import Sequence

from ..config import ENV_BOOT_FD, ENV_ROLE


def module_argv(python: str, module: str, *args: str) -> list:
    return [python, "-m", module, *args]


class Spawner:
    """Where and how the processes of a run start."""

    def start_worker(self, argv: Sequence[str]) -> subprocess.Popen:
        raise NotImplementedError


class LocalSpawner(Spawner):
    """Processes on this machine, each worker in a session of its own so the
    terminal's Ctrl-C reaches only the origin (the launcher stops the rest)."""

    def __init__(self, env: dict | None = None):
        self.env = dict(os.environ if env is None else env)

    def _env(self, role: str) -> dict:
        env = dict(self.env)
        env[ENV_ROLE] = role
        return env

    def start_broker(self, argv: Sequence[str],
                     pass_fds: Sequence[int] = ()) -> subprocess.Popen:
        """``pass_fds``: a listening socket the broker is to take over."""
        return _own_group(subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=self._env("broker"), start_new_session=True, pass_fds=pass_fds))

    def start_worker(self, argv: Sequence[str]) -> subprocess.Popen:
        return _own_group(subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=self._env("worker"),
            start_new_session=True))

    def start_origin(self, argv: Sequence[str], capture_stdout: bool,
                     capture_stderr: bool) -> tuple[subprocess.Popen, int]:
        """The origin keeps the launcher's stdin, and its stdout and stderr
        where they are terminals; elsewhere they are captured, so the launcher
        can write its lines whole among the workers'. Its bootstrap goes
        through a pipe it inherits; returns (process, the pipe's writing end)."""
        read_end, write_end = os.pipe()
        env = self._env("origin")
        env[ENV_BOOT_FD] = str(read_end)
        try:
            proc = subprocess.Popen(
                argv, pass_fds=(read_end,), env=env,
                stdout=subprocess.PIPE if capture_stdout else None,
                stderr=subprocess.PIPE if capture_stderr else None)
        finally:
            os.close(read_end)
        return proc, write_end


def _own_group(proc: subprocess.Popen) -> subprocess.Popen:
    """Mark a process started as the leader of a group of its own."""
    proc.own_group = True
    return proc


def kill_tree(proc) -> None:
    """Kill a process and everything it started, however deep. A remote
    process (``ssh.RemoteProcess``) is told to stop its own."""
    if not isinstance(proc, subprocess.Popen):
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
    if not isinstance(proc, subprocess.Popen) or proc.poll() is not None:
        return False
    folder = f"/proc/{proc.pid}/fd"
    try:
        links = [os.readlink(os.path.join(folder, fd)) for fd in os.listdir(folder)]
    except OSError:  # gone meanwhile, or no /proc here
        return False
    return not any(link.startswith("socket:") for link in links)


def wait_quietly(proc: subprocess.Popen, timeout: float) -> int | None:
    """``proc.wait(timeout)``, without the busy polling ``Popen.wait`` does
    under a timeout (it wakes dozens of times a second): on Linux the wait
    sleeps on a pidfd. Returns the return code, or None on timeout."""
    if proc.returncode is not None or not hasattr(os, "pidfd_open"):
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # already reaped, or no pidfd in this kernel
        return proc.poll()
    try:
        select.select([fd], [], [], timeout)
    except InterruptedError:
        pass
    finally:
        os.close(fd)
    return proc.poll()


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
