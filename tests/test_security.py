"""Authentication and exposure: a rogue client on every port of a run, as
root and as an unprivileged user, must not run code, read results, set
constants or stop the run; a local run listens on loopback only."""

import json
import logging
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest
import zmq

from scoop_rt import ipc, protocol, transport

TIMEOUT = 60

# The run waits for the test's go-ahead (a file), so the attack happens while
# it is up; then it computes, reads a constant, and prints what it got.
VICTIM = textwrap.dedent("""\
    import os, sys, time
    import scoop_rt
    from scoop_rt import futures, shared

    def square(x):
        return x * x

    if __name__ == "__main__":
        shared.setConst(secret=42)
        list(futures.map(square, range(10)))  # workers are up
        with open(sys.argv[1] + ".tmp", "w") as f:
            f.write(scoop_rt.BROKER.endpoint)
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        deadline = time.monotonic() + 60
        while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
            time.sleep(0.05)
        print(sum(futures.map(square, range(100))), shared.getConst("secret"))
    """)

# Connects to each endpoint given (tcp:// or ipc://), plain and with made-up
# CURVE keys, and sends every kind of message the protocol knows, with a
# payload whose unpickling would create the marker file. Raw bytes too.
# Exits 0 when done.
ROGUE = textwrap.dedent("""\
    import os, pickle, socket, sys, time
    import zmq
    import scoop_rt
    from scoop_rt import protocol
    from scoop_rt.protocol import Msg

    marker, endpoints = sys.argv[1], sys.argv[2:]

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + marker,))

    evil = [pickle.dumps(Evil())]
    python = "%d.%d" % sys.version_info[:2]
    # Well-formed messages, as a real client would send them.
    script = [
        protocol.encode(Msg.HELLO, "worker", "rogue", "rogue", 1, scoop_rt.__version__, python),
        protocol.encode(Msg.HELLO, "origin", "rogue", "rogue", 1, scoop_rt.__version__, python),
        protocol.encode_batch(Msg.SUBMIT, [(1, 0, evil)]),
        protocol.encode(Msg.SETCONST, "secret", payload=evil),
        protocol.encode_batch(Msg.RESULT, [(1, 0, evil)]),
        protocol.encode(Msg.PROBE, 1, 1),
        protocol.encode(Msg.GONE, "w0", "rogue says so"),
        protocol.encode(Msg.GONE, "w1", "rogue says so"),
        protocol.encode(Msg.BYE, 0),
        [b"garbage", *evil],
    ]
    ctx = zmq.Context()
    replies = []
    for address in endpoints:
        for curve, kind in ((False, zmq.DEALER), (True, zmq.DEALER),
                            (False, zmq.PUSH), (True, zmq.PUSH)):
            sock = ctx.socket(kind)
            sock.linger = 0
            if curve:  # a CURVE client with keys of its own making
                server_public, _ = zmq.curve_keypair()
                public, secret = zmq.curve_keypair()
                sock.curve_serverkey = server_public
                sock.curve_publickey = public
                sock.curve_secretkey = secret
            sock.connect(address)
            for frames in script:
                sock.send_multipart(frames)
            deadline = time.monotonic() + 0.5
            while kind == zmq.DEALER and sock.poll(max(0, deadline - time.monotonic()) * 1000):
                replies.append(sock.recv_multipart())
            if kind == zmq.PUSH:
                time.sleep(0.2)  # time to be read, had it been let in
            sock.close()
        if address.startswith("tcp://"):
            host, port = address[len("tcp://"):].rsplit(":", 1)
            raws = [socket.create_connection((host, int(port)), timeout=5)]
        else:
            # The origin's socket takes records (SOCK_SEQPACKET): a made-up
            # token, then well-formed messages, as a worker would send them.
            raws = []
            for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
                raw = socket.socket(socket.AF_UNIX, kind)
                try:
                    raw.connect(address[len("ipc://"):])
                except PermissionError:
                    raw.close()
                    print("refused at", address)
                    break
                except OSError:  # not this kind of socket
                    raw.close()
                    continue
                raws.append(raw)
        for raw in raws:
            with raw:
                try:
                    if raw.type == socket.SOCK_SEQPACKET:
                        print("records go to", address)
                        raw.send(os.urandom(32))
                        for frames in script:
                            raw.send(b"".join(protocol.record(frames)[0]))
                    raw.sendall(b"\\xff" * 64 + evil[0] * 10)
                except OSError:  # turned away
                    pass
                time.sleep(0.2)
    if replies:
        print("GOT", len(replies), "REPLIES, first:", replies[0][:2])
        sys.exit(3)
    print("attacked", len(endpoints), "endpoints")
    """)


def run_processes(launcher):
    try:
        return [launcher, *launcher.children(recursive=True)]
    except psutil.Error:
        return [launcher]


def listening(procs):
    found = []
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        found += [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
    return found


@pytest.fixture
def shared_dir():
    """A folder an unprivileged user can read (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix="scoop_rt-security-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_victim(folder, *extra):
    script = os.path.join(folder, "victim.py")
    with open(script, "w") as f:
        f.write(VICTIM)
    endpoint_file = os.path.join(folder, "endpoint")
    go_file = os.path.join(folder, "go")
    proc = subprocess.Popen([sys.executable, "-m", "scoop_rt", "-n", "2", *extra,
                             script, endpoint_file, go_file],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(endpoint_file):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not come up"
        time.sleep(0.05)
    with open(endpoint_file) as f:
        endpoint = f.read()
    return proc, endpoint, go_file


def finish(proc, go_file):
    open(go_file, "w").close()
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


def can_drop_privileges():
    """Whether a process can be run as nobody; fails the test if root could,
    but nobody cannot run this interpreter (one under /root, say)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            sys.executable, "-c", "pass"],
                           capture_output=True, text=True, timeout=TIMEOUT)
    if probe.returncode != 0:
        pytest.fail(f"nobody cannot run {sys.executable} ({probe.stderr.strip()}): let "
                    "other users pass through the folders it is in (chmod o+x), as "
                    ".ci/run does for pyenv's")
    return True


# A local run listens on a Unix socket; --port-range makes it use TCP, as a
# cluster run does.
TCP = ("--port-range", "40000-60000")


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
@pytest.mark.parametrize("user", ["root", "nobody"])
def test_rogue_client_cannot_run_code_or_stop_the_run(shared_dir, user, transport):
    if user == "nobody" and not can_drop_privileges():
        pytest.skip("needs root and setpriv to run the rogue client as nobody")
    if user == "root" and os.geteuid() != 0:
        user = "this user"
    marker = os.path.join(shared_dir, "pwned")
    os.chmod(shared_dir, 0o777)  # the marker could be made by nobody too
    rogue = os.path.join(shared_dir, "rogue.py")
    with open(rogue, "w") as f:
        f.write(ROGUE)
    os.chmod(rogue, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    proc, endpoint, go_file = start_victim(shared_dir, *(TCP if transport == "tcp" else ()))
    try:
        procs = run_processes(psutil.Process(proc.pid))
        ports = sorted({addr.port for addr in listening(procs)})
        if transport == "tcp":
            assert str(int(endpoint.rsplit(":", 1)[1])) in map(str, ports)
            targets = ["tcp://127.0.0.1:%d" % port for port in ports]
        else:
            assert endpoint.startswith("ipc://") and not ports, (endpoint, ports)
            # Beside the broker's: the origin's, for outcomes sent straight to it.
            outcomes = os.path.join(os.path.dirname(ipc.path_of(endpoint)),
                                    ipc.OUTCOMES_NAME)
            assert os.path.exists(outcomes), os.listdir(os.path.dirname(outcomes))
            targets = [endpoint, "ipc://" + outcomes]
        argv = [sys.executable, rogue, marker, *targets]
        if user == "nobody":
            argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                    *argv]
        attack = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
        assert attack.returncode == 0, attack.stdout + attack.stderr
        assert f"attacked {len(targets)} endpoints" in attack.stdout
        if transport == "ipc" and user == "nobody":
            # The socket's folder keeps other users from even connecting.
            assert "refused at" in attack.stdout, attack.stdout
        elif transport == "ipc":
            assert "records go to " + targets[1] in attack.stdout, attack.stdout
    finally:
        code, out, err = finish(proc, go_file)
    assert code == 0, err
    assert out.split() == [str(sum(x * x for x in range(100))), "42"]
    assert not os.path.exists(marker), "a rogue pickle ran"
    if transport == "ipc" and user != "nobody":
        # The origin read the rogue's made-up token, and closed the connection.
        assert "a connection without the run's token was closed" in err, err


def test_local_run_listens_on_loopback_only(shared_dir):
    proc, endpoint, go_file = start_victim(shared_dir, *TCP)
    try:
        addresses = listening(run_processes(psutil.Process(proc.pid)))
    finally:
        code, _, err = finish(proc, go_file)
    assert code == 0, err
    assert addresses, "the broker should listen somewhere"
    assert {addr.ip for addr in addresses} == {"127.0.0.1"}
    assert endpoint.startswith("tcp://127.0.0.1:")


def test_port_range_confines_listening_ports(shared_dir):
    proc, endpoint, go_file = start_victim(shared_dir, "--port-range", "47310-47320")
    try:
        ports = {addr.port for addr in listening(run_processes(psutil.Process(proc.pid)))}
    finally:
        code, _, err = finish(proc, go_file)
    assert code == 0, err
    assert ports and all(47310 <= p <= 47320 for p in ports), ports


@pytest.mark.parametrize("value", ["80-70", "x-y", "0-10", "70000-70001"])
def test_bad_port_range_is_one_line(tmp_path, value):
    script = tmp_path / "s.py"
    script.write_text("print(1)\n")
    proc = subprocess.run([sys.executable, "-m", "scoop_rt", "--port-range", value,
                           str(script)], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "port range" in proc.stderr


def _read_inbox(inbox, until, timeout=5.0):
    """Every message ``inbox`` reads until ``until(messages)`` holds."""
    messages = []
    deadline = time.monotonic() + timeout
    while not until(messages) and time.monotonic() < deadline:
        select.select([inbox], [], [], 0.05)
        messages += inbox.read()
    return messages


def _seqpacket(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(TIMEOUT)
    sock.connect(path)
    return sock


def _record(frames):
    return b"".join(protocol.record(frames)[0])


def _closed_by_peer(sock):
    """Whether the other end closed ``sock`` (within a few seconds)."""
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionError:
        return True


def test_outcomes_socket_takes_messages_only_after_the_run_token():
    """The origin's socket for the outcomes workers send straight to it
    takes them only from a connection whose first record is the run's
    token: one with another run's keys, one with no token at all, and one
    with garbage are closed, their records dropped; the run's worker gets in."""
    keys = transport.client_keys(transport.make_keys())
    other_run = transport.client_keys(transport.make_keys())
    local = ipc.listen()
    assert local is not None, "no Unix sockets here"
    inbox = transport.OutcomesInbox(local.outcomes_endpoint, keys)
    path = ipc.path_of(local.outcomes_endpoint)
    strangers = []
    member = transport.OutcomesOutbox(local.outcomes_endpoint, keys)
    forged = transport.OutcomesOutbox(local.outcomes_endpoint, other_run)
    try:
        assert forged.send([b"other run"])  # sent, as far as it can tell
        no_token = _seqpacket(path)
        no_token.send(_record([b"no token"]))
        no_token.send(_record([b"no token, again"]))
        garbage = _seqpacket(path)
        garbage.send(b"\xff" * 64)
        garbage.send(_record([b"after garbage"]))
        strangers += [no_token, garbage]
        assert member.send([b"member", b"second frame"])
        received = _read_inbox(inbox, lambda got: len(got) >= 1)
        received += _read_inbox(inbox, lambda got: False, timeout=0.5)
        assert received == [[b"member", b"second frame"]]
        assert all(_closed_by_peer(sock) for sock in strangers)
        assert not forged.send([b"other run, again"])  # closed by the origin
        # and for good: it does not come back on a new connection
        assert not forged.send([b"other run, a third time"])
        assert _read_inbox(inbox, lambda got: False, timeout=0.5) == []
        assert inbox.peers == 1  # the member's
    finally:
        forged.close()
        member.close()
        for sock in strangers:
            sock.close()
        inbox.close()
        local.remove()
    assert not os.path.exists(local.folder)


class _Lines(logging.Handler):
    """Keeps what the runtime logs in this process."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_outcomes_socket_refuses_another_user():
    """A process of another user, even one that had the token and could
    reach the socket (here the folder lets it), is refused by the kernel's
    word on who it is (SO_PEERCRED)."""
    if not can_drop_privileges():
        pytest.skip("needs root and setpriv to connect as nobody")
    keys = transport.client_keys(transport.make_keys())
    folder = tempfile.mkdtemp(prefix="scoop_rt-security-")
    os.chmod(folder, 0o755)
    endpoint = "ipc://" + os.path.join(folder, "origin")
    inbox = transport.OutcomesInbox(endpoint, keys)
    os.chmod(ipc.path_of(endpoint), 0o777)
    # The keys go on stdin, as the runtime's own do: never in argv.
    sender = textwrap.dedent("""\
        import json, sys
        from scoop_rt import transport
        endpoint, keys = json.load(sys.stdin)
        outbox = transport.OutcomesOutbox(endpoint, keys)
        print(outbox.send([b"from nobody"]))
        """)
    proc = subprocess.Popen(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         sys.executable, "-c", sender],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(transport.__file__))))
    logged = _Lines()
    logger = logging.getLogger("scoop_rt")
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(logged)
    try:
        out, err = proc.communicate(json.dumps([endpoint, keys]), timeout=TIMEOUT)
        received = _read_inbox(inbox, lambda got: logged.lines, timeout=5)
        assert proc.returncode == 0, err
        assert out.split() == ["True"], (out, err)  # it did connect and send
        assert received == []
        assert inbox.peers == 0
        assert any("was refused" in line for line in logged.lines), logged.lines
    finally:
        logger.removeHandler(logged)
        logger.setLevel(level)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        inbox.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_folder_goes_with_the_socket_the_origin_leaves():
    """A closed socket leaves its file (as does a killed origin); the run's
    folder goes anyway."""
    local = ipc.listen()
    assert local is not None, "no Unix sockets here"
    left = socket.socket(socket.AF_UNIX)
    left.bind(ipc.path_of(local.outcomes_endpoint))
    left.close()  # the file stays, as after a kill
    local.remove()
    assert not os.path.exists(local.folder)


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_broker_socket_admits_only_the_run_client_key(kind):
    """A client that knows the broker's public key but not the run's client
    key is turned away by the key check (ZAP); the run's own client gets in."""
    keys = transport.make_keys()
    stranger = dict(transport.client_keys(keys))
    public, secret = zmq.curve_keypair()
    stranger.update(client_public=public.decode(), client_secret=secret.decode())
    ctx = zmq.Context()
    local = ipc.listen() if kind == "ipc" else None
    if local:
        listener = transport.bind_router(ctx, local.endpoint, keys, listen_fd=local.fd)
        local.sock.detach()  # the ROUTER socket owns the descriptor now
        local.sock = None
    else:
        listener = transport.bind_router(ctx, "127.0.0.1", keys)
    clients = []
    try:
        for identity, client_keys in ((b"stranger", stranger),
                                      (b"member", transport.client_keys(keys))):
            sock = transport.connect_dealer(ctx, listener.endpoint, client_keys, identity)
            sock.send(b"hello")
            clients.append(sock)
        received = []
        while listener.sock.poll(1000):
            received.append(listener.sock.recv_multipart())
        assert received == [[b"member", b"hello"]]
    finally:
        for sock in clients:
            sock.close(linger=0)
        listener.close(linger_ms=0)
        ctx.term()
        if local:
            local.remove()
    if local:
        assert not os.path.exists(local.folder)
