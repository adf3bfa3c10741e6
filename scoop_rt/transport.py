"""Sockets of a run: where they bind, and how they are secured.

Socket security is switched on here and nowhere else. With ``secure`` set,
every ZeroMQ connection uses CURVE: the broker holds the run's server key
pair and accepts only clients presenting the run's client public key (checked
by a ZAP handler), so a peer without the keys can neither connect nor read
anything. The keys are made fresh for each run by ``make_keys``. The one
socket that is not ZeroMQ, the origin's for the outcomes workers send
straight to it on a local run, checks who connects in its own way (see
``OutcomesInbox``): the peer's user, and a token made from the same keys.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator

import zmq
from zmq.utils import z85

from . import ipc, protocol
from .protocol import heartbeat_identity

log = logging.getLogger("scoop_rt")


def make_keys() -> dict:
    """Fresh CURVE key pairs for one run, as Z85 text (JSON-friendly)."""
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    return {"server_public": server_public.decode(),
            "server_secret": server_secret.decode(),
            "client_public": client_public.decode(),
            "client_secret": client_secret.decode()}


def client_keys(keys: dict) -> dict:
    """The part of the run's keys that a client needs (no server secret)."""
    return {k: keys[k] for k in ("server_public", "client_public", "client_secret")}


ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks (RFC 27)


class _OnlyRunClients(threading.Thread):
    """A ZAP handler (the broker's): admits a CURVE client presenting the
    run's client key, and nothing else.

    pyzmq's ``zmq.auth.thread`` does the same, but imports asyncio to do it,
    which took more of a broker's start-up than everything else it does. The
    handler's socket is bound here, before the socket it checks exists, so no
    connection is ever accepted without the check; it answers on its own
    thread, and leaves when the context is terminated.
    """

    def __init__(self, ctx: zmq.Context, client_public: str):
        super().__init__(name="scoop_rt-zap", daemon=True)
        self._key = z85.decode(client_public.encode())
        self._sock = ctx.socket(zmq.REP)
        self._sock.linger = 0
        self._sock.bind(ZAP_ENDPOINT)

    def run(self) -> None:
        try:
            while True:
                self._sock.send_multipart(self.answer(self._sock.recv_multipart()))
        except zmq.ContextTerminated:
            pass
        finally:
            self._sock.close()

    def answer(self, request: list) -> list:
        """The reply to one ZAP request: 200 for the run's client, else 400."""
        if len(request) < 2:  # no request id to answer: refuse anyway
            return [b"1.0", b"", b"400", b"malformed request", b"", b""]
        version, request_id = request[:2]
        mechanism, credentials = request[5:6], request[6:]
        if (version == b"1.0" and mechanism == [b"CURVE"]
                and credentials == [self._key]):
            return [b"1.0", request_id, b"200", b"OK", b"run client", b""]
        return [b"1.0", request_id, b"400", b"not this run's key", b"", b""]

    def stop(self) -> None:
        """Nothing to do: terminating the context ends the thread."""


def _tune(sock: zmq.Socket) -> None:
    sock.linger = 0
    sock.sndhwm = 0
    sock.rcvhwm = 0


# pyzmq's send_multipart/recv_multipart spend most of a small message's time
# on per-frame enum arithmetic; these do the same with plain integers.
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)


# Signals whose handlers raise in the main thread (Ctrl-C, a scheduler's
# SIGTERM), and that thread.
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_MAIN = threading.main_thread().ident


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Stop signals wait, in this thread, until the block ends. A thread
    started inside keeps them blocked for good: the runtime starts its own
    threads so, and a stop signal sent to the process then reaches the main
    thread, where this holds it. (A signal that another thread takes, one of
    the script's, runs its Python handler in the main thread at once, held
    or not: there a message can still be cut between two frames.)"""
    if threading.get_ident() != _MAIN:
        yield  # handlers run in the main thread only
        return
    # The mask is read before it changes: Python runs the handlers of
    # signals that came just before as the call returns, and one that raises
    # must not leave the stop signals blocked.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def send_message(sock: zmq.Socket, frames: list) -> None:
    """Send a multipart message without copying large frames.

    Stop signals wait until the message is whole (``stop_signals_held``):
    their handlers raise in the main thread, and a message cut off between
    two frames would be finished by the next one sent on the socket (the
    origin's goodbye, say), which the broker would then drop as malformed,
    both messages lost."""
    with stop_signals_held():
        last = len(frames) - 1
        for i, frame in enumerate(frames):
            sock.send(frame, _SNDMORE if i < last else 0, copy=False)


def recv_message(sock: zmq.Socket) -> list | None:
    """The next multipart message as ``zmq.Frame``s, or None if none waits."""
    try:
        frame = sock.recv(_NOBLOCK, copy=False)
    except zmq.Again:
        return None
    frames = [frame]
    while frame.more:  # the rest of a message arrives with its first frame
        frame = sock.recv(copy=False)
        frames.append(frame)
    return frames


class Listener:
    """The broker's bound ROUTER socket, its endpoint, and its key checker."""

    def __init__(self, sock: zmq.Socket, endpoint: str, authenticator=None):
        self.sock = sock
        self.endpoint = endpoint
        self.authenticator = authenticator

    def close(self, linger_ms: int) -> None:
        self.sock.close(linger=linger_ms)
        if self.authenticator is not None:
            self.authenticator.stop()
        ipc.remove(self.endpoint)  # the launcher's folder, if it is gone


def bind_router(ctx: zmq.Context, host: str, keys: dict | None,
                port_range: tuple[int, int] | None = None,
                listen_fd: int | None = None) -> Listener:
    """The broker's ROUTER socket bound on ``host``.

    The port is ephemeral, or the first free one in ``port_range``. Or
    ``host`` is the ``ipc://`` endpoint of ``listen_fd``, a socket the
    launcher bound already (see ``ipc``).
    """
    sock = ctx.socket(zmq.ROUTER)
    _tune(sock)
    # Hundreds of workers (three sockets each) connect at once: the default
    # queue of 100 pending connections drops most, and they retry seconds later.
    sock.backlog = 4096
    auth = None
    if keys:
        auth = _serve_curve(ctx, sock, keys["server_public"], keys["server_secret"],
                            keys["client_public"])
    if listen_fd is not None:
        sock.use_fd = listen_fd
        sock.bind(host)
        return Listener(sock, host, auth)
    if port_range is None:
        port = sock.bind_to_random_port(f"tcp://{host}")
    else:
        port = sock.bind_to_random_port(f"tcp://{host}", port_range[0],
                                        port_range[1] + 1, max_tries=1000)
    return Listener(sock, f"tcp://{host}:{port}", auth)


def connect_dealer(ctx: zmq.Context, endpoint: str, keys: dict | None,
                   identity: bytes) -> zmq.Socket:
    """A client's DEALER socket to the broker."""
    sock = ctx.socket(zmq.DEALER)
    _tune(sock)
    sock.identity = identity
    if keys:
        _use_curve(sock, keys["server_public"], keys)
    sock.connect(endpoint)
    return sock


def _serve_curve(ctx: zmq.Context, sock: zmq.Socket, public: str, secret: str,
                 client_public: str) -> _OnlyRunClients:
    """Make ``sock`` a CURVE server with the key pair ``public``/``secret``
    that admits only ``client_public``: the key check starts first."""
    auth = _OnlyRunClients(ctx, client_public)
    with stop_signals_held():  # the thread keeps them blocked
        auth.start()
    sock.curve_server = True
    sock.curve_publickey = public.encode()
    sock.curve_secretkey = secret.encode()
    return auth


def _use_curve(sock: zmq.Socket, server_public: str, keys: dict) -> None:
    """Make ``sock`` a CURVE client of the server ``server_public``, with
    the run's client key pair."""
    sock.curve_serverkey = server_public.encode()
    sock.curve_publickey = keys["client_public"].encode()
    sock.curve_secretkey = keys["client_secret"].encode()


def connect_heartbeat(ctx: zmq.Context, endpoint: str, keys: dict | None,
                      identity: bytes) -> zmq.Socket:
    """The heartbeat socket of the client whose main socket is ``identity``."""
    return connect_dealer(ctx, endpoint, keys, heartbeat_identity(identity))


# -- the origin's socket for the outcomes workers send straight to it ------
#
# On a run local to one machine, a map's outcomes go from the workers to the
# origin without the broker (DIRECT, see ``protocol``), on a Unix
# SOCK_SEQPACKET socket in the run's 0700 folder rather than on ZeroMQ.
# Each ZeroMQ message wakes ZeroMQ's I/O thread in the process that sends it
# and again in the one that gets it; on two cores busy with a map, those
# wake-ups took the place of the map's work. Here the worker's own send and
# the origin's own read are the only steps, and a record is sent whole or not
# at all, so a worker never blocks on it nor leaves half a message: a record
# that does not fit (a busy origin, a large outcome) goes through the broker
# as any outcome does.
#
# Security: ZeroMQ's CURVE would authenticate each connection and encrypt
# it against whoever can see or alter the bytes on their way. A Unix socket
# has no way in between: the kernel carries its records and says which user
# is at the other end. So a connection is taken from this user only (the
# folder's 0700 mode already stops the others; SO_PEERCRED is checked as
# well), and only once its first record is the run's token, a MAC made with
# the run's client secret key, which a process of the same user but of
# another run, or of none, does not have. Records before that are dropped
# with the connection.

_PEER = struct.Struct("iII")  # SO_PEERCRED: pid, uid, gid
# What a send meets once the origin has closed its end (other errors, such
# as a record larger than the socket takes, leave the connection as it is).
_CLOSED = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN}


def _outcomes_token(endpoint: str, keys: dict | None) -> bytes:
    """What a worker shows first on the origin's socket at ``endpoint``."""
    import hashlib  # (here: the broker and the launcher never need them)
    import hmac
    secret = keys["client_secret"].encode() if keys else b""
    return hmac.new(secret, b"scoop_rt outcomes " + endpoint.encode(),
                    hashlib.sha256).digest()


class OutcomesInbox:
    """The origin's end: a listening socket and the workers' connections,
    behind one epoll descriptor the origin waits on with its ZeroMQ socket."""

    def __init__(self, endpoint: str, keys: dict | None):
        from hmac import compare_digest
        self._same = compare_digest
        self._token = _outcomes_token(endpoint, keys)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._listener.bind(ipc.path_of(endpoint))
            self._listener.listen(4096)  # (128 workers connect at once)
            self._listener.setblocking(False)
            self._epoll = select.epoll()
        except OSError:
            self._listener.close()
            raise
        self._epoll.register(self._listener.fileno(), select.EPOLLIN)
        self._conns: dict[int, socket.socket] = {}
        self._trusted: set[int] = set()
        self._buffer = bytearray(protocol.RECORD_MAX)
        self._accept_failed = False

    def fileno(self) -> int:
        return self._epoll.fileno()

    @property
    def peers(self) -> int:
        """How many connections are open (workers that have sent here)."""
        return len(self._conns)

    def read(self) -> list:
        """The frames of every message that has arrived (not waiting)."""
        messages: list = []
        for fd, _ in self._epoll.poll(0):
            if fd == self._listener.fileno():
                self._accept(messages)
            elif fd in self._conns:
                self._drain(self._conns[fd], messages)
        return messages

    def _accept(self, messages: list) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of descriptors: later, not at once
                if not self._accept_failed:
                    log.warning("the origin cannot take a worker's connection "
                                "for now: %s", exc)
                    self._accept_failed = True
                time.sleep(0.01)  # (the listener stays ready, so this is called again)
                return
            self._accept_failed = False
            try:
                _, uid, _ = _PEER.unpack(conn.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER.size))
                if uid != os.geteuid():
                    raise PermissionError(f"a connection from uid {uid} was refused")
                conn.setblocking(False)
            except OSError as exc:
                log.warning("outcomes socket: %s", exc)
                conn.close()
                continue
            self._conns[conn.fileno()] = conn
            try:
                self._epoll.register(conn.fileno(), select.EPOLLIN)
            except OSError as exc:
                # Not watched, so not read again: the worker's next send
                # fails (it goes through the broker from then on), and what
                # it sent already is read now, not lost.
                log.warning("outcomes socket: a worker's outcomes go through the "
                            "broker: %s", exc)
                conn.shutdown(socket.SHUT_RD)
            self._drain(conn, messages)  # what it sent already

    def _drain(self, conn: socket.socket, messages: list) -> None:
        fd = conn.fileno()
        view = memoryview(self._buffer)
        while True:
            try:
                size, _, flags, _ = conn.recvmsg_into([self._buffer])
            except BlockingIOError:
                return
            except OSError:
                size, flags = 0, 0
            if size == 0:  # the worker is gone
                self._drop(fd)
                return
            if fd not in self._trusted:
                if flags & socket.MSG_TRUNC or not self._same(bytes(view[:size]),
                                                               self._token):
                    log.warning("outcomes socket: a connection without the run's "
                                "token was closed")
                    self._drop(fd)
                    return
                self._trusted.add(fd)
                continue
            try:
                if flags & socket.MSG_TRUNC:
                    raise protocol.ProtocolError(
                        f"a record over {protocol.RECORD_MAX} bytes")
                messages.append(protocol.split_record(view[:size]))
            except protocol.ProtocolError as exc:
                log.warning("outcomes socket: dropped a record: %s", exc)

    def _drop(self, fd: int) -> None:
        with contextlib.suppress(OSError):  # (one never watched)
            self._epoll.unregister(fd)
        self._trusted.discard(fd)
        self._conns.pop(fd).close()

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        self._epoll.close()
        self._listener.close()


class OutcomesOutbox:
    """A worker's end: sends a message to the origin whole, at once, or not
    at all (then the caller sends it through the broker).

    Once the origin has closed the connection, nothing more goes this way:
    the origin closes only a connection it refuses, or as the run ends."""

    RETRY = 1.0  # after a failed connect, seconds before the next try

    def __init__(self, endpoint: str, keys: dict | None):
        self._path = ipc.path_of(endpoint)
        self._token = _outcomes_token(endpoint, keys)
        self._sock: socket.socket | None = None
        self._largest = 0  # the largest record the socket takes
        self._retry_at = 0.0
        self._closed = False

    def send(self, frames: list) -> bool:
        """Whether ``frames`` went, as one record."""
        if self._sock is None and not self._connect():
            return False
        buffers, size = protocol.record(frames)
        try:
            if size > self._largest:
                raise OSError(errno.EMSGSIZE, f"{size} bytes is over {self._largest}")
            self._sock.sendmsg(buffers, (), socket.MSG_NOSIGNAL)  # type: ignore[union-attr]
        except BlockingIOError:
            log.debug("an outcome goes through the broker: the origin has not "
                      "read those before it")
            return False
        except OSError as exc:
            log.debug("an outcome goes through the broker: %s", exc)
            if exc.errno in _CLOSED:
                self.close()  # the origin is gone, or refused this worker
            return False
        return True

    def _connect(self) -> bool:
        now = time.monotonic()
        if self._closed or now < self._retry_at:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * protocol.RECORD_MAX)
            # A record may be as large as the send buffer the kernel allows,
            # less its own overhead (net.core.wmem_max caps it).
            self._largest = min(protocol.RECORD_MAX,
                                sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - 64)
            sock.connect(self._path)
            sock.send(self._token, socket.MSG_NOSIGNAL)
        except OSError as exc:
            sock.close()
            self._retry_at = now + self.RETRY
            log.debug("outcomes go through the broker for now (%s)", exc)
            return False
        self._sock = sock
        return True

    def close(self) -> None:
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None
