"""How a process of a run starts: read the bootstrap, set up logging and the
public module attributes, and load the user's script.

The bootstrap is one JSON document written by the launcher on a pipe (a
worker's stdin, or an inherited descriptor for the origin), never on a
command line or in the environment, since it carries the run's keys. Its
shape is the dataclasses below, one per reader; each field's type and
default are spelled there and nowhere else.

    document    written by                      read by
    ----------  ------------------------------  ---------------------------------
    BrokerBoot  launcher/run.py, _broker_boot   broker/broker.py: main, Broker
    ClientBoot  launcher/run.py, _client_boot;  origin.py: main, make_client;
                launcher/agent.py passes on     worker.py: main, load_script;
                each of an AgentBoot's          client.py: Client;
                                                bootstrap.py: publish
    AgentBoot   launcher/run.py, _start_remote  launcher/agent.py: main
                (sent by launcher/ssh.py,
                SSHHost.start_agent)

    BrokerBoot field  type              default      meaning
    ----------------  ----------------  -----------  ----------------------------
    config            Config            (required)   the run's settings
    version           str               (required)   scoop_rt version clients must run
    size              int               (required)   the run's workers
    keys              dict | None       None         the broker's CURVE keys
                                                     (``transport.make_keys``)
    bind              str               "127.0.0.1"  interface to bind, or the ipc
                                                     endpoint of ``listen_fd``
    listen_fd         int | None        None         a bound socket to take over
    port_range        (int, int) | None None         TCP ports the broker may bind
    parent_pid        int | None        None         the launcher's pid (None: the
                                                     broker's parent)
    shm               str | None        None         the run's shared-memory token

    ClientBoot field  type              default      meaning
    ----------------  ----------------  -----------  ----------------------------
    config            Config            (required)   the run's settings
    endpoint          str               (required)   the broker's, as seen from here
    name              str               (required)   "origin", "w0", "w1", ...
    size              int               (required)   the run's workers
    keys              dict | None       None         the clients' CURVE keys
                                                     (``transport.client_keys``)
    script            str | None        None         the user's script (the origin
                                                     requires it; a worker without
                                                     one imports nothing)
    argv              list[str]         []           the script's arguments
    host              str | None        None         this process's host as the
                                                     launcher names it (None: uname)
    broker_host       str               ""           the broker's host
    shm               str | None        None         the run's shared-memory token
    local             bool              False        every process on one machine
    outcomes          str | None        None         the origin's DIRECT outcomes
                                                     endpoint (local runs only)

    AgentBoot field   type              default      meaning
    ----------------  ----------------  -----------  ----------------------------
    workers           list[ClientBoot]  (required)   one per worker on that host

An unknown key is an error, like a missing required one: the launcher has
already refused any host whose scoop_rt and Python versions differ from its
own, so both ends of a bootstrap run the same code, and a key one end does not
know means a stale or mixed install; dropping it silently would lose a
setting without a word. (``Config`` keeps ignoring unknown settings: it also
reads what users and older runs wrote.) Either error is one line naming the
document and the field, raised as ``BootError``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import sys
import types
from collections import namedtuple
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from . import shm
from .config import Config
from .envnames import ROLE as ENV_ROLE

BrokerInfo = namedtuple("BrokerInfo", "endpoint host")

B = TypeVar("B", bound="_Boot")


class BootError(ValueError):
    """A bootstrap that is not what its reader expects; the message is one
    line naming the document and the field."""


class _Boot:
    """What the bootstrap documents share: conversion to and from JSON,
    with unknown and missing fields as ``BootError``."""

    def to_dict(self) -> dict:
        """A dict of plain JSON values, every field present."""
        return {f.name: self._encode(f.name, getattr(self, f.name))
                for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls: type[B], data: Any) -> B:
        what = cls.__name__
        if not isinstance(data, dict):
            raise BootError(f"{what}: expected a JSON object, got {type(data).__name__}")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        names = {f.name for f in fields}
        unknown = sorted(str(key) for key in data if key not in names)
        if unknown:
            raise BootError(f"{what}: unknown field {unknown[0]!r}"
                            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
        for f in fields:
            if (f.name not in data and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING):
                raise BootError(f"{what}: missing required field {f.name!r}")
        return cls(**{key: cls._decode(key, value) for key, value in data.items()})

    @classmethod
    def from_json(cls: type[B], text: str | bytes) -> B:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BootError(f"{cls.__name__}: not a JSON document ({exc})") from None
        return cls.from_dict(data)

    # Fields whose JSON form is not their Python one convert here.

    def _encode(self, name: str, value: Any) -> Any:
        return value.to_dict() if isinstance(value, Config) else value

    @classmethod
    def _decode(cls, name: str, value: Any) -> Any:
        if name == "config":
            if not isinstance(value, dict):
                raise BootError(f"{cls.__name__}: field 'config' is not a JSON object")
            return Config.from_dict(value)
        return value


@dataclass
class BrokerBoot(_Boot):
    """The broker's bootstrap, on its stdin (see the module's table)."""

    config: Config
    version: str
    size: int
    keys: dict | None = None
    bind: str = "127.0.0.1"
    listen_fd: int | None = None
    port_range: tuple[int, int] | None = None
    parent_pid: int | None = None
    shm: str | None = None

    @classmethod
    def _decode(cls, name: str, value: Any) -> Any:
        if name == "port_range" and value is not None:
            return tuple(value)  # a JSON list
        return super()._decode(name, value)


@dataclass
class ClientBoot(_Boot):
    """An origin's or a worker's bootstrap (see the module's table)."""

    config: Config
    endpoint: str
    name: str
    size: int
    keys: dict | None = None
    script: str | None = None
    argv: list[str] = field(default_factory=list)
    host: str | None = None
    broker_host: str = ""
    shm: str | None = None
    local: bool = False
    outcomes: str | None = None


@dataclass
class AgentBoot(_Boot):
    """A host agent's bootstrap, one JSON line on its SSH channel: the
    bootstraps of the workers it is to start on its host."""

    workers: list[ClientBoot]

    def _encode(self, name: str, value: Any) -> Any:
        if name == "workers":
            return [boot.to_dict() for boot in value]
        return super()._encode(name, value)

    @classmethod
    def _decode(cls, name: str, value: Any) -> Any:
        if name == "workers":
            if not isinstance(value, list):
                raise BootError(f"{cls.__name__}: field 'workers' is not a JSON list")
            return [ClientBoot.from_dict(boot) for boot in value]
        return super()._decode(name, value)


def read(stream: IO[Any], kind: type[B]) -> B:
    """The bootstrap document of type ``kind`` from a pipe, read to its end.
    A document that is not one exits with a line saying what is wrong."""
    data = stream.read()
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    if not data.strip():
        if ENV_ROLE in os.environ:
            raise SystemExit(2)  # the launcher gave up; it says why
        raise SystemExit("scoop_rt: this process is started by the launcher; "
                         "run 'python -m scoop_rt script.py' instead")
    try:
        return kind.from_json(data)
    except BootError as exc:
        raise SystemExit(f"scoop_rt: unusable bootstrap from the launcher: {exc}") from None


def setup_logging(config: Config, name: str) -> logging.Logger:
    """The runtime logs to stderr only, one line a message."""
    logger = logging.getLogger("scoop_rt")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            f"[scoop_rt %(levelname)s {name}] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    levels = [logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG]
    level = levels[max(-1, min(config.verbosity, 2)) + 1]
    logger.setLevel(logging.DEBUG if config.debug else level)
    return logger


def publish(boot: ClientBoot, is_origin: bool) -> None:
    """Fill the public attributes of the ``scoop_rt`` module for this run."""
    import scoop_rt
    scoop_rt.IS_ORIGIN = is_origin
    scoop_rt.IS_RUNNING = True
    scoop_rt.SIZE = boot.size
    scoop_rt.DEBUG = boot.config.debug
    scoop_rt.BROKER = BrokerInfo(boot.endpoint, boot.broker_host)
    scoop_rt.worker = f"{boot.name}@{boot.host or os.uname().nodename}"
    # Large buffers through /dev/shm when the whole run is on this machine.
    shm.setup(boot.shm)


def script_module(path: str, module_name: str) -> types.ModuleType:
    """A fresh module for the script at ``path``, registered under both the
    names a pickled reference to its globals may use."""
    from .serialization import SCRIPT_MODULES
    module = types.ModuleType(module_name)
    module.__file__ = path
    module.__builtins__ = __builtins__  # type: ignore[attr-defined]
    module.__loader__ = None
    module.__spec__ = None
    for name in SCRIPT_MODULES:
        sys.modules[name] = module
    return module


def prepare_script(path: str, argv: list) -> types.CodeType:
    """Compile the script with the interpreter state a plain run would have:
    ``sys.argv``, and the script's folder first on ``sys.path``.

    A SyntaxError propagates to the caller, which reports it like Python does.
    """
    sys.argv = [path, *argv]
    folder = os.path.dirname(os.path.abspath(path))
    # ``python -m`` put the current folder first; ``python script.py`` would
    # have put the script's folder there instead.
    if sys.path:
        sys.path[0] = folder
    else:
        sys.path.insert(0, folder)
    with io.open_code(path) as f:
        source = f.read()
    return compile(source, path, "exec", dont_inherit=True)


def warm_allocator(objects: int = 40_000) -> None:
    """Make and drop ``objects`` small objects and a list of them: Python
    keeps one empty arena of its small-object allocator for the next ones
    (about 1 MiB, mapped and touched), and glibc's thresholds for large
    blocks rise, so the first tasks and results do not each pay the
    kernel's page faults (0.3 ms of a first map of 20,000 calls here)."""
    data = list(range(1 << 20, (1 << 20) + objects))
    del data
