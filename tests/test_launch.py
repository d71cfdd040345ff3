"""The launch API as a notebook user meets it: what travels, what returns, what can be controlled."""

from __future__ import annotations

import linecache
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import scenarios
from util import alive, job_processes, leftover_processes, running_workers, wait_until

import elastic_nb as enb


def test_lambda():
    assert enb.run(lambda: int(os.environ["RANK"]) * 10, nproc=2) == {0: 0, 1: 10}


def test_closure_and_kwargs():
    factor = 7

    def scaled(x, offset=0):
        return int(os.environ["RANK"]) * factor + x + offset

    assert enb.run(scaled, 1, nproc=2, offset=100) == {0: 101, 1: 108}


def test_main_module_function(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import os
        import elastic_nb as enb

        def work(greeting):
            return f"{greeting} from {os.environ['RANK']}"

        if __name__ == "__main__":
            print(enb.run(work, "hi", nproc=2))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "{0: 'hi from 0', 1: 'hi from 1'}"


def test_module_from_runtime_sys_path(tmp_path, monkeypatch):
    package = tmp_path / "late_added"
    package.mkdir()
    (package / "late_module.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(package))
    import late_module

    assert enb.run(late_module.triple, 5, nproc=1) == {0: 15}


def test_traceback_quotes_notebook_cell_source():
    cell = "def train():\n    loss = float('nan')\n    raise ValueError(f'loss diverged: {loss}')\n"
    filename = "/tmp/ipykernel_0000/1234567.py"  # how ipykernel names a cell; no such file
    linecache.cache[filename] = (len(cell), None, cell.splitlines(True), filename)
    namespace = {"__name__": "__main__"}
    exec(compile(cell, filename, "exec"), namespace)
    try:
        with pytest.raises(enb.JobFailed) as raised:
            enb.run(namespace["train"], nproc=1)
    finally:
        del linecache.cache[filename]
    failure = raised.value.failures[0]
    assert failure.message == "ValueError: loss diverged: nan"
    assert f'File "{filename}", line 3, in train' in failure.traceback
    assert "raise ValueError(f'loss diverged: {loss}')" in failure.traceback
    assert "raise ValueError(f'loss diverged: {loss}')" in str(raised.value)


def test_launch_returns_while_the_job_runs_and_pids_are_visible():
    job = enb.launch(scenarios.sleep, 30, nproc=2)
    try:
        assert not job.done
        assert job.state in ("pending", "rendezvous")
        workers = running_workers(job, 2)
        assert [w.rank for w in workers] == [0, 1]
        for worker in workers:
            assert alive(worker.pid)
            assert worker.node == 0 and worker.restart_count == 0
        assert job.state == "running"
    finally:
        job.stop()


def test_logs_arrive_while_running():
    job = enb.launch(scenarios.tick_forever, nproc=2)
    try:
        wait_until(lambda: "[default1]:tick 2" in job.logs(rank=1), timeout=60,
                   what="rank 1's third line")
        assert job.state == "running"
        assert all(line.startswith("[default0]:tick ") for line in job.logs(rank=0).splitlines())
        assert job.logs(stream="stderr", rank=0) == ""
    finally:
        job.stop()
    assert job.state == "stopped"


def test_kill_rank_triggers_restart():
    job = enb.launch(scenarios.sleep_unless_restarted, 60, nproc=2, max_restarts=1)
    first = running_workers(job, 2)
    job.kill(1)
    assert job.result(timeout=120) == {0: 0, 1: 1}
    kinds = [e.kind for e in job.events]
    assert kinds.index("killed") < kinds.index("worker_failed") < kinds.index("restarting")
    failed = next(e for e in job.events if e.kind == "worker_failed")
    assert failed.rank == 1 and failed.detail["signal"] == "SIGKILL"
    assert not alive(first[1].pid)
    assert [f.rank for f in job.failure_history] == [1]
    assert job.restart_count == 1


def test_kill_with_another_signal_and_bad_rank():
    job = enb.launch(scenarios.sleep, 60, nproc=2)
    running_workers(job, 2)
    with pytest.raises(ValueError, match=r"rank 5 is not running.*running ranks: \[0, 1\]"):
        job.kill(5)
    with pytest.raises(ValueError, match="unknown signal"):
        job.kill(0, "SIGNOPE")
    job.kill(0, "SIGTERM")
    with pytest.raises(enb.JobFailed) as raised:
        job.result(timeout=60)
    assert raised.value.failures[0].signal == "SIGTERM"


def test_stop_leaves_no_process():
    job = enb.launch(scenarios.sleep, 60, nodes=[enb.Node(2), enb.Node(1)])
    workers = running_workers(job, 3)
    job.stop()
    assert job.state == "stopped"
    assert not leftover_processes()
    assert not any(alive(w.pid) for w in workers)
    assert job.events[-1].kind in ("stopped", "node_exited")
    assert "stopped" in [e.kind for e in job.events]
    with pytest.raises(enb.JobFailed, match="was stopped"):
        job.result()
    job.stop()  # idempotent


def test_stop_escalates_when_a_worker_ignores_sigterm():
    job = enb.launch(scenarios.ignore_sigterm_and_sleep, 120, nproc=2, shutdown_timeout=1)
    wait_until(lambda: job.logs().count("ignoring SIGTERM") == 2, timeout=60,
               what="both workers to ignore SIGTERM")
    job.stop()
    assert job.state == "stopped"
    assert not leftover_processes()


def test_a_restart_stops_a_worker_that_ignores_sigterm_within_shutdown_timeout():
    """torch stops the group for a restart with a 30 s SIGTERM grace; shutdown_timeout=1 holds
    instead (the bound below is far from both, so it tells them apart on a busy machine).
    After a worker *failure* torch's process context waits for the others with its own 30 s
    grace, which the agent cannot set; a worker that does not ignore SIGTERM dies at once."""
    job = enb.launch(scenarios.ignore_sigterm_and_sleep, 120, nproc=2, shutdown_timeout=1)
    wait_until(lambda: job.logs().count("ignoring SIGTERM") == 2, timeout=60,
               what="both workers to ignore SIGTERM")
    job.restart()
    wait_until(lambda: job.logs().count("ignoring SIGTERM") == 4, timeout=20,
               what="the next attempt, the workers stopped with SIGKILL after shutdown_timeout")
    job.stop()


def test_worker_exiting_without_error_file():
    with pytest.raises(enb.JobFailed) as raised:
        enb.run(scenarios.exit_without_report, 3, nproc=1)
    failure = raised.value.failures[0]
    assert failure.exitcode == 3 and failure.signal is None
    assert "exited with code 3 without an error report" in failure.message


def test_the_failure_that_ended_a_job_of_two_nodes_is_named_not_the_broken_collective_after_it():
    """Rank 1 raises; rank 0 fails in the collective that broke for it, in the same second
    (torch's stamp): whichever node's report comes first, the cause is rank 1's."""
    job = enb.launch(scenarios.raises_while_its_peer_waits_in_a_collective,
                     nodes=[enb.Node(1), enb.Node(1)])
    with pytest.raises(enb.JobFailed) as raised:
        job.result(timeout=120)
    assert str(raised.value).startswith("rank 1 (node 1, default) failed: ValueError: rank 1 gives up")
    assert 1 in raised.value.failures


def test_unpicklable_return_value_is_a_clear_error():
    with pytest.raises(enb.JobFailed, match="cannot be sent back to the notebook"):
        enb.run(lambda: threading.Lock(), nproc=1)


def test_nothing_printed_is_lost_on_failure():
    def noisy_then_crash():
        for i in range(500):
            print(f"line {i}")
        print("no newline at the end", end="")
        raise SystemExit(4)

    job = enb.launch(noisy_then_crash, nproc=1)
    assert job.wait(timeout=60) == "failed"
    lines = job.logs(rank=0, stream="stdout").splitlines()
    assert lines[:500] == [f"[default0]:line {i}" for i in range(500)]
    assert lines[500] == "[default0]:no newline at the end"


def test_forkserver_start_method():
    assert enb.run(scenarios.rank, nproc=2, start_method="forkserver") == {0: 0, 1: 1}


def test_agents_and_workers_die_with_the_kernel(tmp_path):
    script = tmp_path / "kernel.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import elastic_nb as enb, scenarios
        job = enb.launch(scenarios.sleep, 120, nproc=2)
        while len([w for w in job.workers if w.state == "running"]) < 2:
            time.sleep(0.05)
        print(job.run_id, *[w.pid for w in job.workers], flush=True)
        time.sleep(300)
    """))
    kernel = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        run_id, *pids = kernel.stdout.readline().split()
        assert len(pids) == 2 and job_processes(run_id)
        kernel.send_signal(signal.SIGKILL)
        kernel.wait()
        wait_until(lambda: not job_processes(run_id), timeout=15,
                   what="the dead kernel's agents and workers to exit")
        # a worker dies with its parent (PR_SET_PDEATHSIG), a moment after its agent's group
        wait_until(lambda: not any(alive(int(p)) for p in pids), timeout=15,
                   what="the workers the kernel printed to exit")
    finally:
        kernel.kill()
        kernel.wait()


def test_interrupting_a_blocking_run_stops_the_job(tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import elastic_nb as enb, scenarios
        try:
            enb.run(scenarios.tick_forever, nproc=2)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """))
    kernel = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_until(lambda: len(job_processes(kernel_pid=kernel.pid)) >= 3, timeout=60,
                   what="the job's agent and workers")
        kernel.send_signal(signal.SIGINT)
        out, _ = kernel.communicate(timeout=60)
        assert out.strip().splitlines()[-1] == "interrupted"
        wait_until(lambda: not job_processes(kernel_pid=kernel.pid), timeout=15,
                   what="the stopped job's hosts to end with their kernel")
    finally:
        kernel.kill()
        kernel.wait()
