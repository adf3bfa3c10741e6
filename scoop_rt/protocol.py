"""The wire protocol: the one place that spells out every message.

A message is a ZeroMQ multipart message. The broker's ROUTER socket sees the
sender's identity first; after it come the same frames every peer sees:

    frame 0      two bytes: protocol VERSION, message type (``Msg``)
    frames 1..k  the type's fields, one frame each, in SCHEMA order
    frames k+1.. payload frames (types in PAYLOAD only): opaque bytes that
                 the broker forwards untouched and never unpickles

Who sends what:

    type       sender -> receiver        fields                         payload
    ---------  ------------------------  -----------------------------  -------------
    HELLO      client -> broker          role, name, host, pid,         -
                                         version, python
    WELCOME    broker -> client          size                           -
    REFUSED    broker -> client          reason                         -
    SUBMIT     client -> broker          index, heads                   the tasks' buffers
    TASK       broker -> worker          index, heads, reply_to         the tasks' buffers
    RESULT     worker -> broker          index, heads                   the outcomes' buffers
    RESULT     broker -> submitter       index, heads                   the outcomes' buffers
    RESULT     worker -> origin          index, heads                   the outcomes' buffers
                 (DIRECT ones, on the origin's own socket: see below)
    RECEIVED   origin -> broker          tids (the origin's)            -
    WAITING    worker -> broker          -                              -
    RESUMED    worker -> broker          -                              -
    PROBE      client -> broker          tid (the client's), cancel     -
    STATE      broker -> client          tid (the client's), state      -
    SETCONST   client -> broker          name                           the value
    CONST      broker -> every client    name                           the value
    PING       heartbeat -> broker       -                              -
    PONG       broker -> heartbeat       -                              -
    BYE        origin -> broker          code                           -
    SHUTDOWN   broker -> every client    reason                         -
    GONE       watcher -> broker         name, reason                   -
    CREDIT     worker -> broker          extra                          -
    RETURN     worker -> broker          tids (the broker's)            -
    NOTICE     broker -> origin (its hb)  text                           -

``SUBMIT``, ``TASK`` and ``RESULT`` carry a batch of one or more tasks: their
index is a list of four integers per task (tid, flags or status, how many
frames its payload has, and how long the first of them is); ``heads`` is the
first frame of every task's payload (its pickle), end to end; the payload
frames are the other frames (large buffers), task after task
(``encode_batch`` and ``split_batch``). A SUBMIT's and a RESULT-to-the-submitter's tids are the
client's own; a TASK's and a RESULT-from-a-worker's are the broker's. Sending
many small tasks in one message is what lets one broker serve a thousand
workers: its cost is per message far more than per byte.

An outcome's status (``Status``) says what its payload is:

    status     sender              payload
    ---------  ------------------  ------------------------------------------
    OK         worker (or broker,  the pickled return value
               relaying)
    ERROR      worker (or broker,  the pickled exception and traceback
               relaying)
    LOST       broker              one frame: a ``LostReason`` byte, then the
                                   text for the user, UTF-8 (``lost_payload``,
                                   ``read_lost``)
    DELIVERED  worker -> broker    none: the outcome went to the origin itself

On a run local to one machine, the origin marks its maps' chunks ``DIRECT``:
their outcomes skip the broker. A TASK's ``reply_to`` holds, for each of its
tasks, the submitter's tid for a DIRECT one (-1 for the others); the worker
sends that outcome straight to the origin's own socket, as a RESULT with the
origin's tid, and tells the broker with a RESULT entry of status DELIVERED
and no payload, batched as its other outcomes are: its slot is free. The
origin, once it has read them, tells the broker with RECEIVED, and the
broker forgets those tasks. Until then it keeps them, as its worker's: a
worker lost before the broker has RECEIVED has them run again elsewhere
(the broker cannot tell whether the origin will read the first outcome;
when it does, the second is dropped), and a PROBE finds them running, never
done before the origin has their values. An outcome that does not fit the
origin's socket goes as an ordinary RESULT instead, through the broker.

``WAITING``/``RESUMED`` tell the broker that a worker's running task blocked
on futures of its own (so the worker can take one more task meanwhile) and
that it carries on again. A *watcher* (the launcher, or the agent on a
remote host) sees worker processes exit and says so at once with ``GONE``,
naming the exit code or signal; heartbeats catch what no watcher sees.
``CREDIT`` sets how many tasks a worker wants to get ahead of the one it
runs (its prefetch), so short tasks never wait for a round trip; ``RETURN``
gives back tasks a worker holds but has not started once its running task has
run long, for the broker to hand to whoever is free. ``NOTICE``
carries a line for the user (a worker lost, and why) to the origin, whose
heartbeat thread logs it at once, busy script or not. ``PROBE`` asks where
a submitted task stands (``TaskState``), and with ``cancel`` set drops it if
no worker has it yet. ``PING`` comes from a client's heartbeat socket,
whose identity is the client's own plus ``HEARTBEAT_SUFFIX``.

The origin's socket for DIRECT outcomes is a Unix ``SOCK_SEQPACKET``
socket, not ZeroMQ (``transport.OutcomesInbox``): a worker's first record
on it is the run's token, each later one a whole message, its frames end to
end behind a head that says how many there are and how long each is
(``record``, ``split_record``), ``RECORD_MAX`` bytes at most.

A client has three sockets to the broker, told apart by identity suffix: its
main one (``HELLO``, and every message the broker sends it), a sending one
(``SEND_SUFFIX``: every other message it sends, from any of its threads,
under a lock), and a heartbeat one. The broker treats the sending socket as
its owner: replies go to the main socket.

Malformed input raises ``ProtocolError``, which receivers log and drop.
"""

from __future__ import annotations

import enum
import struct
from collections import namedtuple
from collections.abc import Sequence
from typing import Any, NamedTuple

VERSION = 6

HEARTBEAT_SUFFIX = b"!hb"
SEND_SUFFIX = b"!tx"


class ProtocolError(ValueError):
    """A message that does not follow this module's format."""


class Msg(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    REFUSED = 3
    SUBMIT = 4
    TASK = 5
    RESULT = 6
    WAITING = 7
    RESUMED = 8
    PROBE = 9
    STATE = 10
    SETCONST = 11
    CONST = 12
    PING = 13
    PONG = 14
    BYE = 15
    SHUTDOWN = 16
    GONE = 17
    CREDIT = 18
    NOTICE = 19
    RETURN = 20
    RECEIVED = 21


class Status(enum.IntEnum):
    """Outcome of a task, carried by RESULT."""

    OK = 0          # payload: the pickled return value
    ERROR = 1       # payload: a pickled exception (see serialization)
    LOST = 3        # payload: why the broker gave up on it (``lost_payload``)
    DELIVERED = 4   # no payload: sent straight to the origin (DIRECT)


class LostReason(enum.IntEnum):
    """Why the broker gave up on a task: the first byte of a LOST outcome,
    the text for the user after it (``lost_payload``). The submitter picks
    the exception from the reason, and shows the text as it is."""

    NO_WORKERS = 1         # every worker of the run is gone
    TOO_MANY_ATTEMPTS = 2  # its worker was lost on each of max_attempts tries
    NO_RETRY_LOST = 3      # its worker was lost, and it was submitted not to
                           # run twice (Flags.NO_RETRY)


class TaskState(enum.IntEnum):
    """Where a task stands at the broker, as STATE reports it."""

    PENDING = 0     # queued, no worker has it
    CANCELLED = 1   # was queued, and the PROBE that asked dropped it
    RUNNING = 2     # a worker has it
    UNKNOWN = 3     # finished, or never seen: its RESULT went out already


class Role(str, enum.Enum):
    ORIGIN = "origin"
    WORKER = "worker"
    WATCHER = "watcher"   # watches worker processes; see GONE


class Flags(enum.IntFlag):
    """Per-task options carried by SUBMIT and TASK."""

    NONE = 0
    NO_RETRY = 1    # the task must not run twice: fail it if its worker dies
    CHUNK = 2       # a chunk of a map: nobody cancels it alone, so one may
                    # wait at a worker, ready, even while the queue is short
    DIRECT = 4      # its outcome goes straight to the origin (a local run)


# Field codecs: how one field becomes one frame and back.
_INT = struct.Struct("!q")


def _enc_int(value: int) -> bytes:
    return _INT.pack(value)


def _dec_int(frame: bytes) -> int:
    if len(frame) != 8:
        raise ProtocolError(f"an integer field has {len(frame)} bytes, not 8")
    return _INT.unpack(frame)[0]


def _enc_str(value: str) -> bytes:
    return value.encode("utf-8")


def _dec_str(frame: bytes) -> str:
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"a text field is not UTF-8: {exc}") from None


def _enc_ints(values: Sequence[int]) -> bytes:
    return struct.pack(f"!{len(values)}q", *values)


def _dec_ints(frame: bytes) -> list:
    if len(frame) % 8:
        raise ProtocolError(f"an integer list field has {len(frame)} bytes, "
                            "not a multiple of 8")
    return list(struct.unpack(f"!{len(frame) // 8}q", frame))


INT = (_enc_int, _dec_int)
STR = (_enc_str, _dec_str)
INTS = (_enc_ints, _dec_ints)
BYTES = (bytes, bytes)

SCHEMA: dict[Msg, tuple[tuple[str, tuple], ...]] = {
    Msg.HELLO: (("role", STR), ("name", STR), ("host", STR), ("pid", INT),
                ("version", STR), ("python", STR)),
    Msg.WELCOME: (("size", INT),),
    Msg.REFUSED: (("reason", STR),),
    Msg.SUBMIT: (("index", INTS), ("heads", BYTES)),
    Msg.TASK: (("index", INTS), ("heads", BYTES), ("reply_to", INTS)),
    Msg.RESULT: (("index", INTS), ("heads", BYTES)),
    Msg.WAITING: (),
    Msg.RESUMED: (),
    Msg.PROBE: (("tid", INT), ("cancel", INT)),
    Msg.STATE: (("tid", INT), ("state", INT)),
    Msg.SETCONST: (("name", STR),),
    Msg.CONST: (("name", STR),),
    Msg.PING: (),
    Msg.PONG: (),
    Msg.BYE: (("code", INT),),
    Msg.SHUTDOWN: (("reason", STR),),
    Msg.GONE: (("name", STR), ("reason", STR)),
    Msg.CREDIT: (("extra", INT),),
    Msg.NOTICE: (("text", STR),),
    Msg.RETURN: (("tids", INTS),),
    Msg.RECEIVED: (("tids", INTS),),
}

PAYLOAD = frozenset({Msg.SUBMIT, Msg.TASK, Msg.RESULT, Msg.SETCONST, Msg.CONST})

# One named tuple per message type, so handlers read ``msg.fields.tid``.
FIELDS = {t: namedtuple(t.name.title(), [name for name, _ in spec])
          for t, spec in SCHEMA.items()}
_HEADERS = {t: bytes((VERSION, t)) for t in Msg}


class Message(NamedTuple):
    type: Msg
    fields: Any
    payload: list


def encode(msg_type: Msg, *fields: Any, payload: Sequence = ()) -> list:
    """Frames for one message (without the ROUTER identity)."""
    spec = SCHEMA[msg_type]
    if len(fields) != len(spec):
        raise ProtocolError(
            f"{msg_type.name} takes {len(spec)} fields, got {len(fields)}")
    frames = [_HEADERS[msg_type]]
    frames += [codec[0](value) for (_, codec), value in zip(spec, fields)]
    if payload:
        if msg_type not in PAYLOAD:
            raise ProtocolError(f"{msg_type.name} carries no payload")
        frames += payload
    return frames


BATCHES = frozenset({Msg.SUBMIT, Msg.TASK, Msg.RESULT})


def encode_batch(msg_type: Msg, entries: Sequence[tuple], *fields: Any) -> list:
    """Frames for a SUBMIT, TASK or RESULT carrying ``entries``, each
    ``(tid, flags or status, payload frames)``; ``fields`` are the type's
    fields after ``index`` and ``heads`` (a TASK's ``reply_to``).

    The first frame of every entry (a task's or outcome's pickle, small as a
    rule) goes into one ``heads`` frame; the others (large buffers) follow
    as frames of their own. Each frame costs every hop a send, a receive and,
    with CURVE, an encryption: a batch of small tasks now costs three (four
    for a TASK, with its ``reply_to``)."""
    index: list = []
    heads: list = []
    rest: list = []
    for tid, value, frames in entries:
        if frames:
            head = frames[0]
            heads.append(head)
            index += (tid, value, len(frames), len(head))
            rest += frames[1:]
        else:
            index += (tid, value, 0, 0)
    return encode(msg_type, index, b"".join(heads), *fields, payload=rest)


def split_batch(msg: Message) -> list:
    """The ``(tid, flags or status, payload frames)`` entries of a batch
    (``decode`` has checked that its index matches its frames)."""
    index, heads, rest = msg.fields.index, msg.fields.heads, msg.payload
    entries = []
    at = pos = 0
    for i in range(0, len(index), 4):
        count, size = index[i + 2], index[i + 3]
        if count:
            frames = [heads[pos:pos + size], *rest[at:at + count - 1]]
            pos += size
            at += count - 1
        else:
            frames = []
        entries.append((index[i], index[i + 1], frames))
    return entries


def _check_batch(msg_type: Msg, index: list, heads: int, frames: int) -> None:
    name = msg_type.name
    if len(index) % 4:
        raise ProtocolError(f"{name} has an index of {len(index)} numbers, "
                            "not groups of 4")
    counts, sizes = index[2::4], index[3::4]
    if any(c < 0 or s < 0 or (c == 0 and s) for c, s in zip(counts, sizes)):
        raise ProtocolError(f"{name} has a negative or impossible frame count "
                            "or size in its index")
    if sum(sizes) != heads:
        raise ProtocolError(f"{name}'s index names {sum(sizes)} bytes of "
                            f"heads, but it carries {heads}")
    named = sum(c - 1 for c in counts if c)
    if named != frames:
        raise ProtocolError(f"{name}'s index names {named} payload frames, "
                            f"but it carries {frames}")


def _as_bytes(frame: Any) -> bytes:
    return frame if isinstance(frame, bytes) else frame.bytes


def peek_type(frames: Sequence) -> Msg:
    """The type of a message, checking its version, without decoding fields."""
    if not frames:
        raise ProtocolError("an empty message")
    head = _as_bytes(frames[0])
    if len(head) != 2:
        raise ProtocolError(f"a header of {len(head)} bytes, not 2")
    if head[0] != VERSION:
        raise ProtocolError(
            f"protocol version {head[0]}, this side speaks {VERSION}: "
            "are both ends running the same scoop_rt?")
    try:
        return Msg(head[1])
    except ValueError:
        raise ProtocolError(f"unknown message type {head[1]}") from None


def decode(frames: Sequence) -> Message:
    """Parse the frames of one message (without the ROUTER identity).

    Frames may be ``bytes`` or ``zmq.Frame``; payload frames are returned
    as they came, so the broker can forward them without copying.
    """
    msg_type = peek_type(frames)
    spec = SCHEMA[msg_type]
    n = 1 + len(spec)
    if len(frames) < n:
        raise ProtocolError(
            f"{msg_type.name} needs {len(spec)} fields, got {len(frames) - 1}")
    if len(frames) > n and msg_type not in PAYLOAD:
        raise ProtocolError(f"{msg_type.name} carries no payload")
    values = [codec[1](_as_bytes(frame))
              for (_, codec), frame in zip(spec, frames[1:n])]
    if msg_type in BATCHES:
        _check_batch(msg_type, values[0], len(values[1]), len(frames) - n)
        if msg_type == Msg.TASK and len(values[2]) * 4 != len(values[0]):
            raise ProtocolError(f"TASK has {len(values[2])} reply_to tids for "
                                f"{len(values[0]) // 4} tasks")
    return Message(msg_type, FIELDS[msg_type](*values), list(frames[n:]))


def lost_payload(reason: LostReason, text: str) -> list:
    """The payload of a LOST outcome: one frame, the reason's byte, then
    the text for the user in UTF-8."""
    return [bytes((reason,)) + text.encode("utf-8")]


def read_lost(payload: Sequence) -> tuple[LostReason, str]:
    """The reason and the text of a LOST outcome's payload."""
    data = b"".join(_as_bytes(frame) for frame in payload)
    if not data:
        raise ProtocolError("a LOST outcome without its reason")
    try:
        reason = LostReason(data[0])
    except ValueError:
        raise ProtocolError(f"a LOST outcome with an unknown reason {data[0]}") from None
    return reason, data[1:].decode("utf-8", "replace")


def heartbeat_identity(identity: bytes) -> bytes:
    """The identity of the heartbeat socket that belongs to ``identity``."""
    return identity + HEARTBEAT_SUFFIX


def sending_identity(identity: bytes) -> bytes:
    """The identity of the sending socket that belongs to ``identity``."""
    return identity + SEND_SUFFIX


def sender_owner(identity: bytes) -> bytes:
    """The client a message came from: the owner of a sending socket."""
    if identity.endswith(SEND_SUFFIX):
        return identity[: -len(SEND_SUFFIX)]
    return identity


def heartbeat_owner(identity: bytes) -> bytes | None:
    """The client a heartbeat socket belongs to, or None for a main socket."""
    if identity.endswith(HEARTBEAT_SUFFIX):
        return identity[: -len(HEARTBEAT_SUFFIX)]
    return None


_COUNT = struct.Struct("!I")
RECORD_MAX = 1 << 20  # the largest record: larger outcomes take the broker


def record(frames: Sequence) -> tuple[list, int]:
    """The buffers of the record carrying ``frames`` (its head, then the
    frames), and its size in bytes."""
    sizes = [memoryview(frame).nbytes for frame in frames]
    head = struct.pack(f"!I{len(sizes)}I", len(sizes), *sizes)
    return [head, *frames], len(head) + sum(sizes)


def split_record(record: memoryview) -> list:
    """The frames of one record (see ``record``), as bytes."""
    if len(record) < _COUNT.size:
        raise ProtocolError(f"a record of {len(record)} bytes has no head")
    (count,) = _COUNT.unpack_from(record)
    at = _COUNT.size + 4 * count
    if at > len(record):
        raise ProtocolError(f"a record of {len(record)} bytes cannot hold "
                            f"{count} frame sizes")
    sizes = struct.unpack_from(f"!{count}I", record, _COUNT.size)
    if at + sum(sizes) != len(record):
        raise ProtocolError(f"a record of {len(record)} bytes holds frames of "
                            f"{sum(sizes)} bytes and a head of {at}")
    frames = []
    for size in sizes:
        frames.append(bytes(record[at:at + size]))
        at += size
    return frames
