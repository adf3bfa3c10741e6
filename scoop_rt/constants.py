"""Shared constants, as one process of a run knows them: those it set, and
those the broker sent it (CONST), kept pickled until first asked for, so a
constant that no task of this process reads is never unpickled here."""

from __future__ import annotations

from typing import Any

from . import protocol, serialization
from .connection import Connection
from .protocol import Msg


class Constants:
    def __init__(self, conn: Connection):
        self._conn = conn
        self.values: dict[str, Any] = {}
        self._frames: dict[str, list] = {}
        conn.handlers[Msg.CONST] = self.on_const

    def __contains__(self, name: str) -> bool:
        return name in self.values or name in self._frames

    def set_const(self, name: str, value: Any) -> None:
        """Keep ``value`` and send it to the broker, for every other process."""
        self.values[name] = value
        self._conn.outbox.send(Msg.SETCONST, name, payload=serialization.dumps(value))

    def has_const(self, name: str) -> bool:
        self._conn.poll()
        return name in self

    def get_const(self, name: str, timeout: float | None) -> Any:
        """The constant's value once it is known here, or None after
        ``timeout`` seconds without it."""
        self._conn.block_until(lambda: name in self, timeout)
        if name not in self.values and name in self._frames:
            self.values[name] = serialization.loads(self._frames.pop(name))
        return self.values.get(name)

    def on_const(self, msg: protocol.Message) -> None:
        if msg.fields.name not in self.values:
            self._frames[msg.fields.name] = msg.payload
