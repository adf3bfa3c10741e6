"""From the command line's host options to a placement of workers.

    resolve    which hosts, with which slots, from where (hostfile, --hosts,
               the batch scheduler, or this machine)
    contact    connect to the remote ones in parallel and probe them
    place      how many workers on each host
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import __version__
from . import hosts as hostlib
from .hosts import Host, HostError

if TYPE_CHECKING:  # SSH is imported only for runs that have remote hosts
    from .ssh import HostFailure, SSHHost, SSHOptions


@dataclass
class Resolved:
    source: str                 # where the hosts came from, for messages
    hosts: list[Host]
    default_workers: int | None = None


def resolve(hostfile: str | None, hosts_option: Sequence[str] | None,
            env: Mapping[str, str]) -> Resolved:
    """Hostfile > --hosts > the scheduler's allocation > this machine."""
    if hostfile:
        return Resolved(f"hostfile {hostfile}", hostlib.read_hostfile(hostfile))
    if hosts_option:
        return Resolved("--hosts", hostlib.parse_hosts_option(hosts_option))
    found = hostlib.from_scheduler(env)
    if found:
        name, hosts, default_n = found
        return Resolved(f"the {name} allocation", hosts, default_n)
    return Resolved("this machine", [Host("localhost", None)])


@dataclass
class Contacted:
    """Remote hosts reached and what they said; those that failed, and why."""

    hosts: dict[str, SSHHost] = field(default_factory=dict)
    info: dict[str, dict] = field(default_factory=dict)
    failures: list[HostFailure] = field(default_factory=list)

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()


def _reach(name: str, options: SSHOptions, config, script: str) -> tuple:
    from .ssh import HostFailure, SSHHost
    host = SSHHost(name, options, config)
    try:
        host.connect()
        info = host.probe(script)
    except HostFailure:
        host.close()
        raise
    except Exception as exc:  # an SSH library error we did not foresee
        host.close()
        raise HostFailure(name, f"{type(exc).__name__}: {exc}") from None
    return host, info


def contact(names: Sequence[str], options: SSHOptions | None, script: str) -> Contacted:
    """Connect to every remote host at once and probe it."""
    result = Contacted()
    if not names:
        return result
    if options is None:
        raise ValueError("remote hosts need SSH options")
    from .ssh import HostFailure, load_config
    config = load_config()
    with cf.ThreadPoolExecutor(max_workers=min(32, len(names))) as pool:
        futures = {pool.submit(_reach, n, options, config, script): n for n in names}
        for future in cf.as_completed(futures):
            name = futures[future]
            try:
                host, info = future.result()
            except HostFailure as failure:
                result.failures.append(failure)
                continue
            problem = _problem(info, options, script)
            if problem:
                host.close()
                result.failures.append(HostFailure(name, problem))
            else:
                result.hosts[name] = host
                result.info[name] = info
    result.failures.sort(key=lambda f: names.index(f.host))
    return result


def _problem(info: dict, options: SSHOptions, script: str) -> str | None:
    """What keeps a reachable host from running workers, if anything."""
    if not info.get("scoop_rt"):
        return (f"scoop_rt cannot be imported by {options.python} there "
                f"({info.get('error', 'not installed')}); install it, or pass "
                "--python-interpreter or --prolog to pick an environment with it")
    mine = (__version__, "{}.{}".format(*sys.version_info[:2]))
    theirs = (info["scoop_rt"], ".".join(info["python"].split(".")[:2]))
    if theirs != mine:
        return (f"it runs scoop_rt {theirs[0]} on Python {theirs[1]}, but this "
                f"run uses scoop_rt {mine[0]} on Python {mine[1]}; install the "
                "same versions there, or pass --python-interpreter")
    if info.get("error"):
        return (f"scoop_rt's dependencies are missing for {options.python} "
                f"there ({info['error']}); install scoop_rt with pip there")
    if not info.get("script"):
        return (f"the script {script} is not there (or not readable); the "
                "workers need it at the same path")
    return None


def place(resolved: Resolved, total: int | None, contacted: Contacted,
          failed: set) -> list[tuple[str, int]]:
    """Workers per host, after filling in unknown slots with the host's cores."""
    usable = []
    for host in resolved.hosts:
        if host.name in failed:
            continue
        slots = host.slots
        if slots is None:
            info = contacted.info.get(host.name)
            slots = info["cores"] if info else hostlib.local_cores()
        usable.append(Host(host.name, slots))
    if not usable:
        raise HostError("no host is left to run workers on")
    return hostlib.distribute(usable, total)


def check_table(names: Sequence[str], contacted: Contacted) -> str:
    """``--check``: a line per host with what it has, or why it failed."""
    rows = [("host", "ssh", "python", "scoop_rt", "script")]
    failures = {f.host: f.reason for f in contacted.failures}
    for name in names:
        info = contacted.info.get(name)
        if info:
            rows.append((name, "ok", info["python"], info["scoop_rt"],
                         "found" if info["script"] else "missing"))
        else:
            rows.append((name, "FAILED", "-", "-", "-"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in rows]
    lines += [f"{name}: {reason}" for name, reason in failures.items()]
    return "\n".join(lines)
