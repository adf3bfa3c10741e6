"""The broker process: queues tasks, hands them to workers, routes results
back, heartbeats everyone and keeps the shared constants. It never unpickles
a payload."""

from .broker import Broker, main

__all__ = ["Broker", "main"]
