"""The rules of nodes a scheduler starts, and the checks of where a node runs: no process.

A queued node holds no world back from finishing and fails nobody when it
never comes; a node that leaves on its scheduler's warning has ``left``; a
placement that cannot work is a LaunchError before anything is submitted.
The one process here is the reaper's (its own, with a stand-in ``scancel``
that records what it was asked: no Slurm needed).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import elastic_nb as enb
from elastic_nb.kernel import scheduled
from elastic_nb.kernel.launchers import Launch, NodeCommand, reaper
from elastic_nb.kernel.launchers.slurm import queue_status
from elastic_nb.kernel.planning import make_plan
from elastic_nb.model import controls, rules, scheduling
from elastic_nb.model.plan import NodePlan
from elastic_nb.model.scheduling import SchedulerStatus
from elastic_nb.model.state import EventKind, JobState, JobStatus, NodeStatus


def state_with(*statuses: NodeStatus) -> JobState:
    """A running job whose local nodes have these statuses, and one queued Slurm node after them."""
    state = JobState(started_at=0.0, status=JobStatus.RUNNING)
    for index, status in enumerate(statuses):
        rules.add_node(state, index, 1, "default", local=True).status = status
    scheduling.node_submitting(state, len(statuses), 1, "default", "Slurm", 1.0)
    scheduling.node_submitted(state, len(statuses), "Slurm job 7", 1.0)
    return state


def test_a_submitted_node_is_queued_and_its_scheduler_state_is_an_event_only_when_it_changes():
    state = state_with(NodeStatus.RUNNING)
    node = state.nodes[1]
    assert node.status == NodeStatus.QUEUED and node.scheduler == "queued: Slurm job 7"
    assert [e.kind for e in state.events] == [EventKind.NODE_ADDED, EventKind.SUBMITTED]
    pending = SchedulerStatus("PENDING", "Resources")
    first = scheduling.scheduler_changed(state, 1, pending, "Slurm job 7", 2.0)
    assert [e.detail for e in first] == [{"state": "PENDING", "submission": "Slurm job 7",
                                          "reason": "Resources"}]
    assert node.scheduler == "queued: Slurm job 7 PENDING (Resources)"
    assert scheduling.scheduler_changed(state, 1, pending, "Slurm job 7", 3.0) == []
    scheduling.scheduler_changed(state, 1, SchedulerStatus("RUNNING", where="c2"), "Slurm job 7", 4)
    assert node.scheduler == "running on c2: Slurm job 7"
    scheduling.scheduled_node_joined(state, 1, "c2", 5.0)
    assert node.status == NodeStatus.STARTING and node.host == "c2"


def test_a_world_that_finished_does_not_wait_for_a_node_still_queued():
    state = state_with(NodeStatus.RUNNING)
    state.nodes[0].status = NodeStatus.SUCCEEDED
    assert [e.kind for e in rules.check_finished(state, 5.0)] == [EventKind.SUCCEEDED]


def test_a_job_whose_nodes_are_lost_waits_for_the_queued_one_and_fails_when_it_never_comes():
    state = state_with(NodeStatus.LOST)
    assert rules.check_finished(state, 5.0) == []
    events = scheduling.never_joined(state, 1, "Slurm job 7 ended before it joined: FAILED", 6.0)
    assert [e.kind for e in events] == [EventKind.NODE_EXITED, EventKind.FAILED]
    assert "Slurm job 7 ended before it joined" in state.error
    assert scheduling.never_joined(state, 1, "again", 7.0) == []  # only a queued node


def test_stop_and_kill_end_a_queued_node_at_once():
    state = state_with()
    controls.stop_requested(state, 2.0)
    assert state.nodes[0].status == NodeStatus.STOPPED and state.status == JobStatus.STOPPED
    state = state_with(NodeStatus.RUNNING)
    controls.node_killed(state, 1, 2.0)
    assert state.nodes[1].status == NodeStatus.KILLED and state.nodes[1].gone


def test_queued_nodes_count_toward_max_nodes():
    state = state_with(NodeStatus.RUNNING)
    assert "max_nodes=2 live nodes [0, 1] (counting those still queued)" in (
        controls.check_can_add_node(state, 2) or "")
    assert controls.check_can_add_node(state, 3) is None


def test_a_node_that_leaves_on_its_schedulers_warning_has_left_and_the_job_succeeds_without_it():
    state = state_with(NodeStatus.RUNNING)
    scheduling.scheduled_node_joined(state, 1, "c1", 2.0)
    state.nodes[1].status = NodeStatus.RUNNING
    events = scheduling.node_leaving(state, 1, "SIGUSR1: its scheduler ends it soon", 3.0)
    assert [(e.kind, e.detail["reason"]) for e in events] == [
        (EventKind.PREEMPTING, "SIGUSR1: its scheduler ends it soon")]
    assert scheduling.node_leaving(state, 1, "again", 3.5) == []
    rules.node_gone(state, 1, 0, 4.0, "on c1")
    assert state.nodes[1].status == NodeStatus.LEFT and not state.done
    state.nodes[0].status = NodeStatus.SUCCEEDED
    assert [e.kind for e in rules.check_finished(state, 5.0)] == [EventKind.SUCCEEDED]


@pytest.mark.parametrize(("line", "expected"), [
    ("7|PENDING|Resources|n/a", SchedulerStatus("PENDING", "Resources")),
    ("7|PENDING|JobHeldUser|n/a", SchedulerStatus("PENDING", "JobHeldUser")),
    ("7|RUNNING|None|c2", SchedulerStatus("RUNNING", "", "c2")),
    ("7|TIMEOUT|TimeLimit|c1", SchedulerStatus("TIMEOUT", "TimeLimit", "c1", ended=True)),
    ("7|CANCELLED|None|n/a", SchedulerStatus("CANCELLED", "", "", ended=True)),
    # Slurm is still ending it (its processes, its epilog): not over, CANCELLED may follow
    ("7|COMPLETING|None|c1", SchedulerStatus("COMPLETING", "", "c1")),
])
def test_squeues_line_says_the_state_the_reason_and_where(line, expected):
    assert queue_status(line) == ("7", expected)


@pytest.mark.parametrize(("on", "listen_addr", "complaint"), [
    (enb.Slurm(), "127.0.0.1", "cannot reach this kernel at 127.0.0.1: launch with listen_addr"),
    (enb.Slurm(signal="soon"), "0.0.0.0", "must be like 'USR1@60'"),
    (enb.Slurm(extra="--gres=gpu:1"), "0.0.0.0", "takes a list of arguments"),
    (enb.SSH(""), "0.0.0.0", "must be 'user@host'"),
    (enb.SSH("-oProxyCommand=x"), "0.0.0.0", "must be 'user@host'"),
    ("slurm", "0.0.0.0", "must be elastic_nb.Slurm(...) or elastic_nb.SSH"),
])
def test_a_placement_that_cannot_work_is_refused_before_anything_is_submitted(on, listen_addr,
                                                                               complaint):
    with pytest.raises(enb.LaunchError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        make_plan(print, (), {}, {"nodes": [enb.Node(1, on=on)], "listen_addr": listen_addr})


def test_a_node_elsewhere_needs_the_jobs_function_to_find_the_job():
    with pytest.raises(enb.LaunchError, match=r"pass the function to launch\(fn, ...\)"):
        make_plan(None, (), {}, {"nodes": [enb.Node(1, fn=print, on=enb.Slurm())],
                                 "listen_addr": "0.0.0.0"})


def test_the_warning_signal_is_named_as_the_signal_module_spells_it():
    assert enb.Slurm().signal_name == "SIGUSR1"
    assert enb.Slurm(signal="B:SIGTERM@120").signal_name == "SIGTERM"


@pytest.mark.parametrize(("lines", "cancelled"), [
    ("+7\n+8\n-7\n", "8 \n"),  # the kernel died with job 8 still its own
    ("+7\n-7\n", None),  # everything ended before the kernel did: no scancel at all
])
def test_the_reaper_cancels_what_the_kernel_left_when_its_input_ends(tmp_path, lines, cancelled):
    """The reaper's input ends when the kernel does, however it died (the pipe's other end);
    then one scancel for the Slurm jobs the kernel had not seen end."""
    calls = tmp_path / "scancel.args"
    scancel = tmp_path / "scancel"
    scancel.write_text(f'#!/bin/sh\nfor id in "$@"; do printf "%s " "$id"; done > {calls}\necho >> {calls}\n')
    scancel.chmod(0o755)
    subprocess.run([sys.executable, reaper.__file__], input=lines, text=True, timeout=60,
                   check=True, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert (calls.read_text() if calls.exists() else None) == cancelled


def test_a_node_reserved_holds_its_index_and_one_that_joined_before_its_sbatch_returned_stays():
    """A node is reserved under the job's lock (submitting) and submitted off it: a fast node
    may join before the submission is recorded, which then changes nothing of its state."""
    state = JobState(started_at=0.0, status=JobStatus.RUNNING)
    scheduling.node_submitting(state, 0, 1, "default", "Slurm", 1.0)
    assert state.nodes[0].status == NodeStatus.QUEUED
    assert state.nodes[0].scheduler == "submitting: Slurm"
    scheduling.scheduled_node_joined(state, 0, "c1", 2.0)
    events = scheduling.node_submitted(state, 0, "Slurm job 9", 1.5)
    assert [e.detail for e in events] == [{"submission": "Slurm job 9"}]
    assert state.nodes[0].status == NodeStatus.STARTING
    assert state.nodes[0].scheduler == "submitting: Slurm"  # until the watch sees it running


class _RecordedLaunch(Launch):
    """A launch that records what it was asked (the node handle's order is under test here,
    not a scheduler's)."""

    name = "recorded"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def poll(self) -> SchedulerStatus | None:
        return SchedulerStatus("RUNNING")

    def kill(self, remote_pid: int, reached: bool) -> None:
        self.asked.append("kill")

    def cancel(self, remote_pid: int) -> None:
        self.asked.append("cancel")

    def output(self) -> str:
        return ""


def test_a_node_cancelled_while_it_is_being_submitted_is_cancelled_once_it_is(monkeypatch):
    """``stop`` (or a kill) may come while sbatch runs off the job's lock: the node is marked,
    and its launch is cancelled as soon as the launcher returns it, once."""
    launch = _RecordedLaunch()

    class Launcher:
        def start(self, command: NodeCommand) -> Launch:
            node.cancel()  # while "sbatch" runs
            return launch

    monkeypatch.setattr(scheduled, "launcher_for", lambda on: Launcher())
    node = scheduled.ScheduledNode(0, NodePlan(1, "default", b"", on=enb.Slurm()),
                                   NodeCommand(0, "run", (), "0" * 64))
    assert node.submit() is launch
    node.cancel()
    assert launch.asked == ["cancel"]
