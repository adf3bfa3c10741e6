"""``python -m scoop_rt``: the command line.

    python -m scoop_rt [-n N] [-v|-q] script.py [args...]

Bad input ends with one line on stderr naming the culprit, and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .. import __version__
from ..bootstrap import setup_logging
from ..config import from_environment
from .run import LaunchError, Run, RunSpec

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input on the command line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        if "required: script" in message:
            message = "no script given: python -m scoop_rt [-n N] script.py [args...]"
        raise UsageError(f"{message} (see 'python -m scoop_rt --help')")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number; give a count of workers such as 4")
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{value} workers cannot run anything; give 1 or more")
    return value


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m scoop_rt",
        description="Run a Python script whose scoop_rt futures spread over "
                    "worker processes.",
        epilog="Settings also come from SCOOP_RT_* environment variables, "
               "e.g. SCOOP_RT_HEARTBEAT_INTERVAL=2 (see the README).")
    p.add_argument("-n", "--workers", "--n", type=_positive, metavar="N",
                   help="number of worker processes (default: one per core, "
                        f"here {default_workers()})")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log more of the runtime's doings on stderr "
                        "(-vv for debugging)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="log only errors")
    p.add_argument("--version", action="version",
                   version=f"scoop_rt {__version__}")
    p.add_argument("script", help="the Python script to run (as __main__)")
    p.add_argument("args", nargs=argparse.REMAINDER,
                   help="arguments passed on to the script's sys.argv[1:]")
    return p


def _check_script(path: str) -> str:
    if not os.path.exists(path):
        raise UsageError(f"script {path!r} not found; give the path of a "
                         "Python file")
    if os.path.isdir(path):
        raise UsageError(f"script {path!r} is a folder; give the path of a "
                         "Python file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"script {path!r} cannot be read (permissions?)")
    return os.path.abspath(path)


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    try:
        config = from_environment()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config.verbosity = -1 if args.quiet else args.verbose or config.verbosity
    script = _check_script(args.script)
    argv = args.args[1:] if args.args[:1] == ["--"] else args.args
    return RunSpec(script=script, argv=argv,
                   workers=args.workers or default_workers(), config=config)


def main(argv: list | None = None) -> int:
    try:
        spec = spec_from_args(parser().parse_args(argv))
    except UsageError as exc:
        print(f"scoop_rt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(spec.config, "launcher")
    return launch(spec)


def launch(spec: RunSpec) -> int:
    run = Run(spec)
    # Ctrl-C reaches the origin from the terminal; the script decides what it
    # means. A SIGTERM (a batch scheduler's walltime) is passed on to it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: run.terminate(signum))
    try:
        run.start()
        return run.wait()
    except LaunchError as exc:
        print(f"scoop_rt: error: {exc}", file=sys.stderr)
        return 1
    finally:
        run.stop()
