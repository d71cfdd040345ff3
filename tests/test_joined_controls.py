"""Every control reaches the ranks of a joined node through its channel, and only through it.

A node joined with ``python -m elastic_nb join`` (here from this machine, as
the quick way to get one) reads its ranks' files and debugger sockets for
the Job: the hang map gets its rank's flight recorder, pdb is relayed to its
paused rank (a second client is refused as locally, a rank killed mid-session
ends it), and a node that stops answering or whose channel goes gives each of
its ranks a line instead of a wait.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from util import join_command, running_workers, wait_until

import elastic_nb as enb
from elastic_nb.kernel.debug_client import DebuggerBusy


def make_skip_unless_remote():
    """A cell-style function (by value: the joined node has no copy of this file): every rank
    all-reduces once; then the joined node's rank all-reduces again, the local one sleeps."""

    def skip_unless_remote():
        import os
        import time

        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        t = torch.ones(4)
        dist.all_reduce(t)
        print("hanging", flush=True)
        if os.environ["ROLE_NAME"] == "remote":
            dist.all_reduce(t)  # waits for the local rank, which never comes
        else:
            time.sleep(600)

    return skip_unless_remote


def make_pause_if_remote():
    """The joined node's rank stops at breakpoint(); every rank returns rank * 10 (+ 1 there)."""

    def pause_if_remote():
        import os

        value = int(os.environ["RANK"]) * 10
        if os.environ["ROLE_NAME"] == "remote":
            breakpoint()
            value += 1  # where it stops
        return value

    return pause_if_remote


@contextmanager
def joined(tmp_path, fn, **options) -> Iterator[tuple[enb.Job, subprocess.Popen]]:
    """A job of two nodes of one rank: this kernel's, and one joined from a terminal (in a
    process group of its own); both end with the block."""
    job = enb.launch(fn, nproc=1, min_nodes=2, max_nodes=2, **options)
    with open(tmp_path / "joined.log", "w") as out:
        terminal = subprocess.Popen(join_command(job, 1, "--log-dir", str(tmp_path / "logs")),
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield job, terminal
    finally:
        job.stop()
        try:
            terminal.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(terminal.pid, signal.SIGKILL)
            terminal.wait()


def paused_remote(job: enb.Job) -> int:
    worker = job.wait_until(lambda: next((w for w in job.workers if w.node == 1
                                          and w.state == "paused"), None),
                            timeout=120, what="the joined node's rank paused")
    return worker.rank


def test_the_hang_map_reads_a_joined_rank_through_its_channel_and_names_the_missing_local_one(
        tmp_path):
    with joined(tmp_path, make_skip_unless_remote(), hang_after=0) as (job, _):
        job.wait_until(lambda: job.logs().count("hanging") == 2, timeout=120,
                       what="both ranks past their first all-reduce")
        remote = next(w.rank for w in job.workers if w.node == 1)
        local = 1 - remote
        report = wait_until(lambda: (r := job.hang_report()).suspects and r, timeout=60,
                            what="a suspect")
    assert report.answer.startswith(f"rank {local} never entered all_reduce #2 float[4] of the "
                                    f"default group; rank {remote} has waited in it for"), report.answer
    assert f"rank {local} is at test_joined_controls.py:" in report.answer
    assert "`time.sleep(600)`" in report.answer
    assert report.suspects == [local]
    assert report.ranks[remote].status == "answered"  # its own host read its flight recorder
    assert report.ranks[remote].where and "dist.all_reduce(t)" in report.ranks[remote].where


def test_pdb_in_a_joined_rank_p_shows_a_local_c_resumes_and_a_second_client_is_refused(tmp_path):
    with joined(tmp_path, make_pause_if_remote()) as (job, _):
        remote = paused_remote(job)
        local = 1 - remote
        refusals: list[str] = []
        commands = iter(["p value", "c"])

        def read(prompt: str) -> str:
            if not refusals:  # while the first session is open
                with pytest.raises(DebuggerBusy) as refused:
                    job.debug_session(remote)
                refusals.append(str(refused.value))
            return next(commands)

        written: list[str] = []
        job.debug(remote, read=read, write=written.append)
        assert job.result(timeout=60) == {remote: remote * 10 + 1, local: local * 10}
    assert refusals == [f"elastic_nb: rank {remote} already has a debugger client; close that one "
                        "first"]
    assert "-> value += 1  # where it stops" in written[0]
    assert written[1] == str(remote * 10)
    assert written[-1] == f"[elastic_nb] rank {remote} continues"


def test_a_joined_rank_killed_while_its_session_is_open_ends_the_session(tmp_path):
    with joined(tmp_path, make_pause_if_remote(), max_restarts=0) as (job, _):
        remote = paused_remote(job)
        session = job.debug_session(remote)
        assert session.send("p value") == f"{remote * 10}\n"
        job.kill(remote)
        assert job.wait(timeout=60) == "failed"  # its node saw it die
        assert session.send("p value") == "" and session.ended
    assert "the rank ended (stopped, restarted or killed)" in session.end_message


def test_a_joined_node_that_stops_answering_or_loses_its_channel_gives_its_ranks_a_line(tmp_path):
    with joined(tmp_path, lambda: __import__("time").sleep(120), liveness_timeout=120,
                hang_after=0) as (job, terminal):
        workers = running_workers(job, 2, timeout=120)
        remote = next(w.rank for w in workers if w.node == 1)
        local = 1 - remote
        wait_until(lambda: all("<lambda>" in s for s in job.stacks(timeout=10).values()),
                   timeout=60, what="both ranks' stacks in the function")
        where = f"rank {remote} runs on node 1, joined from {socket.gethostname()}"
        os.killpg(terminal.pid, signal.SIGSTOP)  # the joined host and its rank: silent, not gone
        stacks = job.stacks(timeout=2)
        assert "<lambda>" in stacks[local]
        assert stacks[remote] == f"{where}: it did not answer within 2 s"

        asked: dict[int, str] = {}
        asking = threading.Thread(target=lambda: asked.update(job.stacks(timeout=60)), daemon=True)
        asking.start()
        requests = job._core.nodes[1]._requests  # white-box: nothing else shows a request on its way
        wait_until(lambda: len(requests) == 1, timeout=30, what="the stacks request on its way")
        os.killpg(terminal.pid, signal.SIGKILL)  # its channel closes with it
        asking.join(timeout=120)
        assert not asking.is_alive()
    # not "did not answer within 60 s": the request ended with the channel
    assert asked[remote] == f"{where}: its channel closed before it answered"
