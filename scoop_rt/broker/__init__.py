"""The broker process: queues tasks, hands them to workers, routes results
back, heartbeats everyone and keeps the shared constants. It never unpickles
a payload.

    broker.py      the process: its socket, the message handlers, the loop
    tasktable.py   every task it holds and where each stands (plain data)
    scheduling.py  the workers' slots and the dispatch policy (``assign``)
"""

from .broker import Broker, main

__all__ = ["Broker", "main"]
