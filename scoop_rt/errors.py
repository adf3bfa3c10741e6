"""Exceptions of the public API, importable from every layer."""

from __future__ import annotations


class RemoteTraceback(Exception):
    """The traceback of an exception raised on a worker, as text.

    The origin attaches one as ``__cause__`` of every exception that comes
    back from a worker, so an uncaught error shows where it really happened.
    """

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class RemoteError(Exception):
    """An exception raised remotely that could not be sent back as itself."""

    def __init__(self, type_name: str, message: str, traceback_text: str = ""):
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class WorkerLostError(Exception):
    """A task whose workers died under it as many times as it may be tried."""


class NoWorkersError(Exception):
    """A task that cannot run: every worker of the run is gone."""
