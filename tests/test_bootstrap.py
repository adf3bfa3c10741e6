"""The bootstrap documents: their fields, defaults, JSON form and errors,
and that the processes of a run refuse a bad one with one clear line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from scoop_rt import bootstrap
from scoop_rt.bootstrap import AgentBoot, BootError, BrokerBoot, ClientBoot
from scoop_rt.config import Config
from scoop_rt.launcher.run import Run, RunSpec

CONFIG = Config(heartbeat_interval=0.25, secure=False, prefetch=3, fork=False,
                verbosity=2, debug=True)
KEYS = {name: name[0] * 40 for name in ("server_public", "server_secret",
                                         "client_public", "client_secret")}


def full_broker() -> BrokerBoot:
    """Every field away from its default."""
    return BrokerBoot(config=CONFIG, version="9.9", size=7, keys=KEYS,
                      bind="ipc:///tmp/x/broker", listen_fd=5,
                      port_range=(4000, 4100), parent_pid=42, shm="t" * 32)


def full_client(name: str = "w3") -> ClientBoot:
    return ClientBoot(config=CONFIG, endpoint="tcp://node1:5555", name=name,
                      size=7, keys=KEYS, script="/x/s.py", argv=["-a", "b"],
                      host="node2", broker_host="node1", shm="t" * 32,
                      local=True, outcomes="ipc:///tmp/x/outcomes")


def required(kind) -> list:
    return [f.name for f in dataclasses.fields(kind)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING]


# -- round trips ------------------------------------------------------------------

@pytest.mark.parametrize("boot", [full_broker(), full_client(),
                                  AgentBoot(workers=[full_client("w0"), full_client("w1")]),
                                  AgentBoot(workers=[])],
                         ids=["broker", "client", "agent", "agent-empty"])
def test_a_bootstrap_round_trips_through_json(boot):
    text = boot.to_json()
    again = type(boot).from_json(text)
    assert again == boot
    assert again.to_json() == text
    # Bytes, as read from a pipe, too.
    assert type(boot).from_json(text.encode()) == boot


def test_the_json_form_has_every_field_and_plain_values():
    data = json.loads(full_broker().to_json())
    assert list(data) == [f.name for f in dataclasses.fields(BrokerBoot)]
    assert data["config"] == CONFIG.to_dict()
    assert data["port_range"] == [4000, 4100]
    agent = json.loads(AgentBoot(workers=[full_client()]).to_json())
    assert agent == {"workers": [json.loads(full_client().to_json())]}


def test_nested_documents_come_back_typed():
    broker = BrokerBoot.from_json(full_broker().to_json())
    assert isinstance(broker.config, Config) and broker.config == CONFIG
    assert broker.port_range == (4000, 4100)  # a tuple again, not a JSON list
    agent = AgentBoot.from_json(AgentBoot(workers=[full_client()]).to_json())
    assert [type(w) for w in agent.workers] == [ClientBoot]
    assert agent.workers[0].config == CONFIG


def test_left_out_fields_take_their_defaults():
    broker = BrokerBoot.from_json(json.dumps(
        {"config": {}, "version": "1", "size": 2}))
    assert broker == BrokerBoot(config=Config(), version="1", size=2, keys=None,
                                bind="127.0.0.1", listen_fd=None, port_range=None,
                                parent_pid=None, shm=None)
    client = ClientBoot.from_json(json.dumps(
        {"config": {"prefetch": 5}, "endpoint": "tcp://h:1", "name": "w0", "size": 1}))
    assert client == ClientBoot(config=Config(prefetch=5), endpoint="tcp://h:1",
                                name="w0", size=1, keys=None, script=None, argv=[],
                                host=None, broker_host="", shm=None, local=False,
                                outcomes=None)
    # Each document has its own argv list.
    client.argv.append("x")
    assert ClientBoot(config=Config(), endpoint="e", name="n", size=1).argv == []


def test_the_docstring_table_lists_every_field():
    doc = bootstrap.__doc__
    for kind in (BrokerBoot, ClientBoot, AgentBoot):
        table = doc.split(f"{kind.__name__} field")[1].split("\n\n")[0]
        rows = [line.split()[0] for line in table.splitlines()[2:]
                if line.startswith("    ") and not line.startswith("     ")]
        assert rows == [f.name for f in dataclasses.fields(kind)], kind.__name__


# -- errors -----------------------------------------------------------------------

CASES = [(BrokerBoot, full_broker()), (ClientBoot, full_client()),
         (AgentBoot, AgentBoot(workers=[]))]


@pytest.mark.parametrize("kind,boot", CASES, ids=lambda x: getattr(x, "__name__", ""))
def test_a_missing_required_field_is_named(kind, boot):
    names = required(kind)
    assert names  # every document has some
    for name in names:
        data = boot.to_dict()
        del data[name]
        with pytest.raises(BootError) as info:
            kind.from_json(json.dumps(data))
        message = str(info.value)
        assert message == f"{kind.__name__}: missing required field {name!r}"
        assert "\n" not in message


@pytest.mark.parametrize("kind,boot", CASES, ids=lambda x: getattr(x, "__name__", ""))
def test_an_unknown_field_is_an_error(kind, boot):
    data = boot.to_dict()
    data["colour"] = "blue"
    with pytest.raises(BootError, match=f"^{kind.__name__}: unknown field 'colour'$"):
        kind.from_dict(data)
    data["shade"] = 1
    with pytest.raises(BootError, match=r"unknown field 'colour' \(and 1 more\)"):
        kind.from_dict(data)


def test_a_worker_of_an_agent_is_checked_too():
    data = AgentBoot(workers=[full_client()]).to_dict()
    del data["workers"][0]["name"]
    with pytest.raises(BootError, match="^ClientBoot: missing required field 'name'$"):
        AgentBoot.from_dict(data)
    with pytest.raises(BootError, match="'workers' is not a JSON list"):
        AgentBoot.from_dict({"workers": {"w0": {}}})


@pytest.mark.parametrize("text,why", [
    ("{not json", "not a JSON document"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"config": 3, "endpoint": "e", "name": "n", "size": 1}', "'config' is not a JSON object"),
])
def test_a_malformed_document_is_a_boot_error(text, why):
    with pytest.raises(BootError, match=why):
        ClientBoot.from_json(text)
    assert issubclass(BootError, ValueError)


# -- the writers and the readers ----------------------------------------------------

def test_the_launcher_writes_what_the_processes_read():
    spec = RunSpec(script="s.py", argv=["1"], placement=[("localhost", 3)],
                   config=CONFIG, bind="10.0.0.1", port_range=(4000, 4100))
    run = Run(spec)
    run.keys = KEYS
    broker = BrokerBoot.from_json(run._broker_boot())
    assert (broker.config, broker.size, broker.bind, broker.port_range,
            broker.keys) == (CONFIG, 3, "10.0.0.1", (4000, 4100), KEYS)
    client = ClientBoot.from_json(run._client_boot("tcp://h:1", "w2").to_json())
    assert (client.name, client.script, client.argv, client.local) == ("w2", "s.py", ["1"], True)
    assert "server_secret" not in client.keys  # a client never gets it


def _start(module: str, text: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module], input=text.encode(),
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("module,boot,field", [
    ("scoop_rt.worker", full_client(), "endpoint"),
    ("scoop_rt.broker", full_broker(), "version"),
])
def test_a_process_refuses_a_bootstrap_without_a_field_in_one_line(module, boot, field):
    data = boot.to_dict()
    del data[field]
    proc = _start(module, json.dumps(data))
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert err.strip().splitlines() == [
        f"scoop_rt: unusable bootstrap from the launcher: {type(boot).__name__}: "
        f"missing required field {field!r}"], err


@pytest.mark.parametrize("drop,why", [
    ("name", "missing required field 'name'"),
    ("script", "missing required field 'script' (the origin runs it)"),
])
def test_the_origin_refuses_a_bootstrap_without_a_field_in_one_line(drop, why):
    """The origin's bootstrap comes on an inherited descriptor, as
    ``launcher.prestart`` hands it over; without a script it has nothing
    to run, although a worker may do without one."""
    data = full_client("origin").to_dict()
    del data[drop]
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as pipe:
        pipe.write(json.dumps(data).encode())
    try:
        proc = subprocess.run([sys.executable, "-m", "scoop_rt.origin"],
                              env=dict(os.environ, SCOOP_RT_BOOT_FD=str(read_end)),
                              pass_fds=(read_end,), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=60)
    finally:
        os.close(read_end)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert err.strip().splitlines() == [
        f"scoop_rt: unusable bootstrap from the launcher: ClientBoot: {why}"], err


def test_the_agent_refuses_a_bad_bootstrap_in_one_line():
    proc = _start("scoop_rt.launcher.agent", json.dumps({"workers": [{"config": {}}]}) + "\n")
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert err.strip().splitlines() == [
        "scoop_rt agent: started by the launcher only "
        "(ClientBoot: missing required field 'endpoint')"], err
