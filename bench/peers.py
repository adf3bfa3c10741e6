"""The runtimes compared, one small function each.

A peer's function returns the argv that comes before `script.py args` to run a
workload script under that runtime with `workers` workers. Its `name` is also the
BENCH_RUNTIME the scripts see (bench/workloads/benchkit.py maps it to an API).
Adding a peer is adding a function here, an entry in PEERS, and, if its API is new,
one entry in benchkit.EXECUTORS.
"""

import sys
from dataclasses import dataclass
from typing import Callable, List

import benchvenv

#: The runtime the ratios are about: every ratio is SUBJECT ÷ peer.
SUBJECT = "scoop_rt"


@dataclass(frozen=True)
class Peer:
    """A runtime: its CLI and BENCH_RUNTIME name, its column title, its launcher."""

    name: str
    label: str
    launcher: Callable[[int], List[str]]


def scoop_rt(workers: int) -> List[str]:
    """This project, run by the Python that runs the harness."""
    return [sys.executable, "-m", "scoop_rt", "-n", str(workers)]


def scoop_rt_noauth(workers: int) -> List[str]:
    """This project with socket security off, to show what authentication costs."""
    return ["env", "SCOOP_RT_SECURE=0", *scoop_rt(workers)]


def multiprocessing_pool(workers: int) -> List[str]:
    """A plain script; the script opens multiprocessing.Pool(workers) itself."""
    return [sys.executable]


def scoop(workers: int) -> List[str]:
    """SCOOP 0.7.2 from PyPI, in the bench's own venv."""
    python = benchvenv.ensure("scoop==0.7.2.0")
    return [str(python), "-m", "scoop", "-n", str(workers)]


PEERS = {peer.name: peer for peer in (
    Peer("scoop_rt", "scoop_rt", scoop_rt),
    Peer("scoop_rt_noauth", "scoop_rt, no auth", scoop_rt_noauth),
    Peer("mp", "multiprocessing", multiprocessing_pool),
    Peer("scoop", "SCOOP 0.7.2", scoop),
)}
