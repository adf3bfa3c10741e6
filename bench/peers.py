"""The runtimes compared, one small function each.

A peer's function returns the argv that comes before `script.py args` to run a
workload script under that runtime with `workers` workers. Its `name` is also the
BENCH_RUNTIME the scripts see (bench/workloads/benchkit.py maps it to an API).
Adding a peer is adding a function here, an entry in PEERS, and, if its API is new,
one entry in benchkit.EXECUTORS.

A function that cannot set its peer up (pip failed, a system program is missing)
raises RuntimeError saying what to do; the harness then shows that peer as n/a
with the reason and goes on with the others.

Versions are pinned, so that two runs of the bench compare the same peers; bump
them here deliberately. Everything but scoop_rt, multiprocessing and
concurrent.futures lives in bench/.venv (benchvenv.py).
"""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, List

import benchvenv

#: The runtime the ratios are about: every ratio is SUBJECT ÷ peer.
SUBJECT = "scoop_rt"

SCOOP = "scoop==0.7.2.0"
LOKY = "loky==3.7.0"
MPI4PY = "mpi4py==4.1.2"
DISTRIBUTED = "distributed==2026.8.0"
RAY = "ray==2.60.0"


@dataclass(frozen=True)
class Peer:
    """A runtime: its CLI and BENCH_RUNTIME name, its column title, its launcher."""

    name: str
    label: str
    launcher: Callable[[int], List[str]]
    default: bool = True     # in the run when --peers is not given


def scoop_rt(workers: int) -> List[str]:
    """This project, run by the Python that runs the harness."""
    return [sys.executable, "-m", "scoop_rt", "-n", str(workers)]


def scoop_rt_noauth(workers: int) -> List[str]:
    """This project with socket security off, to show what authentication costs."""
    return ["env", "SCOOP_RT_SECURE=0", *scoop_rt(workers)]


def multiprocessing_pool(workers: int) -> List[str]:
    """A plain script; the script opens multiprocessing.Pool(workers) itself."""
    return [sys.executable]


def process_pool(workers: int) -> List[str]:
    """A plain script; it opens concurrent.futures.ProcessPoolExecutor(workers)."""
    return [sys.executable]


def loky(workers: int) -> List[str]:
    """A plain script in the bench venv; it opens loky's reusable executor."""
    return [str(benchvenv.ensure(LOKY))]


def scoop(workers: int) -> List[str]:
    """SCOOP 0.7.2 from PyPI, in the bench's own venv."""
    python = benchvenv.ensure(SCOOP)
    return [str(python), "-m", "scoop", "-n", str(workers)]


def mpi4py(workers: int) -> List[str]:
    """mpi4py.futures in its static mode: `mpiexec -n workers+1 python -m mpi4py.futures`.

    Rank 0 runs the script and the other ranks are the pool's workers, so no
    MPI_Comm_spawn is needed (mpi4py's documented way to launch on a fixed set of
    processes). `--bind-to none` leaves placement to the kernel, as for every other
    peer; Open MPI wants `--oversubscribe` for more ranks than cores and
    `--allow-run-as-root` as root.
    """
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise RuntimeError("mpiexec not found; install Open MPI first "
                           "(Debian: apt-get install -y libopenmpi-dev openmpi-bin)")
    python = benchvenv.ensure(MPI4PY)
    flags = []
    if _is_open_mpi(mpiexec):
        flags += ["--oversubscribe", "--bind-to", "none"]
        if os.geteuid() == 0:
            flags.append("--allow-run-as-root")
    return [mpiexec, *flags, "-n", str(workers + 1), str(python), "-m", "mpi4py.futures"]


def _is_open_mpi(mpiexec: str) -> bool:
    try:
        done = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"{mpiexec} --version failed: {error}") from None
    return "Open MPI" in done.stdout or "OpenRTE" in done.stdout


def dask(workers: int) -> List[str]:
    """A plain script in the bench venv; it opens a dask.distributed LocalCluster
    of `workers` worker processes with one thread each."""
    return [str(benchvenv.ensure(DISTRIBUTED))]


def ray(workers: int) -> List[str]:
    """A plain script in the bench venv; it starts a local Ray with num_cpus=workers."""
    python = benchvenv.ensure(RAY)
    return ["env", "RAY_USAGE_STATS_ENABLED=0", str(python)]


PEERS = {peer.name: peer for peer in (
    Peer("scoop_rt", "scoop_rt", scoop_rt),
    Peer("scoop_rt_noauth", "scoop_rt, no auth", scoop_rt_noauth, default=False),
    Peer("mp", "mp.Pool", multiprocessing_pool),
    Peer("loky", "loky", loky),
    Peer("ppe", "ProcessPool", process_pool),
    Peer("scoop", "SCOOP 0.7.2", scoop),
    Peer("mpi4py", "mpi4py", mpi4py),
    Peer("dask", "dask", dask),
    Peer("ray", "Ray", ray),
)}

#: What each peer is, for the notes under the table (labels are kept short).
DESCRIPTIONS = {
    "scoop_rt": "python -m scoop_rt -n N",
    "scoop_rt_noauth": "the same with SCOOP_RT_SECURE=0",
    "mp": "multiprocessing.Pool(N)",
    "loky": f"loky.get_reusable_executor(max_workers=N), {LOKY}",
    "ppe": "concurrent.futures.ProcessPoolExecutor(N)",
    "scoop": f"python -m scoop -n N, {SCOOP}",
    "mpi4py": f"mpiexec -n N+1 python -m mpi4py.futures, MPIPoolExecutor, {MPI4PY}",
    "dask": f"LocalCluster(n_workers=N, threads_per_worker=1), {DISTRIBUTED}",
    "ray": f"ray.init(num_cpus=N), remote functions, {RAY}",
}
