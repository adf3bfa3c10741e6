"""Sockets of a run: where they bind, and how they are secured.

Socket security is switched on here and nowhere else. With ``secure`` set,
every connection uses ZeroMQ CURVE: the broker holds the run's server key
pair and accepts only clients presenting the run's client public key (checked
by a ZAP handler), so a peer without the keys can neither connect nor read
anything. The keys are made fresh for each run by ``make_keys``.
"""

from __future__ import annotations

import zmq

from .protocol import heartbeat_identity


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


class _OnlyRunClients:
    """ZAP credentials check: the run's client key, and nothing else."""

    def __init__(self, client_public: str):
        self._key = client_public.encode()

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self._key


def _tune(sock: zmq.Socket) -> None:
    sock.linger = 0
    sock.sndhwm = 0
    sock.rcvhwm = 0


# pyzmq's send_multipart/recv_multipart spend most of a small message's time
# on per-frame enum arithmetic; these do the same with plain integers.
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)


def send_message(sock: zmq.Socket, frames: list) -> None:
    """Send a multipart message without copying large frames."""
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


def bind_router(ctx: zmq.Context, host: str, keys: dict | None,
                port_range: tuple[int, int] | None = None) -> Listener:
    """The broker's ROUTER socket bound on ``host``.

    The port is ephemeral, or the first free one in ``port_range``.
    """
    sock = ctx.socket(zmq.ROUTER)
    _tune(sock)
    # Hundreds of workers (three sockets each) connect at once: the default
    # queue of 100 pending connections drops most, and they retry seconds later.
    sock.backlog = 4096
    auth = None
    if keys:
        from zmq.auth.thread import ThreadAuthenticator
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve_callback(
            "*", credentials_provider=_OnlyRunClients(keys["client_public"]))
        sock.curve_server = True
        sock.curve_publickey = keys["server_public"].encode()
        sock.curve_secretkey = keys["server_secret"].encode()
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
        sock.curve_serverkey = keys["server_public"].encode()
        sock.curve_publickey = keys["client_public"].encode()
        sock.curve_secretkey = keys["client_secret"].encode()
    sock.connect(endpoint)
    return sock


def connect_heartbeat(ctx: zmq.Context, endpoint: str, keys: dict | None,
                      identity: bytes) -> zmq.Socket:
    """The heartbeat socket of the client whose main socket is ``identity``."""
    return connect_dealer(ctx, endpoint, keys, heartbeat_identity(identity))
