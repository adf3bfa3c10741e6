"""What every workload script shares: which runtime runs it, and how it reports.

The harness (bench/run.py) starts each script under one runtime's launcher and tells
the script which runtime that is through the environment, because every process of a
run inherits it (workers included) while command-line arguments reach only the origin:

    BENCH_RUNTIME   scoop_rt | scoop | mp | loky | ppe | mpi4py | dask | ray
                    (the peer's API, see EXECUTORS below)
    BENCH_WORKERS   how many worker processes a pool-style runtime starts

A script measures itself and prints one JSON line on stdout with `report()`; the
harness takes the last such line. Adding a peer with a new API is adding one entry
to EXECUTORS.

Every executor is the peer's API as its own documentation shows it, with its
defaults (map's chunk size above all), wrapped only so that the scripts can say
`pool.map(f, xs)`, `pool.submit(f, x).result()` and `pool.as_completed(fs)`.
"""

import concurrent.futures
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
    """Return an object with the runtime's nested `submit`, or None if it has none.

    SCOOP and scoop_rt: their `futures` module. dask and Ray: a small adapter over
    their own way of launching tasks from tasks (below). multiprocessing, loky,
    concurrent.futures and mpi4py.futures have no nested submit: None.
    Scripts whose tasks submit futures call this at import time, so that the name
    exists on the workers too.
    """
    if RUNTIME == "dask":
        return types.SimpleNamespace(submit=_dask_nested_submit)
    if RUNTIME == "ray":
        return types.SimpleNamespace(submit=_ray_submit)
    name = FUTURES_MODULES.get(RUNTIME)
    return importlib.import_module(name) if name else None


@contextlib.contextmanager
def _scoop_style():
    """SCOOP and scoop_rt: the workers already run; the module is the executor."""
    futures = futures_api()
    yield types.SimpleNamespace(
        map=lambda f, iterable: list(futures.map(f, iterable)),
        submit=futures.submit,
        as_completed=futures.as_completed,
    )


@contextlib.contextmanager
def _multiprocessing_pool():
    """multiprocessing.Pool as a user would write it (default chunksize).

    Pool has no futures: submit is apply_async, whose callbacks complete a
    concurrent.futures.Future, so that as_completed works the way a user would
    build it.
    """
    with multiprocessing.Pool(WORKERS) as pool:
        yield types.SimpleNamespace(
            map=pool.map,
            submit=lambda f, *args: _apply_async(pool, f, args),
            as_completed=concurrent.futures.as_completed,
        )


def _apply_async(pool, f, args):
    future = concurrent.futures.Future()
    pool.apply_async(f, args, callback=future.set_result,
                     error_callback=future.set_exception)
    return future


def _concurrent_style(executor):
    """A concurrent.futures.Executor: map with its default chunksize (1)."""
    return types.SimpleNamespace(
        map=lambda f, iterable: list(executor.map(f, iterable)),
        submit=executor.submit,
        as_completed=concurrent.futures.as_completed,
    )


@contextlib.contextmanager
def _process_pool():
    """concurrent.futures.ProcessPoolExecutor(WORKERS)."""
    with concurrent.futures.ProcessPoolExecutor(WORKERS) as executor:
        yield _concurrent_style(executor)


@contextlib.contextmanager
def _loky():
    """loky's reusable executor, the way joblib and loky's README use it."""
    import loky
    executor = loky.get_reusable_executor(max_workers=WORKERS)
    try:
        yield _concurrent_style(executor)
    finally:
        executor.shutdown(wait=True, kill_workers=True)


@contextlib.contextmanager
def _mpi4py():
    """mpi4py.futures.MPIPoolExecutor under `python -m mpi4py.futures`: the
    workers are the other ranks of the mpiexec (see bench/peers.py)."""
    from mpi4py.futures import MPIPoolExecutor
    with MPIPoolExecutor() as executor:
        if executor.num_workers != WORKERS:
            sys.exit(f"benchkit: MPIPoolExecutor has {executor.num_workers} workers, "
                     f"expected {WORKERS}; was the script started with "
                     f"mpiexec -n {WORKERS + 1} python -m mpi4py.futures?")
        yield _concurrent_style(executor)


@contextlib.contextmanager
def _dask():
    """A dask.distributed LocalCluster: WORKERS processes, one thread each.

    Every call passes pure=False. dask's default (pure=True) names a task after
    its function and arguments and runs equal calls once: the CPU workload sends
    the same iteration count 200 times, and fib would be memoized down to n + 1
    tasks. pure=False makes dask run every call, as the other runtimes do (and
    spares it hashing each 8 MiB array).
    """
    from distributed import Client, LocalCluster, as_completed
    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield types.SimpleNamespace(
            map=lambda f, iterable: client.gather(client.map(f, iterable, pure=False)),
            submit=lambda f, *args: client.submit(f, *args, pure=False),
            as_completed=as_completed,
        )


def _dask_nested_submit(f, *args):
    """Submit from inside a dask task: the worker's client; the wait secedes.

    dask's documented way to launch tasks from tasks: get_client() on the worker,
    and secede() from the worker's thread pool while waiting (rejoin() after), so
    that a blocked parent does not hold the worker's only thread.
    """
    from distributed import get_client
    return _DaskNestedFuture(get_client().submit(f, *args, pure=False))


class _DaskNestedFuture:
    __slots__ = ("_future",)

    def __init__(self, future):
        self._future = future

    def result(self):
        from distributed import rejoin, secede
        secede()
        try:
            return self._future.result()
        finally:
            rejoin()


@contextlib.contextmanager
def _ray():
    """A local Ray with num_cpus=WORKERS: each task takes one CPU, so at most
    WORKERS run at once. Tasks are remote functions and results come by ray.get.
    A task blocked in ray.get gives its CPU back, so Ray runs nested tasks (it
    starts more worker processes to do so)."""
    import ray
    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    try:
        yield types.SimpleNamespace(
            map=lambda f, iterable: ray.get([_remote(f).remote(x) for x in iterable]),
            submit=_ray_submit,
            as_completed=_ray_as_completed,
        )
    finally:
        ray.shutdown()


_REMOTES = {}


def _remote(f):
    """ray.remote(f), made once per function and process (each one is exported)."""
    try:
        return _REMOTES[f]
    except KeyError:
        import ray
        _REMOTES[f] = remote = ray.remote(f)
        return remote


def _ray_submit(f, *args):
    return _RayFuture(_remote(f).remote(*args))


class _RayFuture:
    """An ObjectRef with the `result()` of a future: ray.get."""

    __slots__ = ("ref",)

    def __init__(self, ref):
        self.ref = ref

    def result(self):
        import ray
        return ray.get(self.ref)


def _ray_as_completed(fs):
    """Ray's futures in completion order, through ObjectRef.future().

    (The ray.wait(pending, num_returns=1) loop of Ray's docs rescans the pending
    list on every call, quadratic in 20,000 futures; ObjectRef.future() is Ray's
    own bridge to concurrent.futures and is linear.)
    """
    by_future = {f.ref.future(): f for f in fs}
    for done in concurrent.futures.as_completed(by_future):
        yield by_future[done]


#: runtime name -> context manager yielding an object with
#: map(f, iterable) -> list, submit(f, *args) -> object with result(), and
#: as_completed(futures) -> iterator over those futures as they finish.
EXECUTORS = {
    "scoop_rt": _scoop_style,
    "scoop_rt_noauth": _scoop_style,
    "scoop": _scoop_style,
    "mp": _multiprocessing_pool,
    "ppe": _process_pool,
    "loky": _loky,
    "mpi4py": _mpi4py,
    "dask": _dask,
    "ray": _ray,
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
    """Print the measurements as the one JSON line the harness reads.

    Numbers become medians; `notes=[...]` (strings) are shown under the tables,
    for what a reader must know to trust a number.
    """
    print(json.dumps(metrics), flush=True)


def unsupported(reason):
    """Tell the harness that this runtime cannot run this workload (shown n/a)."""
    report(unsupported=reason)
    sys.exit(0)


def warm_up(pool, task):
    """Run a few tasks first, so that timings start with every worker ready."""
    pool.map(task, range(4 * WORKERS))
