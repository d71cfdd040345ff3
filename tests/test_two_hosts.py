"""Two hosts for real: the notebook side in one network namespace, a joined node in another.

Host A (192.0.2.1) runs ``two_host_notebook.py``, a Job with
``listen_addr="192.0.2.1"``; host B (192.0.2.2) runs ``python -m elastic_nb
join --local-addr 192.0.2.2``. Each namespace has its own loopback, so
anything that advertises or dials 127.0.0.1 across hosts fails here as it
would between machines. On c10d (the store the Job hosts on A) and etcd3 (an
etcd on A): results come back, the remote node's lines reach the notebook,
killing the remote node makes the local one re-form, ``stop()`` reaches it,
pdb, stack dumps and a signal reach its rank through its channel (on c10d),
and nothing is left running in either namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from netns import TwoHosts
from util import wait_until

DRIVER = Path(__file__).with_name("two_host_notebook.py")
BOUND = 45.0  # seconds from the fault to the job's final state, on a loaded 2-core machine


@pytest.fixture(scope="module")
def hosts():
    why = TwoHosts.unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the two-host tests must run in CI: {why}")
        pytest.skip(why)
    with TwoHosts() as pair:
        yield pair


def run_scenario(hosts: TwoHosts, scenario: str, backend: str, log_dir: Path):
    """Run the notebook side on A and a joined node on B; (the notebook's facts, the joiner's
    exit code, output, error output and when it exited)."""
    notebook = subprocess.Popen(
        hosts.a.command(sys.executable, str(DRIVER), scenario, backend, hosts.a.address,
                        hosts.b.namespace, hosts.b.interface),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    joiner = None
    try:
        line = notebook.stdout.readline()
        assert line.startswith("JOIN "), f"no JOIN line; stderr:\n{notebook.stderr.read()[-4000:]}"
        join = json.loads(line[len("JOIN "):])
        joiner = subprocess.Popen(
            hosts.b.command(sys.executable, "-m", "elastic_nb", "join", "--backend", join["backend"],
                            "--endpoint", join["endpoint"], "--run-id", join["run_id"],
                            "--nproc", "1", "--local-addr", hosts.b.address,
                            "--log-dir", str(log_dir),
                            *(["--key-file", join["key_file"]] if join["key_file"] else [])),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        exited_at: list[float] = []
        threading.Thread(target=lambda: exited_at.append((joiner.wait(), time.time())[1]),
                         daemon=True).start()
        out, err = notebook.communicate(timeout=240)
        result = next((line for line in out.splitlines() if line.startswith("RESULT ")), None)
        assert result, f"no RESULT from the notebook side; stderr:\n{err[-4000:]}"
        facts = json.loads(result[len("RESULT "):])
        joined_out, joined_err = joiner.communicate(timeout=60)
        return facts, (joiner.returncode, joined_out, joined_err, exited_at[0])
    finally:
        for proc in (notebook, joiner):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
        wait_until(lambda: not hosts.a.pids() and not hosts.b.pids(), timeout=15,
                   what="every process on both hosts to exit")


def kinds(facts: dict) -> list[str]:
    return [kind for kind, _, _ in facts["events"]]


@pytest.fixture
def backend(rdzv) -> str:
    """The backend's name: the notebook side (in namespace A) starts its own etcd."""
    return rdzv["backend"]


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
def test_a_node_on_another_host_returns_its_results(hosts, backend, tmp_path):
    facts, (code, out, err, _) = run_scenario(hosts, "results", backend, tmp_path)
    assert facts["state"] == "succeeded"
    [remote] = facts["remote_ranks"]
    local = 1 - remote
    results = {int(rank): value for rank, value in facts["results"].items()}
    assert sorted(results) == [0, 1]
    assert all(v["sum"] == 3 and v["world_size"] == 2 for v in results.values())
    # each host's ranks talk over the interface that owns the address it advertised
    assert results[remote]["gloo_ifname"] == hosts.b.interface
    assert results[local]["gloo_ifname"] == hosts.a.interface
    master = results[0]["master_addr"]
    assert master == results[1]["master_addr"] and master in (hosts.a.address, hosts.b.address)
    assert f"rank {remote} of 2 sum 3" in facts["remote_logs"]  # B's lines reach the notebook
    assert code == 0, err[-3000:]
    assert f"[default{remote}]:rank {remote} of 2 sum 3" in out  # ... and B's terminal


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
def test_killing_the_remote_node_makes_the_local_one_re_form(hosts, backend, tmp_path):
    facts, (code, _, _, _) = run_scenario(hosts, "kill_node", backend, tmp_path)
    assert facts["state"] == "succeeded"
    assert "world 2" in facts["remote_logs"]
    assert facts["results"] == {"0": {"world_size": 1, "restart_count": 0}}
    assert facts["nodes"] == {"0": "succeeded", "1": "killed"}  # node 1 is the joiner
    order = kinds(facts)
    assert "worker_failed" not in order, "a lost peer is no failure of the survivor's"
    restarts = [reason for kind, _, reason in facts["events"] if kind == "restarting"]
    assert set(restarts) == {"membership"}
    killed = order.index("node_killed")
    assert "restarting" in order[killed:], "the local node re-formed after the loss"
    assert facts["took"] < BOUND
    assert code != 0  # the joined node was killed, not finished
    print(f"TWO-HOSTS {backend:<6} kill remote node -> local re-formed in {facts['took']:.2f} s")


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
def test_stop_reaches_the_node_on_another_host(hosts, backend, tmp_path):
    facts, (code, _, _, _) = run_scenario(hosts, "stop", backend, tmp_path)
    assert facts["state"] == "stopped"
    assert "tick 3" in facts["remote_logs"]
    assert set(facts["nodes"].values()) == {"stopped"}
    assert code != 0  # stopped, not finished
    assert facts["took"] < BOUND
    print(f"TWO-HOSTS {backend:<6} stop -> both hosts stopped in {facts['took']:.2f} s")


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
@pytest.mark.parametrize("joined", ["key_file", "keyless"])
def test_a_partition_is_a_lost_node_on_one_side_and_a_departure_on_the_other(hosts, backend,
                                                                               joined, tmp_path):
    """The link to host B goes down mid-collective (no FIN, no RST): A declares B's node lost
    after liveness_timeout and re-forms alone; B hears nothing from the Job, says so, stops
    its workers and exits non-zero while its link is still down (it never waits on the
    store it cannot reach), with the job's key or with the store's token alone
    (``trust_store=True``). The link comes back afterwards: nothing changes."""
    scenario = "link_down" if joined == "key_file" else "link_down_keyless"
    facts, (code, _, err, exited_at) = run_scenario(hosts, scenario, backend, tmp_path)
    remote = 1 - facts["local"]
    assert facts["state"] == "succeeded" and facts["nodes"][str(remote)] == "lost"
    # lost by its silence, or by its channel's end once the link is back (B has left by then)
    assert facts["lost"] in ([], [remote])
    assert list(facts["results"]) == ["0"] and facts["results"]["0"]["world_size"] == 1
    membership = [e for e in facts["events"] if e[0] == "restarting"]
    assert membership and all(reason == "membership" for _, _, reason in membership)
    assert code != 0 and "lost contact with the job at 192.0.2.1:" in err
    assert facts["reformed_after"] < 15 and exited_at - facts["cut_at"] < 15
    assert exited_at < facts["link_up_at"], "B left only once its link was back"
    print(f"TWO-HOSTS {backend:<6} link down ({joined}) -> A re-formed in "
          f"{facts['reformed_after']:.2f} s, B left in {exited_at - facts['cut_at']:.2f} s")


@pytest.mark.slow
@pytest.mark.backends("c10d")
def test_pdb_stacks_and_a_signal_reach_the_rank_on_the_other_host(hosts, backend, tmp_path):
    facts, (code, _, _, _) = run_scenario(hosts, "controls", backend, tmp_path)
    [remote] = facts["remote_ranks"]
    debug = facts["debug"]
    assert "pause_then_tick()" in debug[0] and "-> for i in range(100_000):" in debug[0]
    assert debug[1] == str(40 + remote)  # p marker, answered by the rank on host B
    assert debug[-1] == f"[elastic_nb] rank {remote} continues"
    assert "most recent call first" in facts["stacks"] and "pause_then_tick" in facts["stacks"]
    assert facts["state"] == "failed"
    assert facts["failures"] == [[remote, "SIGTERM", 1]]  # node 1 is the joiner
    assert code != 0
