"""Where the workers go: hosts and their slots, from a hostfile, ``--hosts``,
a batch scheduler's allocation, or the local machine, in that order.

Plain functions over text and environment dictionaries, so every format is
tested without a cluster. A malformed input raises ``HostError`` with a
message that names the file and line, or the variable, at fault.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class HostError(ValueError):
    """Host input that cannot be understood; the message says where."""


@dataclass
class Host:
    name: str
    slots: int | None = None  # None: one per core, asked on the host

    def __str__(self) -> str:
        return f"{self.name} ({'?' if self.slots is None else self.slots})"


def _merge(pairs: Sequence[tuple[str, int | None]]) -> list[Host]:
    """Hosts in order of first appearance; a host named again adds its slots."""
    hosts: dict[str, Host] = {}
    for name, slots in pairs:
        host = hosts.get(name)
        if host is None:
            hosts[name] = Host(name, slots)
        elif host.slots is not None and slots is not None:
            host.slots += slots
        elif slots is not None:
            host.slots = slots
    return list(hosts.values())


_HOSTFILE_LINE = re.compile(r"^(\S+)(?:\s+(?:slots=)?(\S+))?$")


def parse_hostfile(text: str, path: str = "hostfile") -> list[Host]:
    """``host``, ``host N`` or ``host slots=N`` per line; ``#`` comments."""
    pairs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _HOSTFILE_LINE.match(line)
        slots = match.group(2) if match else None
        if not match or (slots is not None and not slots.isdigit()):
            raise HostError(
                f"{path}, line {number}: {raw.strip()!r} is not 'host', "
                "'host N' or 'host slots=N'")
        if slots is not None and int(slots) < 1:
            raise HostError(f"{path}, line {number}: a host needs 1 or more "
                            f"slots, not {slots}")
        pairs.append((match.group(1), int(slots) if slots else None))
    if not pairs:
        raise HostError(f"{path} lists no host")
    return _merge(pairs)


def read_hostfile(path: str) -> list[Host]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise HostError(f"hostfile {path!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HostError(f"hostfile {path!r} cannot be read: {exc}") from None
    return parse_hostfile(text, path)


def parse_hosts_option(items: Sequence[str]) -> list[Host]:
    """``--hosts a a b`` or ``--hosts a,a,b``: one worker per mention."""
    names = [name for item in items for name in item.split(",") if name.strip()]
    if not names:
        raise HostError("--hosts names no host")
    return _merge([(name.strip(), 1) for name in names])


# -- SLURM ------------------------------------------------------------------

def _expand_range(prefix: str, body: str, suffix: str) -> list[str]:
    names = []
    for part in body.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise HostError(f"SLURM node range [{body}] is malformed")
        width = len(low)
        for number in range(int(low), int(high or low) + 1):
            names.append(f"{prefix}{number:0{width}d}{suffix}")
    return names


def _expand_name(expr: str) -> list[str]:
    """One node expression, possibly with several bracket groups."""
    match = re.search(r"\[([^\]]*)\]", expr)
    if not match:
        if "[" in expr or "]" in expr:
            raise HostError(f"SLURM node name {expr!r} has unbalanced brackets")
        return [expr]
    prefix, rest = expr[:match.start()], expr[match.end():]
    return [name
            for head in _expand_range(prefix, match.group(1), "")
            for name in (head + tail for tail in _expand_name(rest))]


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p]


def slurm_nodelist(expr: str) -> list[str]:
    """``n[01-03,07],gpu1`` → n01 n02 n03 n07 gpu1 (SLURM's compressed form)."""
    return [name for part in _split_top_level(expr.strip())
            for name in _expand_name(part)]


def slurm_tasks_per_node(expr: str) -> list[int]:
    """``2(x3),1`` → [2, 2, 2, 1]."""
    counts = []
    for part in expr.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise HostError(f"SLURM_TASKS_PER_NODE={expr!r} is malformed")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _slurm(env: Mapping[str, str]) -> tuple[list[Host], int | None]:
    nodes = slurm_nodelist(env.get("SLURM_JOB_NODELIST") or env["SLURM_NODELIST"])
    tasks = env.get("SLURM_TASKS_PER_NODE")
    counts: Sequence[int | None] = [None] * len(nodes)
    if tasks:
        counts = slurm_tasks_per_node(tasks)
    if len(counts) != len(nodes):
        raise HostError(f"SLURM_TASKS_PER_NODE={tasks!r} does not match "
                        f"{len(nodes)} nodes")
    ntasks = env.get("SLURM_NTASKS")
    return [Host(n, c) for n, c in zip(nodes, counts)], int(ntasks) if ntasks else None


def _pbs(env: Mapping[str, str]) -> tuple[list[Host], int | None]:
    path = env["PBS_NODEFILE"]
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as exc:
        raise HostError(f"PBS_NODEFILE {path!r} cannot be read: {exc}") from None
    return _merge([(name, 1) for name in names]), None


def _sge(env: Mapping[str, str]) -> tuple[list[Host], int | None]:
    path = env["PE_HOSTFILE"]
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise HostError(f"PE_HOSTFILE {path!r} cannot be read: {exc}") from None
    pairs = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or not fields[1].isdigit():
            raise HostError(f"PE_HOSTFILE {path}, line {number}: {line!r} is not "
                            "'host slots queue range'")
        pairs.append((fields[0], int(fields[1])))
    return _merge(pairs), None


def _lsf(env: Mapping[str, str]) -> tuple[list[Host], int | None]:
    fields = env["LSB_MCPU_HOSTS"].split()
    if len(fields) % 2 or not all(f.isdigit() for f in fields[1::2]):
        raise HostError(f"LSB_MCPU_HOSTS={env['LSB_MCPU_HOSTS']!r} is not "
                        "'host count host count ...'")
    return _merge([(h, int(c)) for h, c in zip(fields[::2], fields[1::2])]), None


SCHEDULERS = [
    ("SLURM", ("SLURM_JOB_NODELIST", "SLURM_NODELIST"), _slurm),
    ("PBS", ("PBS_NODEFILE",), _pbs),
    ("SGE", ("PE_HOSTFILE",), _sge),
    ("LSF", ("LSB_MCPU_HOSTS",), _lsf),
]


def from_scheduler(env: Mapping[str, str]) -> tuple[str, list[Host], int | None] | None:
    """The batch job's allocation: (scheduler, hosts, default -n), or None."""
    for name, variables, parse in SCHEDULERS:
        if any(env.get(v) for v in variables):
            hosts, default_n = parse(env)
            return name, hosts, default_n
    return None


def distribute(hosts: Sequence[Host], total: int | None) -> list[tuple[str, int]]:
    """Workers per host. Without ``total``, each host's slots. With fewer than
    the slots, hosts are filled in order; with more, the extra go round-robin
    over the hosts. Every host's slots must be known."""
    slots = [(h.name, h.slots) for h in hosts if h.slots is not None]
    if len(slots) < len(hosts):
        raise ValueError("distribute() needs every host's slots")
    if total is None:
        return slots
    counts: list[list] = []
    left = total
    for name, s in slots:
        take = min(s, left)
        counts.append([name, take])
        left -= take
    i = 0
    while left > 0:
        counts[i % len(counts)][1] += 1
        left -= 1
        i += 1
    return [(name, n) for name, n in counts if n > 0]


def is_local(name: str) -> bool:
    """Whether a host name means this machine (no SSH needed)."""
    if name in ("localhost", "127.0.0.1", "::1"):
        return True
    own = {socket.gethostname(), socket.getfqdn()}
    return name in own or name.split(".")[0] == socket.gethostname().split(".")[0]


def local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
