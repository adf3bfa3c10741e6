"""The wire format, and a message sent whole."""

import signal
import threading
import time

import pytest
import zmq

from scoop_rt import protocol, serialization, transport
from scoop_rt.protocol import Msg, ProtocolError


def test_every_message_type_round_trips():
    # A batch's index: one task of 3 frames, its first (6 bytes) in heads.
    samples = {protocol.INT: 2**40, protocol.STR: "héllo",
               protocol.INTS: [2**40, -1, 3, 6], protocol.BYTES: b"pickle"}
    for msg_type, spec in protocol.SCHEMA.items():
        # (a TASK's reply_to: one tid per task of its index)
        values = [[5] if name == "reply_to" else samples[codec] for name, codec in spec]
        payload = [b"pickle", b"buffer"] if msg_type in protocol.PAYLOAD else []
        frames = protocol.encode(msg_type, *values, payload=payload)
        msg = protocol.decode(frames)
        assert msg.type == msg_type
        assert list(msg.fields) == values
        assert msg.payload == payload


def test_fields_are_named():
    msg = protocol.decode(protocol.encode(Msg.STATE, 7, 1))
    assert (msg.fields.tid, msg.fields.state) == (7, 1)


def test_batches_split_into_their_entries():
    entries = [(7, 0, [b"head", b"buffer"]), (8, 1, []), (9, 0, [b"one"])]
    frames = protocol.encode_batch(Msg.RESULT, entries)
    assert len(frames) == 4  # header, index, heads, one buffer
    msg = protocol.decode(frames)
    assert msg.fields.index == [7, 0, 2, 4, 8, 1, 0, 0, 9, 0, 1, 3]
    assert msg.fields.heads == b"headone"
    assert protocol.split_batch(msg) == entries


def test_a_task_batch_carries_whom_each_outcome_goes_to():
    entries = [(7, int(protocol.Flags.DIRECT), [b"head"]), (8, 0, [b"one"])]
    msg = protocol.decode(protocol.encode_batch(Msg.TASK, entries, [41, -1]))
    assert msg.fields.reply_to == [41, -1]
    assert protocol.split_batch(msg) == entries
    with pytest.raises(ProtocolError, match="1 reply_to tids for 2 tasks"):
        protocol.decode(protocol.encode_batch(Msg.TASK, entries, [41]))


@pytest.mark.parametrize("index, heads, payload, words", [
    ([1, 0, 1], b"", [], "groups of 4"),
    ([1, 0, 1, 5], b"x", [], "5 bytes of heads"),
    ([1, 0, 2, 1], b"x", [], "names 1 payload frames"),
    ([1, 0, 1, 1], b"x", [b"y"], "but it carries 1"),
    ([1, 0, -1, 0], b"", [], "negative"),
    ([1, 0, 0, 1], b"x", [], "impossible"),
])
def test_malformed_batches_raise_protocol_errors(index, heads, payload, words):
    with pytest.raises(ProtocolError, match=words):
        protocol.decode(protocol.encode(Msg.SUBMIT, index, heads, payload=payload))


@pytest.mark.parametrize("frames, words", [
    ([], "empty"),
    ([b"\x01"], "header of 1"),
    ([bytes((99, Msg.PING))], "version 99"),
    ([bytes((protocol.VERSION, 250))], "unknown message type 250"),
    ([bytes((protocol.VERSION, Msg.STATE)), b"12345678"], "needs 2 fields"),
    ([bytes((protocol.VERSION, Msg.STATE)), b"short", b"12345678"], "8"),
    ([bytes((protocol.VERSION, Msg.SUBMIT)), b"short", b""], "multiple of 8"),
    ([bytes((protocol.VERSION, Msg.PING)), b"extra"], "no payload"),
    ([bytes((protocol.VERSION, Msg.BYE)), b"\xff" * 3], "8"),
    ([bytes((protocol.VERSION, Msg.SETCONST)), b"\xff\xfe"], "UTF-8"),
])
def test_malformed_messages_raise_protocol_errors(frames, words):
    with pytest.raises(ProtocolError, match=words):
        protocol.decode(frames)


def test_encode_checks_field_count_and_payload():
    with pytest.raises(ProtocolError):
        protocol.encode(Msg.STATE, 1)
    with pytest.raises(ProtocolError):
        protocol.encode(Msg.PING, payload=[b"x"])


@pytest.mark.parametrize("reason, error", [
    (protocol.LostReason.NO_WORKERS, "NoWorkersError"),
    (protocol.LostReason.TOO_MANY_ATTEMPTS, "WorkerLostError"),
    (protocol.LostReason.NO_RETRY_LOST, "WorkerLostError"),
])
def test_a_lost_outcome_carries_its_reason_and_the_users_text(reason, error):
    """A LOST outcome crosses the wire in a RESULT batch; its submitter's
    future fails with the exception its reason names, and the message is
    the broker's text, whatever words it starts with."""
    import concurrent.futures as cf
    from scoop_rt import errors, tasks

    text = "wörker w3 on host n07 (killed by SIGKILL): no workers, or some"
    frames = protocol.encode_batch(
        Msg.RESULT, [(5, int(protocol.Status.LOST), protocol.lost_payload(reason, text))])
    (tid, status, payload), = protocol.split_batch(protocol.decode(frames))
    assert (tid, status) == (5, protocol.Status.LOST)
    assert protocol.read_lost(payload) == (reason, text)
    future = cf.Future()
    tasks.settle(future, False, status, payload)
    exc = future.exception(timeout=0)
    assert type(exc) is getattr(errors, error)
    assert str(exc) == text


@pytest.mark.parametrize("payload, words", [
    ([], "without its reason"), ([b""], "without its reason"),
    ([b"\x09no workers are left"], "unknown reason 9"),
])
def test_a_malformed_lost_outcome_is_a_protocol_error(payload, words):
    with pytest.raises(ProtocolError, match=words):
        protocol.read_lost(payload)


def test_heartbeat_identity_names_its_owner():
    hb = protocol.heartbeat_identity(b"w0:12:ab")
    assert protocol.heartbeat_owner(hb) == b"w0:12:ab"
    assert protocol.heartbeat_owner(b"w0:12:ab") is None


def test_a_chunk_of_a_range_travels_as_a_range():
    """A map over a range sends each chunk as a range: its three numbers,
    not a list of its items."""
    frames = serialization.dump_chunk(abs, range(-10**6, 10**6, 3))
    assert sum(len(memoryview(frame)) for frame in frames) < 200
    assert serialization.loads(frames)[2] == range(-10**6, 10**6, 3)
    listed = serialization.dump_chunk(abs, iter(range(1000)))
    assert serialization.loads(listed)[2] == list(range(1000))


def test_a_chunk_of_a_numpy_array_travels_as_an_array():
    np = pytest.importorskip("numpy")
    rows = np.arange(30_000.0).reshape(3000, 10)[100:2100]
    frames = serialization.dump_chunk(abs, rows)
    assert sum(len(memoryview(frame)) for frame in frames) < rows.nbytes + 1000
    calls = serialization.loads(frames)[2]
    assert type(calls) is np.ndarray and (calls == rows).all()


class _SignalledSocket(zmq.Socket):
    """A real socket that gets a signal after it sends a message's first frame."""

    signalled: list = []

    def send(self, data, flags=0, copy=True, track=False):
        result = super().send(data, flags, copy=copy, track=track)
        if flags & zmq.SNDMORE and not self.signalled:
            self.signalled.append(data)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        return result


def test_a_stop_signal_waits_until_the_message_is_whole():
    """A stop signal that comes while a message is being sent is handled
    when the message is whole: a message cut between two frames would be
    finished by the next one, and both dropped as malformed."""
    class Stopped(Exception):
        pass

    def stop(signum, frame):
        raise Stopped

    ctx = zmq.Context()
    ctx._socket_class = _SignalledSocket
    _SignalledSocket.signalled.clear()
    previous = signal.signal(signal.SIGTERM, stop)
    sender, receiver = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        receiver.bind("inproc://whole")
        sender.connect("inproc://whole")
        with pytest.raises(Stopped):
            transport.send_message(sender, [b"one", b"two", b"three"])
        assert _SignalledSocket.signalled == [b"one"]
        assert receiver.poll(5000)
        assert receiver.recv_multipart() == [b"one", b"two", b"three"]
        with pytest.raises(Stopped):  # outside a send, the handler runs at once
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
            time.sleep(5)
    finally:
        signal.signal(signal.SIGTERM, previous)
        sender.close(linger=0)
        receiver.close(linger=0)
        ctx.term()


def test_a_stop_signal_handled_as_the_mask_changes_leaves_it_as_it_was(monkeypatch):
    """Python runs the handlers of signals that came just before as
    pthread_sigmask returns. One that raises as the stop signals are being
    blocked (played here by wrapping the real call) must not leave them
    blocked for good: the main thread would never be stopped again."""
    real = signal.pthread_sigmask

    def sigmask(how, mask):
        old = real(how, mask)
        if how == signal.SIG_BLOCK and mask:
            raise KeyboardInterrupt  # the handler of a Ctrl-C that just came
        return old

    before = real(signal.SIG_BLOCK, ())
    monkeypatch.setattr(signal, "pthread_sigmask", sigmask)
    try:
        with pytest.raises(KeyboardInterrupt):
            with transport.stop_signals_held():
                pass
    finally:
        monkeypatch.undo()
    assert real(signal.SIG_BLOCK, ()) == before


def test_a_record_carries_a_message_and_a_malformed_one_is_refused():
    frames = [b"head", b"", b"x" * 1000]
    buffers, size = protocol.record(frames)
    record = b"".join(buffers)
    assert size == len(record)
    assert protocol.split_record(memoryview(record)) == frames
    for bad, words in ((record[:3], "no head"), (record[:-1], "holds frames"),
                       (record + b"!", "holds frames"),
                       (b"\xff\xff\xff\xff" + b"\0" * 8, "cannot hold")):
        with pytest.raises(ProtocolError, match=words):
            protocol.split_record(memoryview(bad))


def _read_all(inbox, count, timeout=10):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += inbox.read()
    return got


def test_an_outcome_goes_whole_or_not_at_all_and_never_blocks(tmp_path):
    """While the origin reads nothing, a worker's sends return at once, True
    while the socket takes them, then False (the caller goes through the
    broker); what went arrives whole and in order, and a record over the
    largest goes not at all."""
    endpoint = "ipc://" + str(tmp_path / "origin")
    keys = transport.client_keys(transport.make_keys())
    inbox = transport.OutcomesInbox(endpoint, keys)
    outbox = transport.OutcomesOutbox(endpoint, keys)
    try:
        value = b"v" * 100_000
        assert not outbox.send([b"x" * protocol.RECORD_MAX])
        sent = 0
        started = time.monotonic()
        while outbox.send([b"%d" % sent, value]):
            sent += 1
            assert sent < 10_000, "the socket never filled"
        assert time.monotonic() - started < 30
        assert sent > 0
        got = _read_all(inbox, sent)
        assert got == [[b"%d" % i, value] for i in range(sent)]
        assert outbox.send([b"again", value])  # room again, once read
        assert _read_all(inbox, 1) == [[b"again", value]]
        assert inbox.peers == 1  # all on the one connection
    finally:
        outbox.close()
        inbox.close()
