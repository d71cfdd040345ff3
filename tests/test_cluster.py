"""The cluster fixture is real: Slurm schedules onto two nodes in their own network
namespaces, sshd answers on the SSH host, and close() leaves nothing behind.

Each test leaves the shared ``cluster`` (session-scoped, conftest.py) as it found it:
an empty queue, both nodes idle, nothing but its daemons running on its hosts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster import Cluster
from util import alive, wait_until

SSH_CONNECT_TIMEOUT = 5  # the ConnectTimeout in cluster.ssh_config


def queued(cluster: Cluster, job_id: str):
    return next((job for job in cluster.squeue() if job.job_id == job_id), None)


def wait_for_state(cluster: Cluster, job_id: str, state: str, reason: str | None = None):
    def reached():
        job = queued(cluster, job_id)
        return job if job and job.state == state and reason in (None, job.reason) else None
    return wait_until(reached, timeout=30, what=f"job {job_id} {state} {reason or ''}",
                      interval=0.2)


@pytest.mark.parametrize("node", ["c1", "c2"])
def test_a_batch_job_runs_on_the_node_it_asks_for(cluster, node, tmp_path):
    out = tmp_path / "job.out"
    job_id = cluster.sbatch(f"--nodelist={node}", f"--output={out}",
                            "--wrap", "hostname; echo $SLURM_JOB_ID; echo node=$SLURMD_NODENAME")
    job = cluster.wait_for_job(job_id)
    assert (job["JobState"], job["ExitCode"], job["NodeList"]) == ("COMPLETED", "0:0", node)
    # slurmd runs with its node's hostname (its own UTS namespace), as on a real cluster
    assert out.read_text().split() == [node, job_id, f"node={node}"]


def test_a_job_on_c1_is_in_c1s_network_with_the_submitters_environment(cluster, tmp_path):
    out = tmp_path / "job.out"
    job_id = cluster.sbatch(
        "--nodelist=c1", f"--output={out}", "--wrap",
        f"ip -4 addr; echo probe=$ENB_PROBE; echo conf=$SLURM_CONF; "
        f"{sys.executable} -c 'import elastic_nb; print(\"package\", elastic_nb.__file__)'",
        env={"ENB_PROBE": "from-the-login-node"})
    job = cluster.wait_for_job(job_id)
    text = out.read_text()
    assert job["ExitCode"] == "0:0", text
    assert f"inet {cluster.c1.address}/24" in text and f"{cluster.c1.interface}" in text
    assert "inet 127.0.0.1/8" in text
    assert cluster.c2.address not in text and f"inet {cluster.login.address}/" not in text
    assert "probe=from-the-login-node" in text  # sbatch's default --export=ALL
    assert f"conf={cluster.slurm_conf}" in text
    root = Path(__file__).resolve().parent.parent
    assert f"package {root / 'elastic_nb' / '__init__.py'}" in text  # the shared filesystem


def test_a_third_job_waits_for_resources_and_scancel_empties_the_queue(cluster, tmp_path):
    busy = [cluster.sbatch(f"--output={tmp_path / f'busy{i}.out'}", "--job-name", f"busy{i}",
                           "--wrap", "sleep 60") for i in range(2)]
    running = [wait_for_state(cluster, job_id, "RUNNING") for job_id in busy]
    assert sorted(job.nodes for job in running) == ["c1", "c2"]  # select/linear: a node each
    third = cluster.sbatch(f"--output={tmp_path / 'third.out'}", "--job-name", "third",
                           "--wrap", "true")
    pending = wait_for_state(cluster, third, "PENDING", "Resources")
    assert (pending.name, pending.nodes) == ("third", "")
    assert cluster.node_states() == {"c1": "allocated", "c2": "allocated"}
    for job_id in (*busy, third):
        cluster.scancel(job_id)
    cluster.wait_for_empty_queue(timeout=20)
    assert cluster.job(third)["JobState"] == "CANCELLED"
    assert not (tmp_path / "third.out").exists()  # it never ran
    cluster.wait_for_idle(timeout=20)


def test_an_unknown_partition_is_refused_with_a_clear_error(cluster, tmp_path):
    result = cluster.slurm("sbatch", "--partition", "nosuch", f"--output={tmp_path / 'x.out'}",
                           "--wrap", "true", check=False)
    assert result.returncode != 0
    assert "invalid partition name specified" in result.stderr.lower(), result.stderr
    assert cluster.squeue() == []


def ssh(cluster: Cluster, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cluster.login.command("ssh", "-F", str(cluster.ssh_config), *argv),
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_ssh_from_the_login_node_reaches_the_ssh_host(cluster):
    result = ssh(cluster, cluster.sshhost.name,
                 f"hostname; ip -4 addr; {sys.executable} -m elastic_nb --help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "sshhost"
    assert f"inet {cluster.sshhost.address}/24" in result.stdout
    assert cluster.login.address + "/" not in result.stdout
    assert "python -m elastic_nb" in result.stdout  # the venv and the package, over ssh


def test_ssh_to_an_unused_address_fails_within_the_connect_timeout(cluster):
    started = time.monotonic()
    result = ssh(cluster, "-o", "HostName=192.0.2.99", cluster.sshhost.name, "true")
    took = time.monotonic() - started
    assert result.returncode == 255
    assert "192.0.2.99" in result.stderr, result.stderr
    assert took < SSH_CONNECT_TIMEOUT + 3, f"took {took:.1f} s"


def listening(*namespace_prefix: str) -> list[tuple[int, str]]:
    """(pid, local address) of each TCP listener, in the root namespace or the one given."""
    out = subprocess.run([*namespace_prefix, "ss", "-H", "-ltnp"], capture_output=True,
                         text=True, check=True).stdout
    return [(int(part.split(",")[0]), line.split()[3])
            for line in out.splitlines() for part in line.split("pid=")[1:]]


def test_the_daemons_listen_only_in_their_namespaces(cluster):
    daemons = cluster.daemon_pids()
    assert len(daemons) == 6  # munged, slurmctld and its slurmscriptd, two slurmds, sshd
    assert not daemons & {pid for pid, _ in listening()}, "a daemon listens in the root namespace"
    assert any(addr.endswith(":6817") for _, addr in listening(*cluster.login.command()))
    for node in cluster.nodes:
        assert any(addr.endswith(":6818") for _, addr in listening(*node.command()))
    assert [addr for _, addr in listening(*cluster.sshhost.command())] == [
        f"{cluster.sshhost.address}:22"]


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_close_leaves_no_namespace_process_or_directory():
    """A cluster of its own, closed with a job still running on c1."""
    why = Cluster.unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the cluster tests must run in CI: {why}")
        pytest.skip(why)
    own = Cluster(tag=f"{os.getpid()}-close")
    try:
        own.open()
        job_id = own.sbatch("--nodelist=c1", f"--output={own.tmp / 'sleep.out'}",
                            "--wrap", "sleep 60")
        wait_for_state(own, job_id, "RUNNING")
        wait_until(lambda: any(Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"
                               for pid in own.other_pids(own.c1)), timeout=15,
                   what="the job's sleep on c1", interval=0.2)
        made = {own.switch, *(host.namespace for host in own.hosts)}
        assert made <= namespaces()
        pids = [pid for host in own.hosts for pid in host.pids()]
        assert len(pids) > 5  # the daemons, and the job's slurmstepd, shell and sleep
        tmp = own.tmp
    finally:
        own.close()
    assert not made & namespaces()
    assert [pid for pid in pids if alive(pid)] == []
    assert not tmp.exists()
    own.close()  # idempotent


def test_a_failed_open_leaves_nothing():
    why = Cluster.unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the cluster tests must run in CI: {why}")
        pytest.skip(why)

    class Broken(Cluster):
        def _sshd(self) -> None:  # after the network, munged and Slurm are up
            self.pids_before = [pid for host in self.hosts for pid in host.pids()]
            self.tmp_before = self.tmp
            raise RuntimeError("sshd broke")

    broken = Broken(tag=f"{os.getpid()}-broken")
    with pytest.raises(RuntimeError, match="sshd broke"):
        broken.open()
    assert len(broken.pids_before) >= 4  # munged, slurmctld, the slurmds had started
    assert not {broken.switch, *(host.namespace for host in broken.hosts)} & namespaces()
    assert [pid for pid in broken.pids_before if alive(pid)] == []
    assert not broken.tmp_before.exists()
