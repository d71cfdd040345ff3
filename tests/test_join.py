"""A node joins a notebook's job from another terminal: `python -m elastic_nb join`."""

from __future__ import annotations

import socket
import subprocess
import sys

from util import join_command, leftover_processes, wait_until

import elastic_nb as enb


def make_sum():
    """A cell-style function (pickled by value: the joining node has no copy of this file)."""

    def gloo_sum(offset):
        import os

        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        t = torch.tensor(int(os.environ["RANK"]) + offset)
        dist.all_reduce(t)
        print(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} sum {t.item()}", flush=True)
        dist.destroy_process_group()
        return int(t.item())

    return gloo_sum


def test_a_node_joins_from_another_terminal(rdzv, tmp_path):
    job = enb.launch(make_sum(), 10, nproc=2, min_nodes=2, max_nodes=2, **rdzv)
    terminal = subprocess.run(join_command(job, 2, "--log-dir", str(tmp_path)), capture_output=True,
                              text=True, timeout=180)
    assert terminal.returncode == 0, terminal.stderr[-3000:]
    assert job.result(timeout=60) == {r: 46 for r in range(4)}
    out = terminal.stdout.splitlines()
    assert out[0].startswith(f"joined job {job.run_id} as node 1 (2 x remote)")
    # Rendezvous decides the ranks (etcd v1 numbers nodes in arrival order, so the joiner
    # may come first): whichever two the joined node got, its terminal shows exactly those.
    joined = sorted((w.rank, w.local_rank, w.role) for w in job.workers if w.node == 1)
    assert [(lr, role) for _, lr, role in joined] == [(0, "remote"), (1, "remote")]
    first = joined[0][0]
    assert [r for r, _, _ in joined] == [first, first + 1] and first in (0, 2)
    assert sorted(line for line in out[1:] if line.startswith("[remote")) == [
        f"[remote{r}]:rank {r} of 4 sum 46" for r, _, _ in joined]
    added = next(e for e in job.events if e.kind == "node_added")
    assert added.node == 1 and added.detail["role"] == "remote"
    assert (tmp_path / "attempt_0" / "1" / "stdout.log").read_text() == f"rank {first + 1} of 4 sum 46\n"
    local = 2 - first
    notebook_logs = job.logs()  # the joined node's lines reach the notebook too
    assert f"[default{local}]:rank {local} of 4 sum 46" in notebook_logs
    for rank, _, _ in joined:
        assert f"[remote{rank}]:rank {rank} of 4 sum 46" in notebook_logs


def test_join_refuses_an_unknown_job(rdzv):
    job = enb.launch(make_sum(), 0, nproc=1, **rdzv)
    try:
        command = join_command(job, 1, "--timeout", "3")
        command[command.index("--run-id") + 1] = "no-such-run"
        terminal = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert terminal.returncode == 2
        assert "no job 'no-such-run' found through the" in terminal.stderr
        assert job.endpoint in terminal.stderr
    finally:
        job.stop()


def test_join_refuses_a_full_job(rdzv):
    running = enb.launch(lambda: __import__("time").sleep(60), nproc=1, max_nodes=1, **rdzv)
    try:
        wait_until(lambda: running.state == "running", timeout=60, what="the job to run")
        terminal = subprocess.run(join_command(running, 1), capture_output=True, text=True,
                                  timeout=60)
        assert terminal.returncode == 2
        assert "refused this node: job" in terminal.stderr
        assert "already has max_nodes=1 live nodes" in terminal.stderr
    finally:
        running.stop()
    assert not leftover_processes()


def test_join_rejects_malformed_rendezvous_options():
    out = subprocess.run([sys.executable, "-m", "elastic_nb", "join", "--backend", "c10d",
                          "--endpoint", "127.0.0.1:1", "--run-id", "x", "--nproc", "1",
                          "--rdzv-conf", "nokey"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--rdzv-conf takes KEY=VALUE" in out.stderr


def test_stacks_and_stop_reach_a_joined_node():
    job = enb.launch(lambda: __import__("time").sleep(120), nproc=1, min_nodes=2, max_nodes=2)
    terminal = subprocess.Popen(join_command(job, 1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        wait_until(lambda: len([w for w in job.workers if w.state == "running"]) == 2, timeout=120,
                   what="both nodes' ranks to run")
        remote = next(w for w in job.workers if w.node == 1)
        local_rank = 1 - remote.rank
        wait_until(lambda: "<lambda>" in job.stacks(timeout=10)[local_rank], timeout=60,
                   what="the local rank's stack in the function")
        # the joined node's host dumps its rank's stacks and sends them through its channel
        stacks = wait_until(lambda: (s := job.stacks(timeout=10)) and "<lambda>" in s[remote.rank] and s,
                            timeout=60, what="the joined rank's stack in the function")
        assert sorted(stacks) == [0, 1]
        assert "most recent call first" in stacks[remote.rank]
        assert "<lambda>" in stacks[local_rank]  # the local rank dumped its real stack
        job.stop()
        assert terminal.wait(timeout=60) != 0  # the joined node was stopped, not finished
        assert job.state == "stopped"
    finally:
        job.stop()
        if terminal.poll() is None:
            terminal.kill()
        terminal.communicate()


def test_a_node_the_job_started_gives_up_at_once_when_its_kernel_is_gone():
    """A Slurm or ssh node that starts after its kernel died (it was queued) finds no Job at the
    address it was given: it exits with why, long before its rendezvous timeout (600 s here)
    would end a wait on the store, and frees its allocation."""
    closed = []
    for _ in range(2):  # a port nothing listens on, for the Job and for its store
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed.append(probe.getsockname()[1])
    terminal = subprocess.run(
        [sys.executable, "-m", "elastic_nb", "join", "--backend", "c10d", "--endpoint",
         f"127.0.0.1:{closed[1]}", "--run-id", "gone", "--nproc", "1", "--timeout", "600",
         "--job-address", f"127.0.0.1:{closed[0]}", "--ticket", "1", "--key-stdin"],
        input=f"{'ab' * 32}\n{{}}\n", capture_output=True, text=True, timeout=120)
    assert terminal.returncode == 2, terminal.stderr
    assert f"job gone is not at 127.0.0.1:{closed[0]}" in terminal.stderr
    assert "its kernel has ended" in terminal.stderr
