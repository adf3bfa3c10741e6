"""Run settings: one dataclass, and the one place that reads the environment.

The launcher builds a ``Config`` from its command line and the ``SCOOP_RT_*``
environment variables, then hands it to every process of the run inside the
bootstrap message, so all of them agree on the same values.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable

from .envnames import PREFIX as ENV_PREFIX


@dataclass
class Config:
    """Every tunable of a run. Times are in seconds."""

    # Heartbeats between the broker and each client: a peer is declared gone
    # after ``heartbeat_misses`` intervals without a word from it.
    heartbeat_interval: float = 1.0
    heartbeat_misses: int = 5
    # ZeroMQ sockets are authenticated and encrypted with CURVE keys made per
    # run (the origin's Unix socket for outcomes checks a token made from them).
    secure: bool = True
    # How long the launcher waits for the processes of a run to leave on
    # their own before it terminates, then kills them.
    shutdown_grace: float = 1.5
    # How many attempts a task gets when the workers running it die.
    max_attempts: int = 3
    # Most tasks a worker asks for ahead of the one it runs, while its tasks
    # are short: enough to cover about 2 ms of work. It saves a broker round
    # trip between short tasks. The broker sends tasks ahead only while its
    # queue is deep (a task sent ahead can no longer be cancelled); 0 turns
    # it off.
    prefetch: int = 32
    # On a run local to one machine, the origin runs a task itself when the
    # script waits on it (result() or exception() with no timeout) before the
    # task has left the process: the newest task is held back up to 5 ms for
    # that. Such a task sees IS_ORIGIN true and the origin's pid, like a
    # direct call.
    run_in_origin: bool = True
    # Local brokers and workers are forked from the launcher, which has
    # imported what they need once, instead of each starting a new
    # interpreter (see launcher.spawn).
    fork: bool = True
    # Tasks in flight per worker for a lazy ``map`` (the input is read ahead
    # by this many chunks per worker, no more).
    map_window_per_worker: int = 4
    # Logging: -1 errors only, 0 warnings too, 1 info, 2 debug.
    verbosity: int = 0
    debug: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)  # a typo must not turn a setting off unnoticed


_KIND_NAMES = {bool: "switch (1/0, true/false, yes/no, on/off)",
               int: "whole number", float: "number", str: "text"}
_CONVERTERS: dict[type, Callable[[str], Any]] = {bool: _boolean, int: int, float: float, str: str}


def from_environment(environ: os._Environ | dict | None = None) -> Config:
    """A ``Config`` whose defaults are overridden by ``SCOOP_RT_<FIELD>``.

    A value that does not parse is an error naming the variable.
    """
    environ = os.environ if environ is None else environ
    config = Config()
    for f in dataclasses.fields(Config):
        name = ENV_PREFIX + f.name.upper()
        if name not in environ:
            continue
        kind = type(getattr(config, f.name))
        try:
            setattr(config, f.name, _CONVERTERS[kind](environ[name]))
        except ValueError:
            raise ValueError(
                f"environment variable {name}={environ[name]!r} is not a "
                f"valid {_KIND_NAMES[kind]}") from None
    return config
