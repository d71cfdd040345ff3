"""Nodes the notebook starts through Slurm and SSH, on a real cluster in network namespaces.

The cluster (tests/cluster.py: slurmctld, two slurmd and an sshd, each in a
namespace of its own) is the session's; the notebook side runs in its login
namespace (``cluster_notebook.py``), as on a login node, and every node it
starts runs where Slurm or ssh puts it. Each test leaves the queue empty and
nothing running on the cluster's hosts (conftest's ``cluster_left_clean``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from util import wait_until

DRIVER = Path(__file__).with_name("cluster_notebook.py")


def notebook(cluster, scenario: str, *under: str, **env: str) -> dict:
    """Run one scenario on the login node (``under`` a command such as salloc); what the Job
    saw (its RESULT line)."""
    done = subprocess.run(cluster.login.command(*under, sys.executable, str(DRIVER), scenario,
                                                str(cluster.ssh_config)),
                          capture_output=True, text=True, timeout=400,
                          env={**os.environ, **cluster.slurm_env, **env})
    result = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    assert result, f"no RESULT ({done.returncode}); stderr:\n{done.stderr[-4000:]}"
    return json.loads(result[len("RESULT "):])


def kinds(facts: dict, node: int | None = None) -> list[str]:
    return [kind for kind, at, _ in facts["events"] if node is None or at == node]


def test_two_slurm_nodes_run_on_the_compute_nodes_and_return_every_result(cluster):
    facts = notebook(cluster, "slurm_results")
    results = facts["results"].values()
    assert {r["host"] for r in results} == {"c1", "c2"}  # one Slurm job on each compute node
    assert all(r["sum"] == 3 and r["world_size"] == 2 for r in results)
    # each node advertised the address of the interface that reaches the Job: nobody typed one
    assert all(r["gloo_ifname"] == f"enb-{r['host']}" for r in results)
    for node in (0, 1):
        assert kinds(facts, node)[:3] == ["node_added", "submitted", "scheduler"]
        joined = [d for kind, at, d in facts["events"] if kind == "scheduler" and at == node
                  and d["state"] == "joined"]
        assert joined and joined[0]["on"] in ("c1", "c2")


def test_inside_an_allocation_a_slurm_node_is_one_srun_step_of_it(cluster):
    facts = notebook(cluster, "slurm_in_allocation", "salloc", "--nodes=1", "--")
    assert {r["host"] for r in facts["results"].values()} == {socket.gethostname(), "c1"}
    assert [d["submission"] for kind, _, d in facts["events"] if kind == "submitted"] == [
        f"srun step of Slurm job {facts['allocation']}"]


def test_a_slurm_node_added_while_running_joins_at_the_next_round(cluster):
    facts = notebook(cluster, "slurm_scale_up")
    assert facts["results"] == {"0": {"world_size": 2, "restart_count": 0},
                                "1": {"world_size": 2, "restart_count": 0}}
    changed = [d for kind, _, d in facts["events"] if kind == "membership_changed"]
    assert changed[-1]["joined"] == [facts["added"]] and changed[-1]["nodes"] == 2


def test_a_slurm_job_cancelled_from_a_shell_is_a_lost_node_and_the_survivor_reforms(cluster):
    """scancel mid-collective, max_restarts=0: the same lost machine as kill_node, so the
    survivor re-forms without spending budget, whoever noticed first; the timeline names the
    cancel."""
    facts = notebook(cluster, "slurm_scancel")
    assert facts["results"] == {"0": {"world_size": 1, "restart_count": 0}}
    assert facts["nodes"] == {"0": "succeeded", "1": "lost"}
    assert [d["left"] for kind, _, d in facts["events"] if kind == "membership_changed"] == [[1]]
    restarts = [d for kind, at, d in facts["events"] if kind == "restarting" and at == 0]
    assert restarts and all(d["reason"] == "membership" for d in restarts)
    ended = [d["state"] for kind, at, d in facts["events"] if kind == "scheduler" and at == 1]
    assert ended and ended[-1] == "CANCELLED", ended


def test_slurm_nodes_resume_from_a_checkpoint_in_a_directory_both_see(cluster):
    """Issue 25: a rank SIGKILLed on its compute node restarts the group from the newest complete
    checkpoint both nodes wrote; then node 1's Slurm job is cancelled and the survivor resumes
    alone, at world 1, from the world of 2's checkpoint."""
    facts = notebook(cluster, "slurm_checkpoint")
    first, second = [d for kind, _, d in facts["events"] if kind == "restored"]
    assert (first["world_from"], first["world_to"]) == (2, 2) and first["step"] >= 10
    assert (second["world_from"], second["world_to"]) == (2, 1)
    assert second["step"] >= first["step"] + 10
    [survivor] = facts["results"].values()
    assert survivor["host"] in ("c1", "c2")
    assert (survivor["world"], survivor["world_from"]) == (1, 2)
    assert survivor["start"] == second["next"] == second["step"] + 1
    saved = [(d["step"], d["world"]) for kind, _, d in facts["events"] if kind == "checkpoint"]
    assert (first["step"], 2) in saved and (second["step"], 2) in saved
    assert facts["checkpoints"][-1] == [145, 1]  # the survivor's, to the end
    assert facts["nodes"] == {"0": "succeeded", "1": "lost"}


def test_slurms_warning_signal_makes_a_node_leave_gracefully_without_spending_budget(cluster):
    facts = notebook(cluster, "slurm_preempt")
    # max_restarts=0: had the leave cost a restart, or failed the survivor's collective, no result
    assert facts["results"] == {"0": {"world_size": 1, "restart_count": 0}}
    assert facts["nodes"] == {"0": "succeeded", "1": "left"}
    assert "SIGUSR1" in next(d["reason"] for kind, at, d in facts["events"]
                             if kind == "preempting" and at == 1)
    restarts = [d["reason"] for kind, _, d in facts["events"] if kind == "restarting"]
    assert restarts == ["membership"]
    ended = [d for kind, at, d in facts["events"] if kind == "scheduler" and at == 1][-1]
    assert ended["state"] == "COMPLETED", "a node that left exits 0"


@pytest.mark.slow
def test_a_real_time_limits_warning_makes_its_node_leave_before_slurm_ends_it(cluster):
    """Slurm's own warning (``--signal=B:USR1@55`` on a one-minute job; slurmctld sends it
    from its 30 s loop, so within about 40 s): the node leaves, the other goes on alone."""
    facts = notebook(cluster, "slurm_time_limit")
    assert facts["results"] == {"0": {"world_size": 1, "restart_count": 0}}
    assert facts["nodes"] == {"0": "succeeded", "1": "left"}
    # "left", not "lost": it went on the warning, before the time limit ended its Slurm job
    assert [at for kind, at, _ in facts["events"] if kind == "preempting"] == [1]


def test_a_node_that_stays_pending_shows_so_while_the_job_runs_on_min_nodes(cluster):
    facts = notebook(cluster, "slurm_pending")
    assert {r["world_size"] for r in facts["results"].values()} == {2}
    status, scheduler = facts["while_running"]["2"]
    assert status == "queued" and "PENDING (Resources)" in scheduler, scheduler
    assert facts["queue_after_result"] == []  # cancelled when the job ended, without a stop()


def test_stop_cancels_every_slurm_job_before_it_returns(cluster):
    facts = notebook(cluster, "slurm_stop")
    assert facts["state"] == "stopped" and facts["queue_after_stop"] == []


def test_a_killed_kernel_leaves_no_slurm_job_running_or_queued(cluster):
    """The kernel is SIGKILLed while two Slurm nodes run and a third is queued: Slurm's queue
    is empty within 30 s, and the queued node never ran (its output was never written)."""
    driver = subprocess.Popen(cluster.login.command(sys.executable, str(DRIVER),
                                                    "slurm_kernel_killed", str(cluster.ssh_config)),
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, **cluster.slurm_env})
    try:
        assert driver.stdout is not None
        ready = next((line for line in driver.stdout if line.startswith("READY ")), None)
        assert ready, f"the driver ended ({driver.wait()}) before two ranks ran"
        seen = json.loads(ready[len("READY "):])
        assert len(seen["queued"]) == 1 and len(seen["slurm_jobs"]) == 3, seen
    finally:
        driver.kill()
        driver.wait()
    wait_until(lambda: not cluster.squeue(), timeout=30, what="Slurm's queue to empty",
               interval=0.2)
    output = Path.home() / "elastic_nb-slurm" / seen["run_id"]
    assert output.is_dir() and not list(output.glob(f"node_*-{seen['queued'][0]}.out"))


def test_fifty_queued_nodes_cost_one_squeue_a_second_and_one_scancel(cluster, tmp_path):
    """Every Slurm command the Job runs is counted (a shim before the real one on PATH):
    while 50 nodes queue, each look at the queue is one ``squeue`` naming all of them (no
    ``scontrol`` per node), and ``stop`` cancels them with one ``scancel``."""
    shims, calls = tmp_path / "shims", tmp_path / "calls.log"
    shims.mkdir()
    for command in ("sbatch", "squeue", "scontrol", "scancel", "sacct"):
        real = shutil.which(command)
        assert real, command
        shim = shims / command
        shim.write_text(f'#!/bin/sh\necho "{command} $*" >> {calls}\nexec {real} "$@"\n')
        shim.chmod(0o755)
    facts = notebook(cluster, "slurm_fifty_queued", PATH=f"{shims}:{os.environ['PATH']}")
    assert facts["queue_after_stop"] == []
    assert any("JobHeldUser" in s for s in facts["scheduler"]), facts["scheduler"]
    made = [line.split() for line in calls.read_text().splitlines()]
    by_command = {c: [args for name, *args in made if name == c]
                  for c in ("sbatch", "squeue", "scontrol", "scancel")}
    assert len(by_command["sbatch"]) == 50
    assert by_command["scontrol"] == []
    looks = [args for args in by_command["squeue"] if "--states=all" in args]
    assert all(len(args[args.index("-j") + 1].split(",")) == 50 for args in looks), looks
    # at most one look a second (POLL_INTERVAL) of the job's life, whatever the number of
    # nodes, and the last look after the cancel
    assert 0 < len(looks) <= facts["seconds"] + 2, (len(looks), facts["seconds"])
    assert len(by_command["scancel"]) == 1 and len(by_command["scancel"][0]) == 50


def test_a_busy_slurmctld_is_asked_again_and_a_queued_node_stays_queued(cluster, tmp_path):
    """While ``squeue`` answers "Socket timed out" (a shim before the real one), the queued
    node stays queued (not lost: Slurm never said it ended), and ``stop`` still cancels it."""
    flag, shims = tmp_path / "busy", tmp_path / "shims"
    shims.mkdir()
    shim = shims / "squeue"
    shim.write_text(f'#!/bin/sh\nif [ -e {flag} ]; then echo "slurm_load_jobs error: Socket '
                    f'timed out on send/recv operation" >&2; exit 1; fi\n'
                    f'exec {shutil.which("squeue")} "$@"\n')
    shim.chmod(0o755)
    facts = notebook(cluster, "slurm_busy", PATH=f"{shims}:{os.environ['PATH']}",
                     SQUEUE_FAILS_WHILE=str(flag))
    assert facts["while_busy"] == "queued"
    assert "node_exited" not in kinds(facts, 1)[:-1], kinds(facts, 1)
    assert facts["nodes"]["1"] == "stopped" and facts["queue_after_stop"] == []


def test_an_sbatch_refusal_is_a_launch_error_that_names_the_fix(cluster):
    facts = notebook(cluster, "sbatch_refused")
    assert "sbatch refused node 0" in facts["error"]
    assert "invalid partition" in facts["error"].lower() and "sinfo" in facts["error"]
    assert facts["queue"] == []


def test_an_ssh_node_runs_on_the_ssh_host_and_its_lines_reach_the_notebook(cluster):
    facts = notebook(cluster, "ssh_results")
    # the notebook side shares this machine's hostname (it enters only the login's network)
    assert {r["host"] for r in facts["results"].values()} == {socket.gethostname(), "sshhost"}
    assert {r["sum"] for r in facts["results"].values()} == {3}
    assert "of 2 sum 3" in facts["remote_logs"]


def test_kill_node_on_an_ssh_node_reaches_the_remote_host_and_the_other_node_reforms(cluster):
    facts = notebook(cluster, "ssh_kill_node")
    assert facts["results"] == {"0": {"world_size": 1, "restart_count": 0}}
    assert facts["nodes"] == {"0": "succeeded", "1": "killed"}
    assert not cluster.other_pids(cluster.sshhost)


def test_stop_leaves_nothing_on_the_ssh_host(cluster):
    facts = notebook(cluster, "ssh_stop")
    assert facts["state"] == "stopped"
    # the ssh client is gone when stop returns; sshd ends its side of the session just after
    wait_until(lambda: not cluster.other_pids(cluster.sshhost), timeout=10,
               what="the SSH host's session processes to end", interval=0.1)


def test_an_unreachable_ssh_host_fails_the_node_with_an_error_that_names_the_fix(cluster):
    facts = notebook(cluster, "ssh_unreachable")
    assert facts["nodes"] == {"0": "lost"}
    assert "ssh could not run the node on root@192.0.2.99" in facts["error"]
    assert "check that `ssh root@192.0.2.99 true` works" in facts["error"]


def test_no_secret_on_a_command_line_in_the_store_or_in_a_repr(cluster):
    """The job's key and a rendezvous password while a Slurm node and an SSH node run: in no
    process's command line (``ps`` shows them to every user), not in the store."""
    facts = notebook(cluster, "secrets_private")
    assert facts["on_command_lines"] == [] and facts["in_store"] == [] and facts["in_repr"] == []
    assert facts["state"] == "stopped"


def test_a_descriptor_another_user_wrote_into_the_store_is_run_by_no_node(cluster, attacker):
    facts = notebook(cluster, "forged_descriptor", ENB_ATTACKER=attacker.user,
                     ENB_ATTACK_DIR=attacker.dir)
    assert facts["attack"][0] == 0 and facts["store_holds_forged"], facts["attack"]
    assert not facts["pwned"], "a node ran the other user's payload"
    refused = [d["reason"] for kind, at, d in facts["events"] if kind == "join_refused" and at == 1]
    assert refused and "not signed with this job's key" in refused[0]
    assert facts["nodes"]["1"] == "lost" and facts["still"] == "running"
    code, stderr = facts["by_hand"]
    assert code == 2 and "refused to run job" in stderr and "someone else wrote it" in stderr


DEBUG_CELLS = [
    '''import os, time
import elastic_nb as enb
from elastic_nb.ui.dashboard import Dashboard

def debug_me():
    secret = 41 + 1
    if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        breakpoint()  # debugged from a cell
        breakpoint()  # debugged from the dashboard
        while True:  # then killed with a signal
            time.sleep(0.1)
    return secret

job = enb.launch(debug_me, nodes=[enb.Node(1, on=enb.Slurm())], listen_addr="192.0.2.1",
                 max_restarts=1, start_method="forkserver")
job.wait_until(lambda: job.snapshot().workers and job.snapshot().workers[0].paused_at,
               timeout=120, what="the rank on the Slurm node paused")
print("PAUSED on", job.snapshot().workers[0].host)''',
    "job.debug(0)",
    '''dashboard = Dashboard(job)
job.wait_until(lambda: not dashboard.debug_button(0).disabled, timeout=60,
               what="the second breakpoint")
dashboard.debug_button(0).click()
job.wait_until(lambda: "while True" in dashboard.debug_area.value, timeout=60,
               what="pdb's first words in the dashboard (the line after the breakpoint)")
dashboard.debug_command.value = "p secret * 2"
dashboard.debug_send_button.click()
job.wait_until(lambda: "\\n84\\n" in dashboard.debug_area.value, timeout=60, what="the answer")
dashboard.debug_command.value = "c"
dashboard.debug_send_button.click()
job.wait_until(lambda: "rank 0 continues" in dashboard.debug_area.value, timeout=60,
               what="the session's end")
print("DASHBOARD answered 84")''',
    '''job.wait_until(lambda: "debug_me" in job.stacks()[0], timeout=60, what="the spinning frame")
print("STACKS", job.stacks()[0].count("debug_me"))
job.kill(0, "SIGTERM")
print("RESULT", job.result(timeout=120))
print("FAILED BY", [e.detail.get("signal") for e in job.events if e.kind == "worker_failed"])''',
]


def test_a_rank_on_a_slurm_node_is_debugged_from_a_cell_and_from_the_dashboard(cluster, tmp_path):
    """A real kernel on the login node (its channels over Unix sockets): pdb in the rank on the
    compute node from ``job.debug`` (``p`` of a local, ``c``), then from the dashboard's debug
    console, its stacks, and a kill with a signal, all through the node's channel."""
    import nbformat
    from kernel_util import code_cell, execute_under

    nb = nbformat.v4.new_notebook(cells=[code_cell(source) for source in DEBUG_CELLS])
    prompts = execute_under(cluster.login.command(), nb, tmp_path, ["p secret", "c"],
                            env=cluster.slurm_env, timeout=240)
    out = {i: "".join(o.get("text", "") for o in cell.outputs) for i, cell in enumerate(nb.cells)}
    assert "PAUSED on c" in out[0], out[0]
    assert prompts == ["(Pdb) ", "(Pdb) "]
    assert "42" in out[1] and "rank 0 continues" in out[1], out[1]
    assert "DASHBOARD answered 84" in out[2]
    assert "STACKS" in out[3] and "RESULT {0: 42}" in out[3], out[3]
    assert "FAILED BY ['SIGTERM']" in out[3], out[3]
