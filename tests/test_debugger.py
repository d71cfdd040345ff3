"""A rank's debugger: breakpoint() and post-mortem pdb, driven through the Job."""

from __future__ import annotations

import os
import stat

import elastic_nb as enb
import pytest
import scenarios
from elastic_nb.kernel.debug_client import DebuggerBusy
from util import alive, wait_until


def paused(job: enb.Job, rank: int) -> enb.WorkerInfo:
    job.wait_until(lambda: any(w.rank == rank and w.state == "paused" for w in job.workers),
                   timeout=60, what=f"rank {rank} paused")
    return next(w for w in job.workers if w.rank == rank)


def test_a_breakpoint_pauses_one_rank_p_shows_a_local_and_c_lets_the_job_finish():
    job = enb.launch(scenarios.pause_on_rank, 1, nproc=2)
    paused(job, 1)
    (event,) = [e for e in job.events if e.kind == "paused"]
    assert (event.rank, event.detail["reason"]) == (1, "breakpoint")
    assert event.detail["where"].startswith("scenarios.py:") and "pause_on_rank" in event.detail["where"]
    assert event.detail["source"] == "value += 1  # where it stops"
    assert "paused at scenarios.py:" in job.summary() and "job.debug(1)" in job.summary()
    assert [w.state for w in job.workers] == ["running", "paused"]
    assert job.snapshot().workers[1].paused_at.startswith("scenarios.py:")
    session = job.debug_session(1)
    assert "-> value += 1  # where it stops" in session.output
    assert session.send("p value") == "10\n"
    assert "def pause_on_rank" in session.send("l")
    session.send("c")
    assert session.ended and session.end_message == "rank 1 continues"
    assert job.result(timeout=60) == {0: 0, 1: 11}



def test_the_debugger_socket_is_private_and_a_second_client_is_refused():
    job = enb.launch(scenarios.pause_on_rank, 0, nproc=1)
    worker = paused(job, 0)
    path = worker.pause.socket
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(path).st_mode)
    session = job.debug_session(0)
    with pytest.raises(DebuggerBusy, match="rank 0 already has a debugger client"):
        job.debug_session(0)
    assert session.send("p 6 * 7") == "42\n"  # the first client is unharmed
    session.send("c")
    assert job.result(timeout=60) == {0: 1}
    assert not os.path.exists(path)


def test_job_debug_reads_commands_and_writes_pdb_answers_until_the_rank_continues():
    job = enb.launch(scenarios.pause_on_rank, 0, nproc=2)
    paused(job, 0)
    commands = iter(["p value + 5", "c"])
    prompts, written = [], []
    job.debug(0, read=lambda prompt: prompts.append(prompt) or next(commands),
              write=written.append)
    assert prompts == ["(Pdb) ", "(Pdb) "]
    assert "-> value += 1" in written[0] and "5" in written[1]
    assert written[-1] == "[elastic_nb] rank 0 continues"
    assert job.result(timeout=60) == {0: 1, 1: 10}


def test_q_fails_the_rank_with_a_clear_reason_and_the_restart_policy_applies():
    job = enb.launch(scenarios.pause_on_rank, 1, nproc=2, max_restarts=1)
    paused(job, 1)
    session = job.debug_session(1)
    session.send("q")
    assert "quit from the debugger" in session.end_message
    # the restarted attempt pauses again: quit once more and the budget is spent
    job.wait_until(lambda: job.restart_count == 1, timeout=60, what="the restart")
    paused(job, 1)
    job.debug_session(1).send("q")
    with pytest.raises(enb.JobFailed, match=r"rank 1 was quit from the debugger \(q\)"):
        job.result(timeout=60)


def test_post_mortem_opens_at_the_failing_frame_then_the_rank_fails_and_restarts():
    job = enb.launch(scenarios.fail_first_attempt_with_locals, 1, nproc=2, post_mortem=True,
                     max_restarts=1)
    paused(job, 1)
    (event,) = [e for e in job.events if e.kind == "paused"]
    assert event.detail["reason"] == "post_mortem"
    assert event.detail["exception"] == "ValueError: bad batch [1, 42]"
    session = job.debug_session(1)
    assert 'raise ValueError(f"bad batch {batch}")' in session.output
    assert session.send("p batch") == "[1, 42]\n"
    assert "'failing': 1" in session.send("p locals()")
    session.send("c")
    assert "fails with its error" in session.end_message
    assert job.result(timeout=60) == {0: 0, 1: 1}  # attempt 1 does not raise
    assert job.restart_count == 1
    assert [f.message for f in job.failure_history] == ["ValueError: bad batch [1, 42]"]


def test_post_mortem_gives_up_after_its_timeout_with_a_warning_and_the_original_error():
    job = enb.launch(scenarios.raise_on_rank, 0, nproc=1, post_mortem=True,
                     post_mortem_timeout=1)
    with pytest.raises(enb.JobFailed, match="rank 0 refuses"):
        job.result(timeout=60)
    assert "no debugger came to rank 0 within 1 s (post_mortem_timeout)" in job.logs()


def test_stop_ends_a_paused_rank_and_closes_its_session_with_a_message():
    job = enb.launch(scenarios.pause_on_rank, 0, nproc=2)
    worker = paused(job, 0)
    session = job.debug_session(0)
    job.stop()
    assert not alive(worker.pid)
    assert session.send("p value") == "" and session.ended
    assert "the rank ended (stopped, restarted or killed)" in session.end_message


def test_a_rank_that_is_not_paused_says_how_to_pause_it():
    job = enb.launch(scenarios.wait_forever, nproc=1)
    job.wait_until(lambda: "waiting" in job.logs(), timeout=60, what="the rank")
    with pytest.raises(ValueError, match=r"rank 0 is not paused \(running\).*breakpoint\(\)"):
        job.debug(0)
    job.stop()
    wait_until(lambda: job.done, timeout=10, what="stopped")


def test_torch_distributed_breakpoint_pauses_its_rank_and_the_others_wait_in_the_barrier():
    job = enb.launch(scenarios.torch_breakpoint, 1, nproc=2)
    paused(job, 1)
    assert [w.state for w in job.workers] == ["running", "paused"]
    session = job.debug_session(1)
    session.send("up")  # from torch's breakpoint to the caller
    assert session.send("p marker") == "101\n"
    session.send("c")
    assert job.result(timeout=60) == {0: 100, 1: 101}


def test_pdb_set_trace_pauses_too_and_pythonbreakpoint_0_turns_breakpoint_off():
    job = enb.launch(scenarios.pdb_set_trace, nproc=1)
    paused(job, 0)
    session = job.debug_session(0)
    assert session.send("p marker") == "7\n"
    session.send("c")
    assert job.result(timeout=60) == {0: 7}
    quiet = enb.launch(scenarios.pause_on_rank, 0, nproc=1, env={"PYTHONBREAKPOINT": "0"})
    assert quiet.result(timeout=60) == {0: 1}
    assert "paused" not in [e.kind for e in quiet.events]
