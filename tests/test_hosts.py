"""Host resolution: hostfiles, --hosts, batch schedulers, -n distribution."""

import pytest

from scoop_rt.launcher import cluster
from scoop_rt.launcher.hosts import (Host, HostError, distribute, from_scheduler,
                                     parse_hostfile, parse_hosts_option,
                                     slurm_nodelist, slurm_tasks_per_node)


def pairs(hosts):
    return [(h.name, h.slots) for h in hosts]


def test_hostfile_forms_comments_and_repeats():
    text = """
    # cluster A
    node1            # cores asked on the host
    node2 4
    node3 slots=2
    node2 2          # named again: adds up
    """
    assert pairs(parse_hostfile(text)) == [("node1", None), ("node2", 6), ("node3", 2)]


@pytest.mark.parametrize("line", ["node1 four", "node1 slots=x", "a b c",
                                  "node1 0", "node1 slots="])
def test_hostfile_malformed_line_names_file_and_line(line):
    with pytest.raises(HostError, match=r"hosts\.txt, line 2"):
        parse_hostfile(f"ok 1\n{line}\n", "hosts.txt")


def test_empty_hostfile_is_an_error(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# nothing\n\n")
    with pytest.raises(HostError, match="lists no host"):
        cluster.resolve(str(path), None, {})


def test_missing_hostfile_is_named():
    with pytest.raises(HostError, match="'/no/such/file' not found"):
        cluster.resolve("/no/such/file", None, {})


def test_hosts_option_counts_repeats():
    assert pairs(parse_hosts_option(["a", "a", "b"])) == [("a", 2), ("b", 1)]
    assert pairs(parse_hosts_option(["a,a,b"])) == [("a", 2), ("b", 1)]


@pytest.mark.parametrize("expr, names", [
    ("n01", ["n01"]),
    ("n[01-03,07]", ["n01", "n02", "n03", "n07"]),
    ("n[8-10]", ["n8", "n9", "n10"]),
    ("a1,b[1-2]", ["a1", "b1", "b2"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("gpu[001-002],cpu[1,3]", ["gpu001", "gpu002", "cpu1", "cpu3"]),
])
def test_slurm_nodelist(expr, names):
    assert slurm_nodelist(expr) == names


@pytest.mark.parametrize("expr", ["n[01-03", "n[a-b]", "n]1["])
def test_slurm_nodelist_malformed(expr):
    with pytest.raises(HostError):
        slurm_nodelist(expr)


def test_slurm_tasks_per_node():
    assert slurm_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert slurm_tasks_per_node("4") == [4]
    with pytest.raises(HostError):
        slurm_tasks_per_node("2(x)")


def test_slurm_environment():
    env = {"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2(x2),1",
           "SLURM_NTASKS": "5"}
    name, hosts, default_n = from_scheduler(env)
    assert (name, pairs(hosts), default_n) == ("SLURM", [("n1", 2), ("n2", 2), ("n3", 1)], 5)


def test_slurm_counts_must_match_nodes():
    with pytest.raises(HostError, match="does not match 3 nodes"):
        from_scheduler({"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2"})


def test_pbs_nodefile_repeats_are_slots(tmp_path):
    path = tmp_path / "nodes"
    path.write_text("n1\nn1\nn2\nn1\n")
    name, hosts, _ = from_scheduler({"PBS_NODEFILE": str(path)})
    assert (name, pairs(hosts)) == ("PBS", [("n1", 3), ("n2", 1)])


def test_sge_pe_hostfile(tmp_path):
    path = tmp_path / "pe"
    path.write_text("n1 4 all.q@n1 UNDEFINED\nn2 2 all.q@n2 UNDEFINED\n")
    name, hosts, _ = from_scheduler({"PE_HOSTFILE": str(path)})
    assert (name, pairs(hosts)) == ("SGE", [("n1", 4), ("n2", 2)])
    path.write_text("n1 four all.q\n")
    with pytest.raises(HostError, match="line 1"):
        from_scheduler({"PE_HOSTFILE": str(path)})


def test_lsf_mcpu_hosts():
    name, hosts, _ = from_scheduler({"LSB_MCPU_HOSTS": "h1 4 h2 4"})
    assert (name, pairs(hosts)) == ("LSF", [("h1", 4), ("h2", 4)])
    with pytest.raises(HostError):
        from_scheduler({"LSB_MCPU_HOSTS": "h1 4 h2"})


def test_order_of_sources(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("fromfile 2\n")
    slurm = {"SLURM_JOB_NODELIST": "s1", "SLURM_TASKS_PER_NODE": "1"}
    assert cluster.resolve(str(path), ["opt"], slurm).hosts[0].name == "fromfile"
    assert cluster.resolve(None, ["opt"], slurm).hosts[0].name == "opt"
    assert cluster.resolve(None, None, slurm).hosts[0].name == "s1"
    assert cluster.resolve(None, None, {}).source == "this machine"


def test_distribute_fills_in_order_then_round_robin():
    hosts = [Host("a", 2), Host("b", 2), Host("c", 1)]
    assert distribute(hosts, None) == [("a", 2), ("b", 2), ("c", 1)]
    assert distribute(hosts, 3) == [("a", 2), ("b", 1)]
    assert distribute(hosts, 8) == [("a", 3), ("b", 3), ("c", 2)]
    assert distribute(hosts, 1) == [("a", 1)]
