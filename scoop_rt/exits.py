"""Leaving a process at once: shared by the launcher and the clients, and
light enough for the launcher to import before it starts anything."""

from __future__ import annotations

import os
import sys


def flush_stdio() -> None:
    """Write out what the process printed so far (streams closed or gone
    are skipped)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def exit_code(code: object) -> int:
    """The exit code for ``SystemExit(code)``, as the interpreter makes it:
    None is 0, a number is itself, anything else is printed and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def exit_now(code: int) -> None:
    """Leave the process at once, without Python's teardown of its modules,
    after writing out what it printed."""
    flush_stdio()
    os._exit(code)
