"""The origin role: the user's own process, running the script as ``__main__``.

Started by the launcher as ``python -m scoop_rt.origin script.py args...``,
with the bootstrap on the inherited descriptor named by ``SCOOP_RT_BOOT_FD``.
stdin, stdout and stderr are the user's. The process exits with the
script's code: ``sys.exit(n)`` gives n, an uncaught exception prints its
traceback and gives 1, as ``python script.py`` would.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

from . import bootstrap, protocol, runtime, transport, tuning
from .bootstrap import ClientBoot
from .client import Client, log
from .envnames import BOOT_FD as ENV_BOOT_FD
from .exits import exit_code, exit_now
from .protocol import Flags, Msg, Role


def make_client(boot: ClientBoot) -> Client:
    """The origin's client. On a run local to this machine, a task the
    script waits on before it has left (``Future.result()`` right after
    ``submit``) runs here, as a direct call would: no round trip, no process
    idle. Waits with a timeout never do, so the script regains control when
    it asked to. Before any other wait, what is held goes."""
    client = Client(boot, Role.ORIGIN, "the origin (host {host}, pid {pid})")
    client.leave = _leave  # type: ignore[method-assign]
    main = threading.get_ident()
    # Only on a run whose workers all share this machine: on a cluster a
    # task goes to the hosts it was given, whatever they have that the
    # submit host lacks. A map's chunk too: only a map of one chunk waits on
    # its newest.
    if client.config.run_in_origin and boot.local:
        client.holder.may_hold = lambda chunk: (
            client.depth < tuning.INLINE_DEPTH and threading.get_ident() == main)
    client.conn.before_block = client.holder.send_held
    if boot.outcomes:
        DirectOutcomes.open(client, boot.outcomes)
    return client


def _leave(reason: str) -> None:
    """The run was stopped under the script (its launcher is gone)."""
    log.error("the run was stopped: %s", reason)
    exit_now(1)


class DirectOutcomes:
    """The socket workers send a map's outcomes to, on a run local to one
    machine (DIRECT, see protocol): the origin reads it with the broker's,
    and tells the broker which it got (RECEIVED) with the next message it
    sends, or when the ticker next runs ``tuning.RECEIVED_WAIT`` after the
    first: not at each outcome, nor by waking anyone, which would cost what
    relaying the outcomes did."""

    def __init__(self, client: Client):
        self.client = client

    @classmethod
    def open(cls, client: Client, endpoint: str) -> None:
        """Bind the socket: from now on the origin's maps' chunks are marked
        DIRECT. If it cannot be bound, outcomes come through the broker, as
        on a cluster."""
        try:
            inbox = transport.OutcomesInbox(endpoint, client.keys)
        except OSError as exc:
            log.debug("%s: outcomes come through the broker (%s)", client.name, str(exc))
            return
        client.conn.add_inbox(inbox, {Msg.RESULT: cls(client).on_result})
        client.chunk_flags = Flags.CHUNK | Flags.DIRECT

    def on_result(self, msg: protocol.Message) -> None:
        outcomes = protocol.split_batch(msg)
        self.client.outbox.received([tid for tid, _, _ in outcomes])
        self.client.settle_all(outcomes)


def finish(client: Client, code: int) -> None:
    """Tell the broker the script is over, so the run ends now."""
    try:
        client.send(Msg.BYE, code)
    finally:
        client.close()


def run_script(path: str, argv: list) -> int:
    """Run the script as ``__main__``; its exit code."""
    module = bootstrap.script_module(path, "__main__")
    try:
        code = bootstrap.prepare_script(path, argv)
    except SyntaxError as exc:
        traceback.print_exception(type(exc), exc, None)
        return 1
    try:
        # A Ctrl-C held back since this process started is raised here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        exec(code, module.__dict__)
    except SystemExit as exc:
        return exit_code(exc.code)
    except KeyboardInterrupt:
        print("scoop_rt: interrupted (Ctrl-C); stopping the run", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as exc:  # the script's uncaught error: print as Python does
        # Leave out this function's own frame: the traceback starts in the script.
        traceback.print_exception(type(exc), exc, _script_frames(exc.__traceback__.tb_next))  # type: ignore[union-attr]
        return 1
    return 0


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _script_frames(tb):
    """``tb`` without the runtime's own frames at its end: an error that
    scoop_rt raises for the script's call (bad input, a remote error raised
    again) ends at the script's line, as an error from a builtin would."""
    last_script = None
    frame = tb
    while frame is not None:
        if not frame.tb_frame.f_code.co_filename.startswith(_PACKAGE):
            last_script = frame
        frame = frame.tb_next
    if last_script is not None:
        last_script.tb_next = None
    return tb


EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


def _on_sigint(signum, frame) -> None:
    """The first Ctrl-C interrupts the script; more (the terminal's and the
    launcher's copy of the same one, or an impatient user) are ignored while
    the run stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _on_sigterm(signum, frame) -> None:
    """A scheduler's walltime: stop as gracefully as ``sys.exit`` would."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("scoop_rt: terminated (SIGTERM); stopping the run", file=sys.stderr)
    raise SystemExit(EXIT_TERMINATED)


def main() -> None:
    # Ctrl-C waits, blocked, until the script runs (``launcher.prestart``
    # starts this process with it blocked already).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    fd = int(os.environ.pop(ENV_BOOT_FD))
    with os.fdopen(fd, "rb") as pipe:
        boot = bootstrap.read(pipe, ClientBoot)
    if not boot.script:
        sys.exit("scoop_rt: unusable bootstrap from the launcher: "
                 "ClientBoot: missing required field 'script' (the origin runs it)")
    bootstrap.setup_logging(boot.config, boot.name)
    bootstrap.publish(boot, is_origin=True)
    client = make_client(boot)
    runtime.current = client
    client.start()
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGTERM, _on_sigterm)
    code = run_script(boot.script, boot.argv)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    finish(client, code)
    sys.exit(code)


if __name__ == "__main__":
    main()
