"""The wire format and the scheduling policy, without sockets."""

import pytest

from scoop_rt import protocol
from scoop_rt.broker.scheduling import Slots
from scoop_rt.protocol import Msg, ProtocolError


def test_every_message_type_round_trips():
    samples = {"INT": 2**40, "STR": "héllo"}
    for msg_type, spec in protocol.SCHEMA.items():
        values = [samples["INT"] if codec is protocol.INT else samples["STR"]
                  for _, codec in spec]
        payload = [b"pickle", b"buffer"] if msg_type in protocol.PAYLOAD else []
        frames = protocol.encode(msg_type, *values, payload=payload)
        msg = protocol.decode(frames)
        assert msg.type == msg_type
        assert list(msg.fields) == values
        assert msg.payload == payload


def test_fields_are_named():
    msg = protocol.decode(protocol.encode(Msg.RESULT, 7, 1, payload=[b"x"]))
    assert (msg.fields.tid, msg.fields.status) == (7, 1)


@pytest.mark.parametrize("frames, words", [
    ([], "empty"),
    ([b"\x01"], "header of 1"),
    ([bytes((99, Msg.PING))], "version 99"),
    ([bytes((protocol.VERSION, 250))], "unknown message type 250"),
    ([bytes((protocol.VERSION, Msg.SUBMIT)), b"12345678"], "needs 2 fields"),
    ([bytes((protocol.VERSION, Msg.SUBMIT)), b"short", b"12345678"], "8"),
    ([bytes((protocol.VERSION, Msg.PING)), b"extra"], "no payload"),
    ([bytes((protocol.VERSION, Msg.BYE)), b"\xff" * 3], "8"),
    ([bytes((protocol.VERSION, Msg.SETCONST)), b"\xff\xfe"], "UTF-8"),
])
def test_malformed_messages_raise_protocol_errors(frames, words):
    with pytest.raises(ProtocolError, match=words):
        protocol.decode(frames)


def test_encode_checks_field_count_and_payload():
    with pytest.raises(ProtocolError):
        protocol.encode(Msg.SUBMIT, 1)
    with pytest.raises(ProtocolError):
        protocol.encode(Msg.PING, payload=[b"x"])


def test_heartbeat_identity_names_its_owner():
    hb = protocol.heartbeat_identity(b"w0:12:ab")
    assert protocol.heartbeat_owner(hb) == b"w0:12:ab"
    assert protocol.heartbeat_owner(b"w0:12:ab") is None


def test_slots_hand_out_free_workers_in_turn():
    slots = Slots()
    for wid in (b"a", b"b", b"c"):
        slots.add(wid)
    slots.get(b"c").running.add(1)
    taken = []
    while (wid := slots.take()) is not None:
        slots.get(wid).running.add(len(taken) + 10)
        slots.changed(wid)
        taken.append(wid)
    assert taken == [b"a", b"b"]


def test_blocked_and_prefetch_slots_count():
    slots = Slots()
    slots.add(b"a")
    slots.get(b"a").running.add(1)
    assert slots.take() is None
    slots.get(b"a").blocked += 1        # its task waits on children
    slots.changed(b"a")
    assert slots.take() == b"a"
    slots.get(b"a").running.add(2)
    slots.get(b"a").prefetch = 1        # it asked for one ahead
    slots.changed(b"a")
    assert slots.take() == b"a"
    slots.get(b"a").running.add(3)
    slots.changed(b"a")
    assert slots.take() is None
    slots.remove(b"a")
    assert slots.take() is None and len(slots) == 0
