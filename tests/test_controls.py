"""Live controls on a running job: user restart and stack dumps of a hung rank."""

from __future__ import annotations

import inspect

import scenarios
from util import running_workers, wait_until

import elastic_nb as enb


def _line_of(text: str, fn) -> int:
    """The line number in ``fn``'s file of the line of ``fn`` that holds ``text``."""
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_stacks_show_where_a_hung_rank_waits():
    job = enb.launch(scenarios.stuck_before_all_reduce, 1, nproc=2)
    try:
        running_workers(job, 2, timeout=60)

        sleeping = (f"line {_line_of('time.sleep(600)', scenarios.stuck_before_all_reduce)} "
                    "in stuck_before_all_reduce")

        def both_dumped():
            # A dump taken while a rank still unpickles its call or joins the group is a true
            # stack, but not yet the hang: wait until rank 0 waits in the all-reduce and
            # rank 1 sleeps.
            dumps = job.stacks(timeout=5)
            settled = len(dumps) == 2 and "all_reduce" in dumps[0] and sleeping in dumps[1]
            return dumps if settled else None

        stacks = wait_until(both_dumped, timeout=60, what="rank 0 in all_reduce, rank 1 asleep")
        assert "in stuck_before_all_reduce" in stacks[0]
        assert sleeping not in stacks[0]
        assert job.state == "running"
    finally:
        job.stop()


def test_user_restart_starts_a_new_attempt_without_using_the_budget():
    job = enb.launch(scenarios.restart_counter, nproc=2, max_restarts=0)
    try:
        wait_until(lambda: job.logs().count("attempt with restart count 0") == 2, timeout=60,
                   what="attempt 0 to print")
        job.restart()
        wait_until(lambda: [w.attempt for w in job.workers if w.state == "running"] == [1, 1],
                   timeout=60, what="attempt 1 to run")
        restarting = [e for e in job.events if e.kind == "restarting"]
        assert [e.detail["reason"] for e in restarting] == ["user"]
        assert restarting[0].detail["remaining_restarts"] == 0
        wait_until(lambda: job.logs(attempt=1).count("attempt with restart count 0") == 2,
                   timeout=60, what="attempt 1's lines")
        assert job.logs(attempt=0).count("attempt with restart count 0") == 2
    finally:
        job.stop()
