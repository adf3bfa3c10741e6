"""The broker's endpoint for a run on this machine alone: a Unix socket in a
private folder, bound and listening before any process of the run starts.
The origin binds a second one there, for the outcomes workers send straight
to it (``outcomes_endpoint``, see ``transport.OutcomesInbox``).

The launcher binds it and hands the listening descriptor to the broker
(ZeroMQ's ``ZMQ_USE_FD``), so the endpoint is known at once: the workers and
the origin get their bootstrap while the broker is still starting, and their
connections wait in the socket's queue until the broker accepts them. No
other user can reach the sockets (their folder is 0700); CURVE still
authenticates every connection to the broker, as on TCP, and the origin's
socket checks a token made from the same keys.

The folder goes when the run ends: the launcher removes it, or the broker
does on its way out when the launcher was killed.

No ZeroMQ here, nor ``tempfile``: the launcher uses this before it starts
anything, where every import delays the whole run.
"""

from __future__ import annotations

import os
import socket

PREFIX = "scoop_rt-"
SOCKET_NAME = "broker"
OUTCOMES_NAME = "origin"
# sockaddr_un holds 108 bytes with the final NUL; a longer TMPDIR gets TCP.
_MAX_PATH = 107
_BACKLOG = 4096  # hundreds of workers connect at once, three sockets each


class LocalEndpoint:
    """A listening Unix socket in a fresh private folder."""

    def __init__(self, folder: str, sock: socket.socket):
        self.folder = folder
        self.path = os.path.join(folder, SOCKET_NAME)
        self.endpoint = "ipc://" + self.path
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()  # the same number in the broker (pass_fds)

    @property
    def outcomes_endpoint(self) -> str:
        """Where the origin binds its socket for outcomes (``protocol``)."""
        return "ipc://" + os.path.join(self.folder, OUTCOMES_NAME)

    def close_listener(self) -> None:
        """Close this process's copy of the socket (the broker has its own)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def remove(self) -> None:
        self.close_listener()
        remove(self.endpoint)


def listen() -> LocalEndpoint | None:
    """A new endpoint, or None where Unix sockets cannot serve (no AF_UNIX,
    or a temporary folder whose path is too long for a socket address)."""
    if not hasattr(socket, "AF_UNIX"):
        return None
    try:
        folder = _private_folder()
    except OSError:  # no writable temporary folder: TCP will do
        return None
    path = os.path.join(folder, SOCKET_NAME)
    if len(os.fsencode(path)) > _MAX_PATH:
        os.rmdir(folder)
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(_BACKLOG)
    except OSError:  # TCP will do
        sock.close()
        remove("ipc://" + path)
        return None
    return LocalEndpoint(folder, sock)


def _private_folder() -> str:
    """A new folder only this user can enter, where ``tempfile`` would make
    it (``TMPDIR``, ``TEMP`` or ``TMP``, else /tmp), under a name nobody else
    has: ``mkdir`` fails rather than reuse a folder that exists."""
    root = next((os.environ[name] for name in ("TMPDIR", "TEMP", "TMP")
                 if os.environ.get(name)), "/tmp")
    while True:
        folder = os.path.join(root, PREFIX + os.urandom(8).hex())
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue
        os.chmod(folder, 0o700)  # whatever the umask, not wider than 0700
        return folder


def path_of(endpoint: str) -> str:
    """The file of an ``ipc://`` endpoint."""
    return endpoint[len("ipc://"):]


def remove(endpoint: str) -> None:
    """Remove the socket and the folder of an endpoint made by ``listen``;
    anything else is left alone. Safe to call twice, and from two processes."""
    if not endpoint.startswith("ipc://"):
        return
    path = path_of(endpoint)
    folder = os.path.dirname(path)
    if (os.path.basename(path) != SOCKET_NAME
            or not os.path.basename(folder).startswith(PREFIX)):
        return
    outcomes = os.path.join(folder, OUTCOMES_NAME)  # (a closed socket leaves its file)
    for remove_one, name in ((os.unlink, path), (os.unlink, outcomes), (os.rmdir, folder)):
        try:
            remove_one(name)
        except FileNotFoundError:
            pass
        except OSError:
            return  # not ours to force (something else put a file there)
