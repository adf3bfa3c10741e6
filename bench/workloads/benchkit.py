"""What every workload script shares: which runtime runs it, and how it reports.

The harness (bench/run.py) starts each script under one runtime's launcher and tells
the script which runtime that is through the environment, because every process of a
run inherits it (workers included) while command-line arguments reach only the origin:

    BENCH_RUNTIME   scoop_rt | scoop | mp    (the peer's API, see EXECUTORS below)
    BENCH_WORKERS   how many worker processes a pool-style runtime starts

A script measures itself and prints one JSON line on stdout with `report()`; the
harness takes the last such line. Adding a peer with a new API is adding one entry
to EXECUTORS.
"""

import contextlib
import importlib
import json
import multiprocessing
import os
import sys
import types

RUNTIME = os.environ.get("BENCH_RUNTIME", "scoop_rt")
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))

#: Runtimes whose tasks may submit futures themselves (SCOOP's API).
FUTURES_MODULES = {"scoop_rt": "scoop_rt.futures", "scoop_rt_noauth": "scoop_rt.futures",
                   "scoop": "scoop.futures"}


def futures_api():
    """Return the runtime's SCOOP-style `futures` module, or None if it has none.

    Scripts whose tasks submit futures (nested futures) call this at import time,
    so that the name exists on the workers too.
    """
    name = FUTURES_MODULES.get(RUNTIME)
    return importlib.import_module(name) if name else None


@contextlib.contextmanager
def _scoop_style():
    """SCOOP and scoop_rt: the workers already run; the module is the executor."""
    futures = futures_api()
    yield types.SimpleNamespace(
        map=lambda f, iterable: list(futures.map(f, iterable)),
        submit=futures.submit,
    )


@contextlib.contextmanager
def _multiprocessing_pool():
    """multiprocessing.Pool as a user would write it (default chunksize)."""
    with multiprocessing.Pool(WORKERS) as pool:
        yield types.SimpleNamespace(
            map=pool.map,
            submit=lambda f, *args: _AsyncResult(pool.apply_async(f, args)),
        )


class _AsyncResult:
    """Give multiprocessing's AsyncResult the `result()` of a future."""

    __slots__ = ("_async",)

    def __init__(self, async_result):
        self._async = async_result

    def result(self):
        return self._async.get()


#: runtime name -> context manager yielding an object with
#: map(f, iterable) -> list and submit(f, *args) -> object with result().
EXECUTORS = {
    "scoop_rt": _scoop_style,
    "scoop_rt_noauth": _scoop_style,
    "scoop": _scoop_style,
    "mp": _multiprocessing_pool,
}


def executor():
    """Open the executor of the runtime named by BENCH_RUNTIME."""
    try:
        return EXECUTORS[RUNTIME]()
    except KeyError:
        sys.exit(f"benchkit: unknown BENCH_RUNTIME {RUNTIME!r}; "
                 f"known: {', '.join(EXECUTORS)}")


def size(default):
    """The workload's size: the script's first argument, else `default`."""
    return int(sys.argv[1]) if len(sys.argv) > 1 else default


def report(**metrics):
    """Print the measurements as the one JSON line the harness reads."""
    print(json.dumps(metrics), flush=True)


def unsupported(reason):
    """Tell the harness that this runtime cannot run this workload (shown n/a)."""
    report(unsupported=reason)
    sys.exit(0)


def warm_up(pool, task):
    """Run a few tasks first, so that timings start with every worker ready."""
    pool.map(task, range(4 * WORKERS))
