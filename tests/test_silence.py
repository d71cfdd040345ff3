"""The silent rows of the fault matrix: a frozen node, a frozen rank, a straggler.

Nothing dies and no socket closes: a node frozen at any moment is lost
after ``liveness_timeout`` (or sooner, by its rendezvous heartbeat) and
fenced, the survivor re-forms without it and finishes; a woken node
changes nothing; a frozen rank makes its peers wait until
``collective_timeout`` fails their collective (then the restart policy
applies) or until it is thawed; a slowed rank makes the job slower, not
wrong. Each cell checks the events and their order, the final state, the
results (one world), the time to the outcome, and (the autouse fixture)
that no process is left.
"""

from __future__ import annotations

import time

import psutil
import pytest
import scenarios
from faults import BOUND, MOMENTS, at_moment, kinds, launch, outcome_time, report
from util import running_workers, wait_until

import elastic_nb as enb

LIVENESS = 3.0  # a short liveness timeout keeps the matrix quick; the default is 5 s


def node_tree(job: enb.Job, index: int) -> list[psutil.Process]:
    host = psutil.Process(job.snapshot().nodes[index].host_pid)
    return [host, *host.children(recursive=True)]


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
@pytest.mark.parametrize("moment", MOMENTS)
def test_a_frozen_node_is_lost_fenced_and_the_survivor_finishes(tmp_path, moment, rdzv):
    job = launch(tmp_path, moment, liveness_timeout=LIVENESS, **rdzv)
    try:
        frozen: list[psutil.Process] = []

        def freeze() -> None:
            frozen.extend(node_tree(job, 1))
            job.freeze_node(1)

        struck = at_moment(job, moment, freeze)
        took = outcome_time(job, struck)
        results = job.result()
    finally:
        job.stop()
    events = kinds(job)
    assert events.index("frozen") < events.index("node_lost") or moment == "exit_barrier" and \
        "node_lost" in events
    assert job.nodes[1] == "lost" and "went silent" in job.snapshot().nodes[1].error
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in frozen), \
        "the frozen node was not fenced"
    assert "budget" not in str(job.events) and job.restart_count == 0
    world = 2 if moment == "exit_barrier" else 1
    assert {r["world_size"] for r in results.values()} == {world}  # one world's results
    assert took < BOUND
    report("freeze node", moment, rdzv["backend"], took, f"succeeded, world {world}")


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
def test_a_frozen_node_that_wakes_after_it_was_lost_changes_nothing(tmp_path, rdzv):
    job = launch(tmp_path, "in_collective", liveness_timeout=LIVENESS, **rdzv)
    try:
        struck = at_moment(job, "in_collective", lambda: job.freeze_node(1))
        job.wait_until(lambda: job.nodes[1] == "lost", timeout=30, what="node 1 declared lost")
        with pytest.raises(ValueError, match="node 1 is not running .status: lost"):
            job.thaw(node=1)  # fenced: there is nothing left of it to wake
        results = job.result(timeout=60)
        took = job.snapshot().finished_at - struck
    finally:
        job.stop()
    assert list(results) == [0] and results[0]["world_size"] == 1
    assert kinds(job).count("node_lost") == 1 and kinds(job).count("restarting") == 1
    report("freeze, thaw late", "in_collective", rdzv["backend"], took, "succeeded, world 1")


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
@pytest.mark.parametrize("moment", ["in_collective", "between_collectives"])
def test_a_frozen_rank_fails_its_peers_collective_after_collective_timeout(tmp_path, moment,
                                                                            rdzv):
    job = launch(tmp_path, moment, collective_timeout=5, **rdzv)
    try:
        struck = at_moment(job, moment, lambda: job.freeze(1))
        took = outcome_time(job, struck)
        results = job.result()
    finally:
        job.stop()
    failure = next(e for e in job.events if e.kind == "worker_failed" and e.rank == 0)
    assert "collective timeout" in failure.detail["message"]
    assert "all_reduce did not complete within collective_timeout=5 s" in failure.detail["message"]
    assert kinds(job).index("frozen") < kinds(job).index("worker_failed")
    # the failing node restarts (its budget), the frozen one's node re-forms with it
    assert job.restart_count == 1 and {r["world_size"] for r in results.values()} == {2}
    assert took < BOUND
    report("freeze rank", moment + " +ct", rdzv["backend"], took, "succeeded after 1 restart")


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
def test_a_frozen_rank_without_a_collective_timeout_holds_its_peers_until_thawed(tmp_path, rdzv):
    job = launch(tmp_path, "between_collectives", liveness_timeout=2.0, **rdzv)
    try:
        at_moment(job, "between_collectives", lambda: job.freeze(1))
        assert job.snapshot().workers[1].frozen
        wait_until(lambda: "phase collective 1" in job.logs(rank=0), timeout=30,
                   what="rank 0 in the next all-reduce, waiting for rank 1")
        # rank 1 answers no stack dump (it is stopped); its node still beats: not lost
        stacks = job.stacks(timeout=4)
        assert "all_reduce" in stacks[0] and "did not dump its stacks" in stacks[1]
        assert "node_lost" not in kinds(job) and job.state == "running"
        struck = time.time()
        job.thaw(1)
        results = job.result(timeout=60)
        took = job.snapshot().finished_at - struck
    finally:
        job.stop()
    assert kinds(job).index("frozen") < kinds(job).index("thawed")
    assert job.restart_count == 0 and {r["world_size"] for r in results.values()} == {2}
    report("freeze rank", "between (no ct)", rdzv["backend"], took, "waits; thawed: succeeded")


@pytest.mark.slow
@pytest.mark.backends("c10d", "etcd3")
def test_a_slowed_rank_makes_the_job_slower_not_wrong(rdzv):
    job = enb.launch(scenarios.elastic_steps, 40, 0.05, nproc=2, **rdzv)
    try:
        worker = running_workers(job, 2)[1]
        job.slow(1, 0.25)
        assert next(t for t in job.snapshot().workers if t.rank == 1).slowed == 0.25
        # the duty cycle stops it three quarters of the time: it is seen stopped, then runs on
        wait_until(lambda: psutil.Process(worker.pid).status() == psutil.STATUS_STOPPED,
                   timeout=10, what="the slowed rank stopped by its duty cycle")
        results = job.result(timeout=120)
    finally:
        job.stop()
    assert results == {r: {"world_size": 2, "restart_count": 0} for r in (0, 1)}
    slowed = next(e for e in job.events if e.kind == "slowed")
    assert slowed.rank == 1 and slowed.detail["fraction"] == 0.25
    report("slow rank 25%", "in collectives", rdzv["backend"], job.elapsed, "succeeded, slower")


def test_controls_on_what_is_not_running_are_refused_with_the_reason():
    job = enb.launch(scenarios.rank, nproc=1)
    job.result(timeout=60)
    with pytest.raises(ValueError, match="rank 0 is not running"):
        job.freeze(0)
    with pytest.raises(ValueError, match="node 0 is not running"):
        job.freeze_node(0)
    with pytest.raises(ValueError, match="must be in \\(0, 1\\]"):
        job.slow(0, 0)
    with pytest.raises(ValueError, match="thaw a rank"):
        job.thaw()
