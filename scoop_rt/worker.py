"""The worker role: import the user's script, then run the tasks the broker
hands out and send back their outcomes.

Started by the launcher as ``python -m scoop_rt.worker``, with the bootstrap
on stdin. The script is imported as a module that is not ``__main__`` to its
own code, so its functions and globals exist and its
``if __name__ == "__main__":`` block does not run.

A task that waits on futures of its own keeps this worker serving: the wait
reads the broker's messages, and a new task that arrives meanwhile runs right
there, on top of the waiting one (see ``client.Client.block_until``).
"""

from __future__ import annotations

import os
import sys
import threading

from . import bootstrap, runtime, serialization, tasks
from .config import Config
from .client import Client, exit_now, log
from .protocol import Msg, Role

# Nested tasks run on the stack of the tasks that wait under them: give the
# serving thread a deep stack and Python a matching recursion limit.
STACK_BYTES = 512 * 1024 * 1024
RECURSION_LIMIT = 100_000


class WorkerClient(Client):
    role = Role.WORKER

    def __init__(self, boot: dict):
        super().__init__(boot)
        self._handlers[Msg.TASK] = self.on_task
        self._depth = 0
        self.script_error: str | None = None
        self.importing = False

    def _submit(self, frames: list, label: str, chunk: bool, flags):
        if self.importing:
            raise RuntimeError(
                "futures were used at the top level of the script, which every "
                "worker runs when it imports the script; put that code under "
                "'if __name__ == \"__main__\":'")
        return super()._submit(frames, label, chunk, flags)

    def serve(self) -> None:
        """Handle messages until the broker ends the run."""
        self.start()
        self.block_until(lambda: False, None)

    def blocking(self, starts: bool) -> None:
        # A task waiting on its children frees this worker for one more task.
        if self._depth:
            self.send(Msg.WAITING if starts else Msg.RESUMED)

    def on_task(self, msg) -> None:
        tid = msg.fields.tid
        self._depth += 1
        try:
            status, frames = tasks.execute(msg.payload, self.where(),
                                           self.script_error)
        finally:
            self._depth -= 1
        self.send(Msg.RESULT, tid, int(status), payload=frames)

    def where(self) -> str:
        return f"worker {self.name} (host {self.host}, pid {os.getpid()})"


def main() -> None:
    boot = bootstrap.read(sys.stdin)
    sys.stdin = open("/dev/null")
    bootstrap.setup_logging(Config.from_dict(boot["config"]), boot["name"])
    bootstrap.publish(boot, is_origin=False)
    # Whole lines reach the launcher as soon as they are printed.
    sys.stdout.reconfigure(line_buffering=True)
    client = WorkerClient(boot)
    runtime.current = client
    load_script(client, boot)
    threading.stack_size(STACK_BYTES)
    sys.setrecursionlimit(RECURSION_LIMIT)
    server = threading.Thread(target=_serve, args=(client,), name="scoop_rt-serve")
    server.start()
    server.join()


def _serve(client: WorkerClient) -> None:
    try:
        client.serve()
    except BaseException as exc:  # the serving loop itself failed: say so
        log.error("%s stopped: %r", client.name, exc)
        exit_now(1)


def load_script(client: WorkerClient, boot: dict) -> None:
    """Import the user's script; a failure is kept to explain task errors."""
    script = boot.get("script")
    if not script:
        return
    module = bootstrap.script_module(script, serialization.SCRIPT_MODULE)
    client.importing = True
    try:
        code = bootstrap.prepare_script(script, boot.get("argv", []))
        exec(code, module.__dict__)
    except BaseException as exc:  # the origin reports the script's own errors
        client.script_error = f"{type(exc).__name__}: {exc}"
        log.debug("could not import %s: %s", script, client.script_error)
    finally:
        client.importing = False


if __name__ == "__main__":
    main()
