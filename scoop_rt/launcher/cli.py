"""``python -m scoop_rt``: the command line.

    python -m scoop_rt [-n N] [--hostfile FILE | --hosts H ...] [options] script.py [args...]

Bad input ends with one line on stderr naming the culprit, and exit code 2.
A host that cannot take part ends with one line per host, and exit code 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import signal
import socket
import sys
from typing import TYPE_CHECKING

from .. import __version__
from ..bootstrap import setup_logging
from ..config import from_environment
from . import cluster, hosts as hostlib, prestart
from .hosts import HostError
from .run import LaunchError, Run, RunSpec

if TYPE_CHECKING:
    from .ssh import SSHOptions

EXIT_USAGE = 2
EXIT_HOSTS = 1


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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _port_range(text: str) -> tuple:
    low, _, high = text.partition("-")
    if not (low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high) <= 65535):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port range such as 40000-40100")
    return int(low), int(high)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m scoop_rt",
        description="Run a Python script whose scoop_rt futures spread over "
                    "worker processes, on this machine or on many over SSH.",
        epilog="Hosts come from --hostfile, else --hosts, else the batch "
               "scheduler's allocation (SLURM, PBS, SGE, LSF), else this "
               "machine. Settings also come from SCOOP_RT_* environment "
               "variables, e.g. SCOOP_RT_HEARTBEAT_INTERVAL=2 (see the README).")
    p.add_argument("-n", "--workers", "--n", type=_positive, metavar="N",
                   help="number of worker processes (default: every slot of "
                        "the hosts; on this machine one per core, here "
                        f"{hostlib.local_cores()})")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log more of the runtime's doings on stderr "
                        "(-vv for debugging)")
    p.add_argument("-q", "--quiet", action="store_true", help="log only errors")
    p.add_argument("--version", action="version", version=f"scoop_rt {__version__}")
    hosts = p.add_argument_group("hosts")
    hosts.add_argument("--hostfile", metavar="FILE",
                       help="a file of hosts: 'host', 'host N' or 'host slots=N' "
                            "per line")
    hosts.add_argument("--hosts", "--host", nargs="+", metavar="HOST",
                       help="hosts, one worker per mention: --hosts a a b -- "
                            "script.py, or --hosts a,a,b script.py")
    hosts.add_argument("--dry-run", action="store_true",
                       help="print the hosts, their workers and the commands "
                            "that would start, then exit")
    hosts.add_argument("--check", action="store_true",
                       help="contact every host, print what it has (ssh, "
                            "Python, scoop_rt, the script) and exit; non-zero "
                            "if any host fails")
    hosts.add_argument("--ignore-failed-hosts", action="store_true",
                       help="go on without hosts that cannot be used, with a "
                            "warning, instead of stopping")
    ssh = p.add_argument_group("SSH")
    ssh.add_argument("--ssh-timeout", type=_seconds, default=10.0, metavar="S",
                     help="seconds to wait for each host to answer (default 10)")
    ssh.add_argument("--accept-unknown-hosts", action="store_true",
                     help="trust hosts whose key is not in known_hosts "
                          "(default: refuse them)")
    ssh.add_argument("--python-interpreter", metavar="PATH",
                     help="the Python that runs workers on the hosts "
                          f"(default: this one, {sys.executable})")
    ssh.add_argument("--prolog", metavar="FILE",
                     help="a shell file sourced on each host before the "
                          "workers start (module loads, venv activation)")
    ssh.add_argument("--path", metavar="DIR",
                     help="the workers' folder on the hosts (default: the "
                          "current folder)")
    ssh.add_argument("--pythonpath", metavar="PATHS",
                     help="prepended to PYTHONPATH on the hosts")
    net = p.add_argument_group("network")
    net.add_argument("--broker-hostname", metavar="NAME",
                     help="the name or address the hosts reach this machine "
                          "by (default: found from the route to the hosts)")
    net.add_argument("--tunnel", action="store_true",
                     help="carry the workers' connections back over SSH, for "
                          "hosts that cannot connect to this machine")
    net.add_argument("--port-range", type=_port_range, metavar="A-B",
                     help="ports the broker may listen on (default: any free one)")
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


def _join_hosts(argv: list) -> list:
    """``--hosts a a b -- script.py`` and ``--hosts a,a,b script.py`` both
    become ``--hosts=a,a,b script.py``, so the script is never taken for a host.
    SCOOP's spelling ``--host`` is the same option."""
    if "--host" in argv and "--hosts" not in argv:
        i = argv.index("--host")
        argv = [*argv[:i], "--hosts", *argv[i + 1:]]
    if "--hosts" not in argv:
        return argv
    i = argv.index("--hosts")
    rest = argv[i + 1:]
    if "--" in rest:
        j = rest.index("--")
        if j and not any(token.startswith("-") for token in rest[:j]):
            return argv[:i] + ["--hosts=" + ",".join(rest[:j])] + rest[j + 1:]
    if rest and not rest[0].startswith("-"):
        return argv[:i] + ["--hosts=" + rest[0]] + rest[1:]
    return argv


def _ssh_options(args: argparse.Namespace) -> SSHOptions:
    from .ssh import SSHOptions  # only runs with remote hosts need SSH
    return SSHOptions(connect_timeout=args.ssh_timeout,
                      accept_unknown_hosts=args.accept_unknown_hosts,
                      python=args.python_interpreter or sys.executable,
                      prolog=args.prolog, path=args.path or os.getcwd(),
                      pythonpath=args.pythonpath)


def main(argv: list | None = None) -> int:
    # Inherited as ignored, SIGCHLD would make the kernel reap the run's
    # processes unasked, and their exit codes (the script's) would be lost.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("scoop_rt: interrupted (Ctrl-C)", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        prestart.discard()  # started for a run that did not happen


def _main(argv: list | None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = parser().parse_args(_join_hosts(argv))
        config = from_environment()
        config.verbosity = -1 if args.quiet else args.verbose or config.verbosity
        script = _check_script(args.script)
        _check_broker_hostname(args.broker_hostname)
        resolved = cluster.resolve(args.hostfile, args.hosts, os.environ)
    except (UsageError, HostError, ValueError) as exc:
        print(f"scoop_rt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config, "launcher")
    total = args.workers or resolved.default_workers
    remote_names = [h.name for h in resolved.hosts if not hostlib.is_local(h.name)]
    options = _ssh_options(args) if remote_names else None
    if args.dry_run:
        forked = config.fork and not remote_names
        print(_dry_run(resolved, total, remote_names, options, script, args, forked))
        return 0
    contacted = cluster.contact(remote_names, options, script)
    try:
        if args.check:
            print(cluster.check_table(remote_names, contacted))
            return EXIT_HOSTS if contacted.failures else 0
        for failure in contacted.failures:
            level = "warning" if args.ignore_failed_hosts else "error"
            print(f"scoop_rt: {level}: {failure}", file=sys.stderr)
        if contacted.failures and not args.ignore_failed_hosts:
            print("scoop_rt: error: stopping; pass --ignore-failed-hosts to go "
                  "on without those hosts", file=sys.stderr)
            return EXIT_HOSTS
        failed = {f.host for f in contacted.failures}
        try:
            placement = cluster.place(resolved, total, contacted, failed)
            bind, advertise = _addresses(args, contacted)
        except (HostError, OSError) as exc:
            print(f"scoop_rt: error: {exc}", file=sys.stderr)
            return EXIT_HOSTS
        spec = RunSpec(script=script, argv=args.args, placement=placement,
                       config=config, bind=bind, advertise=advertise,
                       tunnel=args.tunnel, port_range=args.port_range)
        return launch(spec, contacted.hosts)
    finally:
        contacted.close()


def _check_broker_hostname(name: str | None) -> None:
    """The name must be one the hosts can connect to: not a wildcard."""
    if name is None:
        return
    try:
        address = socket.gethostbyname(name)
    except OSError:
        raise UsageError(f"--broker-hostname {name!r} does not resolve") from None
    if ipaddress.ip_address(address).is_unspecified:
        raise UsageError(f"--broker-hostname {name} is not an address the hosts can "
                         "connect to; give this machine's name or address as they see it")


def _addresses(args: argparse.Namespace, contacted: cluster.Contacted) -> tuple:
    """(the interface the broker binds, the name remote workers use)."""
    if not contacted.hosts or args.tunnel:
        return "127.0.0.1", None
    if args.broker_hostname:
        address = socket.gethostbyname(args.broker_hostname)
        if _is_mine(address):
            return address, args.broker_hostname
        return _route_to(next(iter(contacted.hosts.values()))), args.broker_hostname
    return _route_to(next(iter(contacted.hosts.values()))), None


def _route_to(host) -> str:
    """This machine's address on the interface that leads to ``host``."""
    peer = host.client.get_transport().getpeername()[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((peer, 9))  # UDP connect: picks a route, sends nothing
        return probe.getsockname()[0]


def _is_mine(address: str) -> bool:
    if ipaddress.ip_address(address).is_loopback:
        return True
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
        return True
    except OSError:
        return False


def _dry_run(resolved, total, remote_names, options, script, args,
             forked: bool) -> str:
    lines = [f"hosts from {resolved.source}:"]
    known = all(h.slots is not None or hostlib.is_local(h.name) for h in resolved.hosts)
    counts = {}
    if known:
        hosts = [hostlib.Host(h.name, h.slots or hostlib.local_cores())
                 for h in resolved.hosts]
        counts = dict(hostlib.distribute(hosts, total))
    for h in resolved.hosts:
        slots = h.slots if h.slots is not None else (
            hostlib.local_cores() if hostlib.is_local(h.name) else "cores")
        workers = counts.get(h.name, 0) if known else "by cores"
        where = "local" if h.name not in remote_names else "ssh"
        lines.append(f"  {h.name:<20} slots {slots!s:<6} workers {workers!s:<8} {where}")
    if not known and total:
        lines.append(f"  ({total} workers in all, spread once each host's cores are known)")
    py = sys.executable
    lines.append("commands:")
    fork = "forked from the launcher"
    lines.append(f"  broker: {fork if forked else shlex.join([py, '-m', 'scoop_rt.broker'])}")
    for h in resolved.hosts:
        if h.name in remote_names:
            from .ssh import SSHHost
            cmd = SSHHost(h.name, options).shell(
                [options.python, "-m", "scoop_rt.launcher.agent"])
            lines.append(f"  {h.name}: ssh {h.name} {shlex.quote(cmd)}")
        else:
            how = fork if forked else shlex.join([py, '-m', 'scoop_rt.worker'])
            lines.append(f"  {h.name}: {how} (per worker)")
    lines.append(f"  origin: {shlex.join([py, '-m', 'scoop_rt.origin', script, *args.args])}")
    return "\n".join(lines)


def launch(spec: RunSpec, remote: dict | None = None) -> int:
    run = Run(spec, remote)
    # Ctrl-C and SIGTERM (a batch scheduler's walltime) go to the origin, which
    # stops the script and so the run; the origin ignores a second Ctrl-C, so
    # the terminal's copy and ours count as one.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: run.terminate(signum))
    try:
        run.start()
        return run.wait()
    except LaunchError as exc:
        print(f"scoop_rt: error: {exc}", file=sys.stderr)
        return 1
    finally:
        run.stop()
