"""The origin starts first, before the launcher has imported or parsed
anything.

A new interpreter importing pyzmq, cloudpickle and the runtime is the slowest
step of a short run; started first, it overlaps with everything the launcher
does meanwhile (its own imports, reading the command line, starting the broker
and the workers). The origin waits for its bootstrap on a pipe, so it knows
nothing of the run until the launcher has decided there is one; when there is
none after all (a usage error, a host that cannot be reached), the launcher
kills it with ``discard``.

Only ``os`` and ``sys`` here: every import would delay the start.
"""

from __future__ import annotations

import os
import sys

from .. import envnames

# A command with one of these words in it is not a run: no origin for it.
NOT_A_RUN = frozenset({"-h", "--help", "--version", "--dry-run", "--check"})

_SIGKILL = 9  # ``signal`` imports ``enum``
_SIGINT = 2

_first = None  # (pid, stdout, stderr, boot) from ``start``, until taken


def start(argv: list) -> None:
    """Start the origin now, unless ``argv`` is not a run."""
    global _first
    if argv and not NOT_A_RUN.intersection(argv):
        try:
            _first = spawn_origin(os.environ)
        except OSError:
            pass  # the run will try again, and say why if it fails


def take() -> tuple | None:
    """The origin ``start`` started, now the caller's; or None."""
    global _first
    first, _first = _first, None
    return first


def discard() -> None:
    """Kill the origin ``start`` started if nobody took it: it has only
    imported, and waits for a bootstrap that will not come."""
    first = take()
    if first is None:
        return
    pid, *fds = first
    try:
        os.kill(pid, _SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    for fd in fds:
        if fd is not None:
            os.close(fd)


def spawn_origin(environ) -> tuple:
    """Start ``python -m scoop_rt.origin`` with ``environ``; returns (pid,
    the reading end of its stdout or None, the same for stderr, the writing
    end of its bootstrap pipe).

    The origin keeps the launcher's stdin, and its stdout and stderr where
    they are terminals; elsewhere they are captured, so the launcher can write
    its lines whole among the workers'. Its bootstrap goes through a pipe it
    inherits.
    """
    boot_read, boot_write = os.pipe()
    env = dict(environ)
    env[envnames.ROLE] = "origin"
    env[envnames.BOOT_FD] = str(boot_read)
    ours: list[int | None]  # our end of each pipe; None for a terminal
    actions, ours, theirs = [], [], [boot_read]
    for fd in (1, 2):
        if os.isatty(fd):
            ours.append(None)
            continue
        read_end, write_end = os.pipe()
        actions.append((os.POSIX_SPAWN_DUP2, write_end, fd))
        ours.append(read_end)
        theirs.append(write_end)
    _keep_to_ourselves()
    os.set_inheritable(boot_read, True)  # the others are dup2'ed into place
    try:
        pid = os.posix_spawn(sys.executable,
                             [sys.executable, "-m", "scoop_rt.origin"], env,
                             file_actions=actions, setsigmask=(_SIGINT,))
    except BaseException:
        for end in [*ours, boot_write]:
            if end is not None:
                os.close(end)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    return (pid, *ours, boot_write)


def _keep_to_ourselves() -> None:
    """Mark every descriptor from 3 up that this process inherited as not
    inheritable (``posix_spawn`` has no ``close_fds``): the origin gets only
    what it is given, as with ``subprocess``."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc here
        return
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:  # the listing's own descriptor, closed by now
                pass
