"""scoop_rt: a futures runtime that spreads Python work over the cores of one
machine or many, with SCOOP's API.

    from scoop_rt import futures
    results = list(futures.map(simulate, params))

Run with ``python -m scoop_rt -n 8 script.py``. The attributes below describe
this process's place in the run; the runtime fills them in when it starts.
"""

from __future__ import annotations

# (typing's own would cost every process's start an import; type checkers
# treat any constant of this name alike)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .bootstrap import BrokerInfo

__version__ = "0.1.0"

IS_ORIGIN = True     # this process runs the script's __main__
IS_RUNNING = False   # this process belongs to a launched run
BROKER: BrokerInfo | None = None  # BrokerInfo(endpoint, host) of the run's broker
DEBUG = False
SIZE = 1             # how many workers the run has
worker = "origin@local"  # this process's name in the run, unique per process


def __getattr__(name: str):
    """``scoop_rt.logger``, the runtime's ``logging.Logger``: made on first
    use, because importing ``logging`` would delay every process's start,
    the launcher's first, before anything else can start."""
    if name == "logger":
        import logging
        return logging.getLogger("scoop_rt")
    raise AttributeError(f"module 'scoop_rt' has no attribute {name!r}")
