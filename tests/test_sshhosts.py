"""Tests of the SSH test-host machinery in support/sshhosts.py (not of scoop_rt itself)."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import paramiko
import psutil
import pytest

from support import sshhosts

# The fixtures, for this module to run before conftest.py imports them (one set is
# shared per session however many modules register them).
ssh_hosts = sshhosts.ssh_hosts
ssh_hosts_factory = sshhosts.ssh_hosts_factory

TESTS_DIR = Path(__file__).resolve().parent


def strict_client(known_hosts: Path) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def connect(hs, host, known_hosts=None) -> paramiko.SSHClient:
    client = strict_client(known_hosts or hs.known_hosts)
    try:
        client.connect(host.ip, port=host.port, username="root", key_filename=str(hs.key),
                       look_for_keys=False, allow_agent=False, timeout=5, banner_timeout=5,
                       auth_timeout=5)
    except BaseException:
        client.close()   # a rejected connect leaves its transport open otherwise
        raise
    return client


def remote(client: paramiko.SSHClient, command: str) -> str:
    _, stdout, stderr = client.exec_command(command, timeout=10)
    out = stdout.read().decode()
    assert stdout.channel.recv_exit_status() == 0, stderr.read().decode()
    return out


def test_hosts_are_distinct_and_in_the_subnet(ssh_hosts):
    hs = ssh_hosts
    assert len(hs.hosts) == 3
    assert len({h.ip for h in hs.hosts}) == 3
    assert len({h.netns for h in hs.hosts}) == 3
    for h in hs.hosts:
        assert h.ip.startswith(hs.subnet_prefix + ".") and h.ip != hs.bridge_ip
        assert h.netns.startswith(f"srt-{os.getpid()}-")
        assert h.host_key_pub.startswith("ssh-ed25519 ")
    assert hs.setup_seconds < 5


def test_paramiko_reaches_every_host_strictly(ssh_hosts):
    for host in ssh_hosts.hosts:
        with connect(ssh_hosts, host) as client:
            name, ips, eth0 = remote(
                client, "hostname; hostname -I; ip -4 -o addr show dev eth0").splitlines()
            assert name == host.alias
            assert host.ip in ips.split()
            assert f"inet {host.ip}/24" in eth0


def test_run_helper_enters_the_host(ssh_hosts):
    host = ssh_hosts.hosts[1]
    out = ssh_hosts.run(host, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert f"inet {host.ip}/24" in out
    assert ssh_hosts.run(host, ["hostname"]).stdout.strip() == host.alias
    assert ssh_hosts.sshd_pid(host) in ssh_hosts.pids(host)


def test_unknown_host_key_is_rejected(ssh_hosts):
    h1, h2 = ssh_hosts.hosts[:2]
    known = ssh_hosts.known_hosts_without(h1)
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(ssh_hosts, h1, known_hosts=known)
    with connect(ssh_hosts, h2, known_hosts=known):   # the others are still known
        pass


def test_changed_host_key_is_rejected(ssh_hosts):
    h1 = ssh_hosts.hosts[0]
    known = ssh_hosts.known_hosts_file(wrong_key=[h1])
    with pytest.raises(paramiko.BadHostKeyException):
        connect(ssh_hosts, h1, known_hosts=known)


def test_ssh_config_aliases_resolve(ssh_hosts):
    config = paramiko.SSHConfig.from_path(str(ssh_hosts.ssh_config))
    for host in ssh_hosts.hosts:
        entry = config.lookup(host.alias)
        assert entry["hostname"] == host.ip
        assert entry["user"] == "root"
        assert entry["identityfile"] == [str(ssh_hosts.key)]
        assert entry["userknownhostsfile"] == str(ssh_hosts.known_hosts)


def test_openssh_client_accepts_the_config(ssh_hosts):
    host = ssh_hosts.hosts[2]
    proc = subprocess.run(["ssh", "-F", str(ssh_hosts.ssh_config), "-o", "BatchMode=yes",
                           "-o", "StrictHostKeyChecking=yes", host.alias, "hostname"],
                          capture_output=True, text=True, timeout=20,
                          env=ssh_hosts.env(), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == host.alias


def test_home_gives_a_subprocess_the_fixture_ssh_setup(ssh_hosts):
    # What a launcher honouring ~/.ssh/config does, in a process whose HOME is the fixture's.
    host = ssh_hosts.hosts[0]
    code = textwrap.dedent("""
        import os, sys, paramiko
        cfg = paramiko.SSHConfig.from_path(os.path.expanduser("~/.ssh/config"))
        entry = cfg.lookup(sys.argv[1])
        client = paramiko.SSHClient()
        client.load_host_keys(os.path.expanduser("~/.ssh/known_hosts"))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(entry["hostname"], username=entry["user"],
                       key_filename=entry["identityfile"], look_for_keys=False,
                       allow_agent=False, timeout=5)
        _, out, _ = client.exec_command("hostname -I", timeout=10)
        print(out.read().decode().strip())
        client.close()
    """)
    proc = subprocess.run([sys.executable, "-c", code, host.alias], capture_output=True,
                          text=True, timeout=30, env=ssh_hosts.env())
    assert proc.returncode == 0, proc.stderr
    assert host.ip in proc.stdout.split()
    home_ssh = ssh_hosts.home / ".ssh"
    assert (home_ssh / "known_hosts").read_text() == ssh_hosts.known_hosts.read_text()
    assert os.stat(home_ssh / "id_ed25519").st_mode & 0o077 == 0


def test_home_without_a_host_rejects_it(ssh_hosts):
    h3 = ssh_hosts.hosts[2]
    home = ssh_hosts.make_home(exclude=[h3])
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(ssh_hosts, h3, known_hosts=home / ".ssh" / "known_hosts")


def test_namespace_reaches_the_bridge_address(ssh_hosts):
    server = socket.create_server((ssh_hosts.bridge_ip, 0))
    server.settimeout(10)
    port = server.getsockname()[1]
    got = []

    def serve():
        conn, addr = server.accept()
        with conn:
            conn.settimeout(10)
            got.append((conn.recv(100), addr[0]))
            conn.sendall(b"pong")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_code = textwrap.dedent(f"""
        import socket
        with socket.create_connection(({ssh_hosts.bridge_ip!r}, {port}), timeout=5) as s:
            s.sendall(b"ping")
            print(s.recv(100).decode())
    """)
    try:
        host = ssh_hosts.hosts[1]
        out = ssh_hosts.run(host, [sys.executable, "-c", client_code]).stdout
        thread.join(timeout=10)
        assert out.strip() == "pong"
        assert got == [(b"ping", host.ip)]
    finally:
        server.close()


def test_root_loopback_is_not_reachable_from_a_host(ssh_hosts):
    # A launcher that binds 127.0.0.1 must not work with remote workers, as on a cluster.
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
        proc = ssh_hosts.run(ssh_hosts.hosts[0], [sys.executable, "-c", code], check=False)
    assert proc.returncode != 0 and "ConnectionRefusedError" in proc.stderr


def test_unreachable_host_does_not_answer(ssh_hosts):
    host = ssh_hosts.unreachable
    assert host.ip.startswith(ssh_hosts.subnet_prefix + ".")
    assert host.ip not in {h.ip for h in ssh_hosts.hosts}
    assert paramiko.SSHConfig.from_path(str(ssh_hosts.ssh_config)).lookup(
        host.alias)["hostname"] == host.ip
    with pytest.raises(OSError):   # timeout, or EHOSTUNREACH once ARP gives up
        socket.create_connection((host.ip, 22), timeout=0.5).close()


def test_stopped_sshd_refuses_then_restarts(ssh_hosts_factory):
    hs = ssh_hosts_factory(1)
    host = hs.hosts[0]
    hs.stop_sshd(host)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host.ip, 22), timeout=2).close()
    hs.start_sshd(host)
    with connect(hs, host) as client:
        assert remote(client, "hostname").strip() == host.alias


def test_sshd_options_override(ssh_hosts_factory):
    hs = ssh_hosts_factory(1, sshd_options={"MaxSessions": "2"})
    host = hs.hosts[0]
    with connect(hs, host) as client:
        transport = client.get_transport()
        channels = [transport.open_session(timeout=5) for _ in range(2)]
        with pytest.raises(paramiko.ChannelException):
            transport.open_session(timeout=5)
        for chan in channels:
            chan.close()


def test_teardown_leaves_nothing(ssh_hosts_factory):
    hs = sshhosts.make_ssh_hosts(2)
    try:
        names = [h.netns for h in hs.hosts]
        sshd_pids = [hs.sshd_pid(h) for h in hs.hosts]
        # Stragglers of the kind a launcher could leave: a detached process started
        # over SSH, and one started directly in the namespace.
        with connect(hs, hs.hosts[0]) as client:
            remote(client, "setsid nohup sleep 300 >/dev/null 2>&1 < /dev/null &")
        direct = hs.popen(hs.hosts[1], ["sleep", "300"])
        deadline = time.monotonic() + 5
        while direct.pid not in hs.pids(hs.hosts[1]) and time.monotonic() < deadline:
            time.sleep(0.01)   # nsenter has not joined the namespace yet
        stragglers = [p for h in hs.hosts for p in hs.pids(h) if p not in sshd_pids]
        assert len(stragglers) >= 2
        directory, bridge, tag = hs.dir, hs.bridge, sshhosts._link_alias(hs.bridge)
        assert tag.startswith(f"srt-sshhosts-pid-{os.getpid()}-")
    finally:
        hs.close()
    direct.wait(timeout=5)
    assert hs.teardown_seconds < 5
    assert hs.leftovers() == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            timeout=10).stdout
    assert not any(name in listed for name in names)
    assert bridge not in os.listdir("/sys/class/net") or sshhosts._link_alias(bridge) != tag
    assert not directory.exists()
    for pid in sshd_pids + stragglers:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    hs.close()   # idempotent


def test_reap_stale_cleans_up_after_a_killed_session():
    sshhosts.skip_or_fail_if_unsupported()
    code = textwrap.dedent("""
        import sys, time
        from support import sshhosts
        hs = sshhosts.make_ssh_hosts(1)
        print(hs.hosts[0].netns, hs.bridge, hs.dir, flush=True)
        time.sleep(60)
    """)
    env = dict(os.environ, PYTHONPATH=str(TESTS_DIR))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
        line = child.stdout.readline()
        assert line, "the child session did not start its hosts"
        netns, bridge, directory = line.split()
    finally:
        child.send_signal(signal.SIGKILL)   # no teardown, no atexit
        child.wait(timeout=10)
    assert netns in os.listdir("/run/netns")
    sshhosts.reap_stale()   # (a concurrent session's reap_stale may have got there first)
    assert netns not in os.listdir("/run/netns")
    assert not any(f"pid-{child.pid}-" in sshhosts._link_alias(link)
                   for link in os.listdir("/sys/class/net"))
    assert not Path(directory).exists()


def test_missing_prerequisites_are_named(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert sshhosts.missing_prerequisites() == [
        "root (uid 0) to create network namespaces; running as uid 1000"]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(sshhosts, "SSHD", "/nonexistent/sshd")
    monkeypatch.setattr(sshhosts.shutil, "which", lambda tool: None if tool == "nsenter" else "/x")
    missing = sshhosts.missing_prerequisites()
    assert "`nsenter` (apt-get install -y util-linux)" in missing
    assert "/nonexistent/sshd (apt-get install -y openssh-server)" in missing
