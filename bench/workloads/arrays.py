"""Moving numpy arrays: map over N arrays of 8 MiB (float64), twice.

    map(array_sum, arrays)   the arrays go to the workers, a float comes back
    map(identity, arrays)    the arrays go and come back (round trip)

→ MiB/s, counting each array's 8 MiB once per map (the round trip moves twice
that). This is where out-of-band pickling and zero-copy frames show, or their
absence. numpy must be installed where the runtime runs; without it: n/a.
"""

import os
import sys
import time

import benchkit

try:
    import numpy as np
except ImportError:
    np = None

MIB_EACH = 8


def array_sum(array):
    """Reads the whole array; returns one float, and where it ran."""
    return float(array.sum()), os.getpid()


def identity(array):
    """Returns the array itself: it travels back whole."""
    return array


def timed_map(pool, task, arrays):
    start = time.perf_counter()
    results = pool.map(task, arrays)
    return results, time.perf_counter() - start


if __name__ == "__main__":
    n = benchkit.size(64)
    if np is None:
        benchkit.unsupported(f"numpy is not installed for {sys.executable}")
    rng = np.random.default_rng(0)
    arrays = [rng.random(MIB_EACH * 2**20 // 8) for _ in range(n)]
    small = [np.ones(1024) for _ in range(4 * benchkit.WORKERS)]
    with benchkit.executor() as pool:
        pool.map(array_sum, small)
        pool.map(identity, small)
        sums, sum_s = timed_map(pool, array_sum, arrays)
        back, echo_s = timed_map(pool, identity, arrays)
    # numpy's pairwise sum depends on the buffer's alignment, which a copy may
    # change: equal to the last bits is too much to ask.
    assert np.allclose([total for total, _ in sums], [float(a.sum()) for a in arrays],
                       rtol=1e-9), "wrong sums"
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back)), "arrays changed"
    # A runtime whose origin runs tasks itself (SCOOP's does) moves no array for
    # those: say so, or its MiB/s would read as transport speed.
    sum_local = sum(pid == os.getpid() for _, pid in sums)
    echo_local = sum(a is b for a, b in zip(arrays, back))
    notes = [f"{k} of {n} {what} tasks ran in the origin itself, where no array moves"
             for k, what in ((sum_local, "map(sum)"), (echo_local, "map(identity)")) if k]
    mib = n * MIB_EACH
    benchkit.report(arrays=n, mib_each=MIB_EACH, sum_s=sum_s, sum_mib_s=mib / sum_s,
                    echo_s=echo_s, echo_mib_s=mib / echo_s, sum_local=sum_local,
                    echo_local=echo_local,
                    notes=notes)
