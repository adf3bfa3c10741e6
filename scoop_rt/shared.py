"""Shared constants: values set once and seen by every task submitted after.

The broker keeps each constant and sends it to every worker ahead of any
later task, so ``setConst`` needs no round trip and a task never sees a
constant missing that was set before it was submitted.
"""

from __future__ import annotations

from typing import Any

from . import runtime as _runtime

__all__ = ["setConst", "getConst", "set_const", "get_const"]


def setConst(**kwargs: Any) -> None:
    """Define shared constants by name. Defining a name twice is a TypeError."""
    rt = _runtime.get()
    for name in kwargs:
        if rt.has_const(name):
            raise TypeError(f"shared constant {name!r} is already defined; "
                            "constants cannot be changed once set")
    for name, value in kwargs.items():
        rt.set_const(name, value)


def getConst(name: str, timeout: float | None = 0.1) -> Any:
    """The shared constant ``name``, waiting up to ``timeout`` seconds for it
    to arrive (None: forever); None if it is not defined by then."""
    return _runtime.get().get_const(name, timeout)


set_const = setConst
get_const = getConst
