"""Real SSH hosts on the test machine, for testing the SSH launcher.

Each host is a Linux network namespace with its own sshd, its own IPv4 address
and its own hostname, joined by a veth pair to one bridge in the root namespace:

    root namespace                       namespace srt-<pid>-<k>-h1  (hostname srt-h1)
      bridge srt-br<k>  10.213.k.1/24 ── veth ── eth0 10.213.k.2, lo, sshd on :22
                                     ├── veth ── eth0 10.213.k.3  (srt-h2)
                                     └── ...

The code under test runs in the root namespace, as on a submit host; what it
starts over SSH runs inside a namespace and can reach the root namespace only
at the bridge address (there is no default route, so a launcher that binds
loopback or the wrong interface fails here as it would on a cluster). All the
hosts share the machine's file system, like cluster nodes sharing a home.

Everything (keys, known_hosts, ssh config, a HOME for subprocesses) lives in a
temporary directory; the machine's own ~/.ssh is never touched.

Use from pytest:

    def test_x(ssh_hosts):            # session-scoped, 3 hosts
        h1 = ssh_hosts.hosts[0]       # SSHHost(alias="srt-h1", ip=..., ...)

    def test_y(ssh_hosts_factory):    # fresh hosts, torn down after the test
        hs = ssh_hosts_factory(2, sshd_options={"MaxSessions": "10"})

or directly: ``with make_ssh_hosts(2) as hs: ...``.

Needs root, iproute2, util-linux (nsenter, unshare) and openssh-server
(Debian: ``apt-get install -y openssh-server``). Without them the fixtures skip,
saying what is missing; with the environment variable CI set they fail instead,
so a CI machine that lost a prerequisite does not go green by skipping.

Teardown is idempotent and runs from the fixtures' finalizers, from an atexit
hook, and, for sessions that were killed outright, from ``reap_stale()`` at the
start of the next session (it removes what belongs to pids no longer alive).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import functools
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import psutil
import pytest

SSHD = "/usr/sbin/sshd"
SUBNET_PREFIX = "10.213"          # hosts get 10.213.<k>.0/24, k chosen free
NAME_PREFIX = "srt-"
STARTUP_TIMEOUT = 10.0            # seconds for all sshds to answer
COMMAND_TIMEOUT = 10.0            # default for helper commands
LOCK_FILE = "/run/lock/srt-sshhosts.lock"
_OWNER_ALIAS = "srt-sshhosts-pid-"  # ifalias of our links: this, owner pid, "-set<n>"
_DIR_PREFIX = "srt-sshhosts-"       # temp dirs: srt-sshhosts-<pid>-XXXX

# sshd settings; a factory caller may override any of them with sshd_options.
# MaxSessions/MaxStartups are raised above OpenSSH's defaults (10, 10:30:100)
# because a launcher may open one channel per worker on one transport; pass
# sshd_options={"MaxSessions": "10"} to test against a stock server.
DEFAULT_SSHD_OPTIONS: Dict[str, str] = {
    "Port": "22",
    "PermitRootLogin": "prohibit-password",
    "PubkeyAuthentication": "yes",
    "PasswordAuthentication": "no",
    "KbdInteractiveAuthentication": "no",
    "UsePAM": "no",
    "StrictModes": "no",
    "PrintMotd": "no",
    "PrintLastLog": "no",
    "X11Forwarding": "no",
    "UseDNS": "no",
    "LogLevel": "VERBOSE",
    "MaxSessions": "100",
    "MaxStartups": "100:30:200",
    "LoginGraceTime": "30",
    "Subsystem": "sftp internal-sftp",
}

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_MNT_DETACH = 2


@dataclasses.dataclass(frozen=True)
class SSHHost:
    """One test host. ``alias`` is its Host name in the ssh config and its hostname."""

    alias: str
    ip: str
    netns: str           # "" for a host that does not exist (see HostSet.unreachable)
    host_key_pub: str    # "ssh-ed25519 AAAA..." ("" when there is no sshd)
    port: int = 22

    @property
    def name(self) -> str:
        return self.alias


# --------------------------------------------------------------------------
# small helpers


def _run(argv: Sequence[str], *, input: Optional[str] = None,
         timeout: float = COMMAND_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _ip_batch(lines: Iterable[str], netns: Optional[str] = None, *, force: bool = False) -> None:
    """Run many `ip` commands in one process (`ip -batch -`): far faster than one each."""
    argv = ["ip"] + (["-n", netns] if netns else []) + (["-force"] if force else []) + ["-b", "-"]
    _run(argv, input="".join(line + "\n" for line in lines), check=not force)


def _set_pdeathsig() -> None:
    """In a child before exec: die with the test process, even if it is SIGKILLed."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _umount(path: str) -> None:
    if _libc.umount2(path.encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):   # EINVAL: not a mount point
            raise OSError(err, f"umount {path}: {os.strerror(err)}")


def _ns_id(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in_netns(ns_id: tuple) -> List[int]:
    """Pids whose network namespace is ns_id (what `ip netns pids` does, without a fork)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ns_id(f"/proc/{entry}/ns/net") == ns_id:
            pids.append(int(entry))
    return pids


def _kill_pids(pids: Iterable[int], timeout: float = 3.0) -> List[int]:
    """SIGTERM, wait, SIGKILL, wait. Returns the pids still alive afterwards.

    A zombie counts as gone: a process whose parent was killed with it is
    re-parented to pid 1, which may take a while to reap it.
    """
    procs = []
    for pid in set(pids):
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        procs = _wait_gone(procs, timeout / 2)
        if not procs:
            break
    return [p.pid for p in procs]


def _wait_gone(procs: List[psutil.Process], timeout: float) -> List[psutil.Process]:
    """Wait until each process has exited (or is a zombie); return those still running."""
    deadline = time.monotonic() + timeout
    while True:
        procs = [p for p in procs if _running(p)]
        if not procs or time.monotonic() > deadline:
            return procs
        time.sleep(0.005)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _netns_names() -> List[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _link_names() -> List[str]:
    return sorted(os.listdir("/sys/class/net"))


def _link_alias(link: str) -> str:
    try:
        return Path(f"/sys/class/net/{link}/ifalias").read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def _machine_lock(timeout: float = 10.0) -> Iterator[None]:
    """Serialise subnet choice and stale cleanup between concurrent test sessions."""
    os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
    with open(LOCK_FILE, "a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{LOCK_FILE} held for more than {timeout} s")
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sshd_version() -> tuple:
    proc = _run([SSHD, "-V"], check=False)    # prints "OpenSSH_9.2p1 ..." and exits 1
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", proc.stderr + proc.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


# --------------------------------------------------------------------------
# prerequisites


@functools.lru_cache(maxsize=None)
def _missing_prerequisites() -> tuple:
    return tuple(missing_prerequisites())


def missing_prerequisites() -> List[str]:
    """What this machine lacks to make SSH hosts; empty when it can."""
    missing = []
    if os.geteuid() != 0:
        return [f"root (uid 0) to create network namespaces; running as uid {os.geteuid()}"]
    for tool, package in (("ip", "iproute2"), ("nsenter", "util-linux"),
                          ("unshare", "util-linux"), ("ssh-keygen", "openssh-client")):
        if shutil.which(tool) is None:
            missing.append(f"`{tool}` (apt-get install -y {package})")
    if not os.access(SSHD, os.X_OK):
        missing.append(f"{SSHD} (apt-get install -y openssh-server)")
    try:
        with open("/etc/shadow") as f:
            root = next((line for line in f if line.startswith("root:")), "")
        if root.split(":")[1].startswith("!"):
            missing.append("an unlocked root account: /etc/shadow locks root with '!', and "
                           "sshd (UsePAM no) refuses locked accounts; run `usermod -p '*' root`")
    except (OSError, IndexError):
        pass
    if missing:
        return missing
    probe = f"{NAME_PREFIX}probe-{os.getpid()}"
    proc = _run(["ip", "netns", "add", probe], check=False)
    if proc.returncode != 0:
        return [f"permission to run `ip netns add` ({proc.stderr.strip()}); "
                "a container needs CAP_SYS_ADMIN and CAP_NET_ADMIN"]
    try:
        bridge = f"{NAME_PREFIX}p{os.getpid()}"
        proc = _run(["ip", "link", "add", bridge, "type", "bridge"], check=False)
        if proc.returncode != 0:
            missing.append(f"permission to create a bridge ({proc.stderr.strip()})")
        else:
            _run(["ip", "link", "del", bridge], check=False)
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return missing


def skip_or_fail_if_unsupported() -> None:
    """pytest.skip (pytest.fail under CI) naming what the machine lacks."""
    missing = _missing_prerequisites()
    if missing:
        reason = "cannot make SSH test hosts; missing: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


# --------------------------------------------------------------------------
# cleanup of what killed sessions left behind


def reap_stale() -> List[str]:
    """Remove namespaces, bridges, mounts and temp dirs whose owner pid is dead.

    Returns a description of what was removed. Safe alongside other live
    sessions: only things tagged with a pid that no longer runs are touched.
    """
    removed = []
    with _machine_lock():
        for ns in _netns_names():
            m = re.match(rf"{NAME_PREFIX}(\d+)-", ns)
            if not m or _pid_alive(int(m.group(1))):
                continue
            ns_id = _ns_id(f"/run/netns/{ns}")
            if ns_id:
                _kill_pids(pids_in_netns(ns_id))
            _run(["ip", "netns", "del", ns], check=False)
            removed.append(f"netns {ns}")
        for link in _link_names():
            m = re.match(rf"{_OWNER_ALIAS}(\d+)-", _link_alias(link))
            if link.startswith(NAME_PREFIX) and m and not _pid_alive(int(m.group(1))):
                _run(["ip", "link", "del", link], check=False)
                removed.append(f"link {link}")
        tmp = tempfile.gettempdir()
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f]
        for entry in os.listdir(tmp):
            m = re.match(rf"{_DIR_PREFIX}(\d+)-", entry)
            if not m or _pid_alive(int(m.group(1))):
                continue
            path = os.path.join(tmp, entry)
            for mnt in mounts:
                if mnt.startswith(path + "/"):
                    _umount(mnt)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"dir {path}")
    return removed


# --------------------------------------------------------------------------
# the host set

_LIVE: "set[HostSet]" = set()


@atexit.register
def _close_all_at_exit() -> None:
    for hs in list(_LIVE):
        hs.close()


def _free_subnet_index(start: int) -> int:
    """A k such that 10.213.k.0/24 overlaps no route or address and no link of ours uses k."""
    routes = json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
    addrs = json.loads(_run(["ip", "-j", "-4", "addr"]).stdout or "[]")
    used = []
    for r in routes:
        dst = r.get("dst", "default")
        if dst != "default":
            used.append(ipaddress.ip_network(dst, strict=False))
    for link in addrs:
        for a in link.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    links = set(_link_names())
    for i in range(254):
        k = (start + i) % 254 + 1
        net = ipaddress.ip_network(f"{SUBNET_PREFIX}.{k}.0/24")
        taken = any(n == f"{NAME_PREFIX}br{k}" or n.startswith(f"{NAME_PREFIX}{k}-") for n in links)
        if not taken and not any(net.overlaps(u) for u in used):
            return k
    raise RuntimeError(f"no free /24 left in {SUBNET_PREFIX}.0.0/16 for test hosts")


class HostSet:
    """A set of SSH hosts and the files to reach them. Made by make_ssh_hosts()."""

    _counter = 0

    def __init__(self, count: int = 3, *, sshd_options: Optional[Mapping[str, str]] = None,
                 startup_timeout: float = STARTUP_TIMEOUT) -> None:
        if not 1 <= count <= 200:
            raise ValueError(f"count must be 1..200, got {count}")
        HostSet._counter += 1
        t0 = time.monotonic()
        self.closed = False
        self.teardown_seconds: Optional[float] = None
        self._pid = os.getpid()
        self._sshd: Dict[str, subprocess.Popen] = {}
        self._ns_ids: Dict[str, tuple] = {}
        self._seen_pids: set = set()
        self._children: List[subprocess.Popen] = []   # sshds and popen()s, to kill and reap
        self._made_ns: List[str] = []
        self._made_links: List[str] = []
        self._tag = f"{_OWNER_ALIAS}{self._pid}-set{HostSet._counter}"   # alias of our links
        self.dir = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{self._pid}-"))
        self.hosts: List[SSHHost] = []
        _LIVE.add(self)
        try:
            self._setup(count, dict(sshd_options or {}), startup_timeout)
        except BaseException:
            self.close()
            raise
        self.setup_seconds = time.monotonic() - t0

    # ---- setup steps

    def _setup(self, count: int, sshd_options: Dict[str, str], startup_timeout: float) -> None:
        keygens = self._start_keygens(count)
        self._make_network(count)
        self._wait_all(keygens, "ssh-keygen")
        self._make_hostnames()
        self.hosts = [
            SSHHost(alias=f"{NAME_PREFIX}h{i}", ip=f"{self.subnet_prefix}.{i + 1}",
                    netns=self._ns_name(i),
                    host_key_pub=self._read_pub(self.dir / "hostkeys" / f"h{i}.pub"))
            for i in range(1, count + 1)
        ]
        self.unreachable = SSHHost(alias=f"{NAME_PREFIX}unreachable",
                                   ip=f"{self.subnet_prefix}.254", netns="", host_key_pub="")
        self._write_client_files()
        self._sshd_options = {**DEFAULT_SSHD_OPTIONS, **sshd_options}
        if _sshd_version() >= (9, 8):
            # OpenSSH 9.8 penalises sources whose connections fail; tests fail on purpose
            self._sshd_options.setdefault("PerSourcePenalties", "no")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # privilege separation dir
        for host in self.hosts:
            self.start_sshd(host, wait=False)
        self.wait_sshd(self.hosts, timeout=startup_timeout)

    def _ns_name(self, i: int) -> str:
        return f"{NAME_PREFIX}{self._pid}-{self.k}-h{i}"

    def _start_keygens(self, count: int) -> List[subprocess.Popen]:
        (self.dir / "hostkeys").mkdir()
        self.key = self.dir / "id_ed25519"
        jobs = [(self.key, "scoop_rt-test-client")]
        jobs += [(self.dir / "hostkeys" / f"h{i}", f"srt-h{i}") for i in range(1, count + 1)]
        return [subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                                  "-f", str(path)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
                for path, comment in jobs]

    @staticmethod
    def _wait_all(procs: List[subprocess.Popen], what: str) -> None:
        for p in procs:
            out, _ = p.communicate(timeout=COMMAND_TIMEOUT)
            if p.returncode != 0:
                raise RuntimeError(f"{what} failed: {out.decode(errors='replace')}")

    @staticmethod
    def _read_pub(path: Path) -> str:
        return " ".join(path.read_text().split()[:2])

    def _make_network(self, count: int) -> None:
        with _machine_lock():
            self.k = _free_subnet_index(start=self._pid + HostSet._counter)
            self.subnet_prefix = f"{SUBNET_PREFIX}.{self.k}"
            self.subnet = f"{self.subnet_prefix}.0/24"
            self.bridge_ip = f"{self.subnet_prefix}.1"
            self.bridge = f"{NAME_PREFIX}br{self.k}"
            self._made_links.append(self.bridge)
            lines = [f"link add {self.bridge} type bridge",
                     f"link set {self.bridge} alias {self._tag}",
                     f"addr add {self.bridge_ip}/24 dev {self.bridge}",
                     f"link set {self.bridge} up"]
            for i in range(1, count + 1):
                ns, veth = self._ns_name(i), f"{NAME_PREFIX}{self.k}-{i}"
                self._made_ns.append(ns)
                self._made_links.append(veth)
                lines += [f"netns add {ns}",
                          f"link add {veth} type veth peer name eth0 netns {ns}",
                          f"link set {veth} alias {self._tag}",
                          f"link set {veth} master {self.bridge} up"]
            _ip_batch(lines)
        for i in range(1, count + 1):
            ns = self._ns_name(i)
            self._ns_ids[ns] = _ns_id(f"/run/netns/{ns}")
            _ip_batch(["link set lo up",
                       f"addr add {self.subnet_prefix}.{i + 1}/24 dev eth0",
                       "link set eth0 up"], netns=ns)

    def _make_hostnames(self) -> None:
        """Give each host its own UTS namespace (hostname = alias), kept by a bind mount."""
        (self.dir / "uts").mkdir()
        procs = []
        for i in range(1, len(self._made_ns) + 1):
            path = self.dir / "uts" / f"h{i}"
            path.touch()
            procs.append(subprocess.Popen(
                ["unshare", f"--uts={path}", "hostname", f"{NAME_PREFIX}h{i}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        self._wait_all(procs, "unshare --uts")

    def _uts_file(self, host: SSHHost) -> Path:
        return self.dir / "uts" / host.alias[len(NAME_PREFIX):]

    def _write_client_files(self) -> None:
        self.key_pub = self.key.with_suffix(".pub")
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text(self.key_pub.read_text())
        self.known_hosts = self.known_hosts_file(self.dir / "known_hosts")
        self.ssh_config = self.dir / "ssh_config"
        self.ssh_config.write_text(self._ssh_config_text(self.key, self.known_hosts))
        self.home = self.make_home(self.dir / "home")

    def _ssh_config_text(self, key: Path, known_hosts: Path) -> str:
        blocks = []
        for host in self.hosts + [self.unreachable]:
            blocks.append(f"Host {host.alias} {host.ip}\n"
                          f"    HostName {host.ip}\n"
                          f"    Port {host.port}\n"
                          f"    User root\n"
                          f"    IdentityFile {key}\n"
                          f"    IdentitiesOnly yes\n"
                          f"    UserKnownHostsFile {known_hosts}\n"
                          f"    ConnectTimeout 5\n")
        return "\n".join(blocks)

    # ---- files for scenarios

    def known_hosts_file(self, path: Optional[Path] = None, *, exclude: Sequence[SSHHost] = (),
                         wrong_key: Sequence[SSHHost] = ()) -> Path:
        """Write a known_hosts listing each host's IP and host key.

        exclude: hosts left out (an "unknown host key" situation).
        wrong_key: hosts listed with a freshly made key that is not theirs
        (a "host key changed" situation).
        """
        if path is None:
            fd, name = tempfile.mkstemp(prefix="known_hosts-", dir=self.dir)
            os.close(fd)
            path = Path(name)
        lines = []
        excluded = {h.ip for h in exclude}
        wrong = {h.ip for h in wrong_key}
        for host in self.hosts:
            if host.ip in excluded:
                continue
            key = self._other_key() if host.ip in wrong else host.host_key_pub
            name = host.ip if host.port == 22 else f"[{host.ip}]:{host.port}"
            lines.append(f"{name} {key}\n")
        path.write_text("".join(lines))
        return path

    def known_hosts_without(self, *hosts: SSHHost) -> Path:
        """A known_hosts that lacks these hosts: connecting to them must be refused."""
        return self.known_hosts_file(exclude=hosts)

    def _other_key(self) -> str:
        path = Path(tempfile.mkdtemp(prefix="otherkey-", dir=self.dir)) / "key"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)])
        return self._read_pub(path.with_suffix(".pub"))

    def make_home(self, path: Optional[Path] = None, *, exclude: Sequence[SSHHost] = (),
                  wrong_key: Sequence[SSHHost] = ()) -> Path:
        """A directory to use as HOME, with .ssh/{config,id_ed25519,known_hosts}.

        Its config names every host (alias and IP), user root and the key, so code
        that honours ~/.ssh/config reaches the hosts by alias. exclude/wrong_key
        shape its known_hosts as in known_hosts_file(). Note that OpenSSH's own
        `ssh` takes ~ from the passwd entry, not $HOME: use `ssh -F ssh_config` there.
        """
        if path is None:
            path = Path(tempfile.mkdtemp(prefix="home-", dir=self.dir))
        ssh = path / ".ssh"
        ssh.mkdir(parents=True, mode=0o700)
        key = ssh / "id_ed25519"
        shutil.copyfile(self.key, key)
        key.chmod(0o600)
        shutil.copyfile(self.key_pub, ssh / "id_ed25519.pub")
        known = self.known_hosts_file(ssh / "known_hosts", exclude=exclude, wrong_key=wrong_key)
        (ssh / "config").write_text(self._ssh_config_text(key, known))
        return path

    def env(self, home: Optional[Path] = None, **extra: str) -> Dict[str, str]:
        """os.environ with HOME set to a fixture home and no ssh-agent."""
        env = dict(os.environ)
        env.pop("SSH_AUTH_SOCK", None)
        env["HOME"] = str(home or self.home)
        env.update(extra)
        return env

    # ---- running things on hosts

    def _enter(self, host: SSHHost) -> List[str]:
        if not host.netns:
            raise ValueError(f"{host.alias} is not a real host")
        return ["nsenter", f"--net=/run/netns/{host.netns}", f"--uts={self._uts_file(host)}", "--"]

    def run(self, host: SSHHost, argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT,
            check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run argv inside the host (its network and hostname), capturing text output."""
        if "stdout" not in kwargs and "stderr" not in kwargs:
            kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        proc = subprocess.run(self._enter(host) + list(argv), timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise RuntimeError(f"on {host.alias}: {shlex.join(argv)} failed "
                               f"({proc.returncode}): {proc.stderr}")
        return proc

    def popen(self, host: SSHHost, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start argv inside the host. Teardown kills it if it is still running."""
        proc = subprocess.Popen(self._enter(host) + list(argv), **kwargs)
        self._children.append(proc)
        return proc

    def pids(self, host: SSHHost) -> List[int]:
        """Every pid in the host's network namespace (sshd included)."""
        return pids_in_netns(self._ns_ids[host.netns])

    def kill_processes(self, host: SSHHost, *, include_sshd: bool = False) -> List[int]:
        """Kill what runs on the host (e.g. workers), leaving its sshd unless asked."""
        keep = set() if include_sshd else {self._sshd[host.netns].pid}
        victims = [p for p in self.pids(host) if p not in keep]
        self._seen_pids.update(victims)
        _kill_pids(victims)
        return victims

    def sshd_pid(self, host: SSHHost) -> Optional[int]:
        proc = self._sshd.get(host.netns)
        return proc.pid if proc is not None and proc.poll() is None else None

    def start_sshd(self, host: SSHHost, *, wait: bool = True) -> None:
        """Start the host's sshd (at setup, or again after stop_sshd)."""
        conf_dir = self.dir / "sshd" / host.alias
        conf_dir.mkdir(parents=True, exist_ok=True)
        config = conf_dir / "sshd_config"
        options = {**self._sshd_options,
                   "ListenAddress": f"{host.ip}:{host.port}",
                   "HostKey": str(self.dir / "hostkeys" / host.alias[len(NAME_PREFIX):]),
                   "AuthorizedKeysFile": str(self.authorized_keys),
                   "PidFile": str(conf_dir / "sshd.pid")}
        config.write_text("".join(f"{k} {v}\n" for k, v in options.items()))
        log = open(conf_dir / "sshd.log", "ab")
        try:
            proc = subprocess.Popen(self._enter(host) + [SSHD, "-D", "-e", "-f", str(config)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    preexec_fn=_set_pdeathsig)
        finally:
            log.close()
        self._sshd[host.netns] = proc
        self._children.append(proc)
        self._seen_pids.add(proc.pid)
        if wait:
            self.wait_sshd([host])

    def stop_sshd(self, host: SSHHost) -> None:
        """Stop the host's sshd only: new connections are refused, sessions end."""
        proc = self._sshd.get(host.netns)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def sshd_log(self, host: SSHHost) -> str:
        path = self.dir / "sshd" / host.alias / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_sshd(self, hosts: Sequence[SSHHost], timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll until every host's sshd sends its banner; raise with its log if not."""
        deadline = time.monotonic() + timeout
        waiting = list(hosts)
        while waiting:
            host = waiting[0]
            proc = self._sshd[host.netns]
            if proc.poll() is not None:
                raise RuntimeError(f"sshd on {host.alias} exited ({proc.returncode}):\n"
                                   f"{self.sshd_log(host)}")
            try:
                with socket.create_connection((host.ip, host.port), timeout=1) as s:
                    s.settimeout(max(0.1, deadline - time.monotonic()))
                    if s.recv(8).startswith(b"SSH-"):
                        waiting.pop(0)
                        continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"sshd on {host.alias} ({host.ip}) did not answer within "
                                   f"{timeout} s:\n{self.sshd_log(host)}")
            time.sleep(0.01)

    def set_link(self, host: SSHHost, up: bool) -> None:
        """Cut (up=False) or restore the host's network: packets are dropped silently."""
        veth = f"{NAME_PREFIX}{self.k}-{host.alias[len(NAME_PREFIX) + 1:]}"
        _run(["ip", "link", "set", veth, "up" if up else "down"])

    def host(self, alias: str) -> SSHHost:
        for h in self.hosts + [self.unreachable]:
            if h.alias == alias:
                return h
        raise KeyError(alias)

    # ---- teardown

    def close(self) -> None:
        """Kill everything on the hosts, delete namespaces, links and files. Idempotent."""
        if self.closed:
            return
        t0 = time.monotonic()
        self.closed = True
        _LIVE.discard(self)
        self._kill_everything()
        uts = self.dir / "uts"
        if uts.is_dir():
            for path in uts.iterdir():
                _umount(str(path))
        with _machine_lock():   # k becomes free for others once the bridge, deleted last, is gone
            lines = [f"link del {link}" for link in self._our_links()[::-1]]
            lines += [f"netns del {ns}" for ns in self._made_ns if ns in _netns_names()]
            if lines:
                _ip_batch(lines, force=True)
        self._kill_everything()   # whatever entered a namespace while it was being deleted
        for proc in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)   # reap, unless psutil already did
        shutil.rmtree(self.dir, ignore_errors=True)
        self.teardown_seconds = time.monotonic() - t0

    def _kill_everything(self, timeout: float = 5.0) -> None:
        """Kill every process in our namespaces and every child we started, until none is left.

        Scans again after each round: a process may be entering a namespace
        (nsenter between fork and setns) while the previous scan ran.
        """
        deadline = time.monotonic() + timeout
        while True:
            victims = {p.pid for p in self._children if p.poll() is None}
            for ns_id in self._ns_ids.values():
                if ns_id is not None:
                    victims.update(pids_in_netns(ns_id))
            if not victims or time.monotonic() > deadline:
                return
            self._seen_pids.update(victims)
            _kill_pids(victims, timeout=max(0.2, min(3.0, deadline - time.monotonic())))

    def _our_links(self) -> List[str]:
        """The links we made that still exist (a name alone could be another set's by now)."""
        return [link for link in self._made_links if _link_alias(link) == self._tag]

    def leftovers(self) -> List[str]:
        """What of this set still exists (should be empty after close())."""
        left = [f"netns {ns}" for ns in self._made_ns if ns in _netns_names()]
        left += [f"link {link}" for link in self._our_links()]
        left += [f"pid {pid}" for pid in sorted(self._seen_pids) if _pid_alive(pid)]
        for ns, ns_id in self._ns_ids.items():
            if ns_id is not None:
                left += [f"pid {pid} in {ns}" for pid in pids_in_netns(ns_id)]
        if self.dir.exists():
            left.append(f"dir {self.dir}")
        return left

    def __enter__(self) -> "HostSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"HostSet({', '.join(f'{h.alias}={h.ip}' for h in self.hosts)}, "
                f"bridge {self.bridge_ip}, dir {self.dir})")


def make_ssh_hosts(count: int = 3, **options) -> HostSet:
    """Make count SSH hosts; close() (or a with block) tears them down.

    options: sshd_options (mapping of sshd_config keywords overriding
    DEFAULT_SSHD_OPTIONS), startup_timeout (seconds).
    """
    return HostSet(count, **options)


# --------------------------------------------------------------------------
# pytest fixtures (tests/conftest.py imports them)


# One set per session even if this fixture is registered twice (say, imported by
# conftest.py and by a test module): each registration shares it, the last closes it.
_session_set: Optional[HostSet] = None
_session_users = 0


@pytest.fixture(scope="session")
def ssh_hosts() -> Iterator[HostSet]:
    """Three SSH hosts shared by the whole session. Tests must leave them as found."""
    global _session_set, _session_users
    skip_or_fail_if_unsupported()
    if _session_set is None or _session_set.closed:
        reap_stale()
        _session_set = make_ssh_hosts(3)
    _session_users += 1
    try:
        yield _session_set
    finally:
        _session_users -= 1
        if _session_users == 0:
            _session_set.close()
            _session_set = None


@pytest.fixture
def ssh_hosts_factory() -> Iterator:
    """make(count=3, **options) -> HostSet, torn down after the test; for tests that break hosts."""
    skip_or_fail_if_unsupported()
    made: List[HostSet] = []

    def make(count: int = 3, **options) -> HostSet:
        hs = make_ssh_hosts(count, **options)
        made.append(hs)
        return hs

    try:
        yield make
    finally:
        for hs in made:
            hs.close()
