"""How a process of a run starts: read the bootstrap, set up logging and the
public module attributes, and load the user's script.

The bootstrap is one JSON document written by the launcher on a pipe (a
worker's stdin, or an inherited descriptor for the origin), never on a
command line or in the environment, since it carries the run's keys.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import types
from collections import namedtuple
from typing import IO

from . import shm
from .config import Config
from .envnames import ROLE as ENV_ROLE

BrokerInfo = namedtuple("BrokerInfo", "endpoint host")


def read(stream: IO) -> dict:
    """The bootstrap document from a pipe, read to its end."""
    data = stream.read()
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    if not data.strip():
        if ENV_ROLE in os.environ:
            raise SystemExit(2)  # the launcher gave up; it says why
        raise SystemExit("scoop_rt: this process is started by the launcher; "
                         "run 'python -m scoop_rt script.py' instead")
    return json.loads(data)


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


def publish(boot: dict, is_origin: bool) -> None:
    """Fill the public attributes of the ``scoop_rt`` module for this run."""
    import scoop_rt
    config = Config.from_dict(boot["config"])
    scoop_rt.IS_ORIGIN = is_origin
    scoop_rt.IS_RUNNING = True
    scoop_rt.SIZE = boot["size"]
    scoop_rt.DEBUG = config.debug
    scoop_rt.BROKER = BrokerInfo(boot["endpoint"], boot.get("broker_host", ""))
    scoop_rt.worker = f"{boot['name']}@{boot.get('host') or os.uname().nodename}"
    # Large buffers through /dev/shm when the whole run is on this machine.
    shm.setup(boot.get("shm"))


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
