"""torch's local_elastic_agent_test scenarios, run through elastic_nb.launch.

Each runs real agents, real rendezvous and real worker processes on every
backend the ``rdzv`` fixture provides.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict

import pytest
import scenarios
import torch

import elastic_nb as enb
from elastic_nb.rendezvous.embedded import free_port


def forkserver(rdzv: dict) -> dict:
    """The backend's options with workers forked from a torch-preloaded server (big worlds)."""
    return {**rdzv, "start_method": "forkserver"}


def test_dummy_compute(rdzv):
    results = enb.run(scenarios.dummy_compute, nproc=2, **rdzv)
    assert sorted(results) == [0, 1]
    for value in results.values():
        assert isinstance(value, torch.Tensor) and value.shape == (100, 100)


def test_happy_function(rdzv):
    assert enb.run(scenarios.happy, nproc=2, **rdzv) == {0: None, 1: None}


def test_function_with_return_value(rdzv):
    assert enb.run(scenarios.echo, "foo", nproc=2, **rdzv) == {0: "foo", 1: "foo"}


def test_master_addr_port_override(rdzv):
    port = free_port()
    results = enb.run(scenarios.master_addr_port, nproc=1, master_addr="127.0.0.1",
                      master_port=port, **rdzv)
    assert results == {0: ("127.0.0.1", port)}


def test_check_env(rdzv):
    results = enb.run(scenarios.torchrun_env, nproc=2, max_restarts=3, run_id="envcheck", **rdzv)
    for rank, env in results.items():
        assert set(env) == set(scenarios.TORCHRUN_ENV)
        assert env["RANK"] == str(rank) == env["LOCAL_RANK"] == env["ROLE_RANK"]
        assert env["WORLD_SIZE"] == env["LOCAL_WORLD_SIZE"] == env["ROLE_WORLD_SIZE"] == "2"
        assert env["GROUP_RANK"] == "0" and env["GROUP_WORLD_SIZE"] == "1"
        assert env["ROLE_NAME"] == "default"
        assert env["TORCHELASTIC_RESTART_COUNT"] == "0"
        assert env["TORCHELASTIC_MAX_RESTARTS"] == "3"
        assert env["TORCHELASTIC_RUN_ID"] == "envcheck"


def test_nccl_async_error_handling_env_set_in_kernel(rdzv, monkeypatch):
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    results = enb.run(scenarios.env_value, "TORCH_NCCL_ASYNC_ERROR_HANDLING", nproc=1, **rdzv)
    assert results == {0: "0"}


def test_nccl_async_error_handling_env_default(rdzv, monkeypatch):
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    results = enb.run(scenarios.env_value, "TORCH_NCCL_ASYNC_ERROR_HANDLING", nproc=1, **rdzv)
    assert results == {0: "1"}


def test_local_watchdog_timer_file_reaches_workers(rdzv, monkeypatch, tmp_path):
    timer_file = str(tmp_path / "watchdog_timer")
    monkeypatch.setenv("TORCHELASTIC_ENABLE_FILE_TIMER", "1")
    monkeypatch.setenv("TORCHELASTIC_TIMER_FILE", timer_file)
    results = enb.run(scenarios.env_value, "TORCHELASTIC_TIMER_FILE", nproc=1, **rdzv)
    assert results == {0: timer_file}


def test_local_watchdog_disabled_sets_no_timer_file(rdzv, monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_ENABLE_FILE_TIMER", raising=False)
    monkeypatch.delenv("TORCHELASTIC_TIMER_FILE", raising=False)
    results = enb.run(scenarios.env_value, "TORCHELASTIC_TIMER_FILE", nproc=1, **rdzv)
    assert results == {0: None}


@pytest.mark.parametrize("enabled", [True, False])
def test_healthcheck_port_env_passthrough(rdzv, monkeypatch, enabled):
    if enabled:
        monkeypatch.setenv("TORCHELASTIC_HEALTH_CHECK_PORT", str(free_port()))
    else:
        monkeypatch.delenv("TORCHELASTIC_HEALTH_CHECK_PORT", raising=False)
    results = enb.run(scenarios.env_value, "TORCHELASTIC_HEALTH_CHECK_PORT", nproc=1, **rdzv)
    assert results == {0: os.environ.get("TORCHELASTIC_HEALTH_CHECK_PORT")}


def test_simple_dist_sum(rdzv):
    assert enb.run(scenarios.dist_sum, nproc=2, **rdzv) == {0: 1, 1: 1}


def test_distributed_sum_homogeneous(rdzv):
    nodes = [enb.Node(4, role="sum"), enb.Node(4, role="sum")]
    results = enb.run(scenarios.dist_sum, nodes=nodes, **forkserver(rdzv))
    assert results == {rank: sum(range(8)) for rank in range(8)}


def test_distributed_sum_heterogeneous(rdzv):
    nodes = [enb.Node(1, role="sum"), enb.Node(2, role="sum"), enb.Node(3, role="sum")]
    results = enb.run(scenarios.dist_sum, nodes=nodes, **forkserver(rdzv))
    assert results == {rank: 15 for rank in range(6)}


def test_custom_log_line_prefix(rdzv):
    template = "[${role_name}-${local_rank}:${rank}]:"
    nodes = [enb.Node(2, role="trainer"), enb.Node(2, role="trainer")]
    job = enb.launch(scenarios.dist_sum, nodes=nodes, log_line_prefix_template=template,
                     **forkserver(rdzv))
    job.result(timeout=120)
    logs = job.logs()
    for rank in range(4):
        local_rank = next(w.local_rank for w in job.workers if w.rank == rank)
        assert f"[trainer-{local_rank}:{rank}]:rank {rank} sum 6" in logs.splitlines()
    assert "[trainer-1:3]:rank 3 sum 6" in logs


def test_sad_function_reports_message_exitcode_and_traceback(rdzv):
    job = enb.launch(scenarios.sad, nproc=2, **rdzv)
    with pytest.raises(enb.JobFailed) as raised:
        job.result(timeout=120)
    error = raised.value
    assert isinstance(error, RuntimeError)
    first_line = str(error).splitlines()[0]
    assert "failed: RuntimeError: sad because i throw" in first_line
    assert first_line.startswith("rank ")
    assert set(error.failures) <= {0, 1} and error.failures
    for rank, failure in error.failures.items():
        assert failure.rank == rank
        assert failure.exitcode == 1
        assert failure.signal is None
        assert failure.message == "RuntimeError: sad because i throw"
        assert 'raise RuntimeError("sad because i throw")' in failure.traceback
        assert failure.role == "default" and failure.node == 0
    assert "Traceback" in str(error)
    assert job.state == "failed"


def test_bipolar_function_exhausts_restarts(rdzv):
    job = enb.launch(scenarios.bipolar, nproc=4, max_restarts=2, **rdzv)
    assert job.wait(timeout=180) == "failed"
    kinds = [e.kind for e in job.events]
    assert kinds.count("restarting") == 2
    assert kinds.count("started") == 3
    restarts = [e for e in job.events if e.kind == "restarting"]
    assert [e.detail["remaining_restarts"] for e in restarts] == [1, 0]
    assert all(e.detail["reason"] == "failure" for e in restarts)
    assert job.failures and all(r % 2 == 1 for r in job.failures)
    assert {f.restart_count for f in job.failure_history} == {0, 1, 2}
    with pytest.raises(enb.JobFailed, match="sad because i throw"):
        job.result()


def test_rank_restart_after_failure(rdzv):
    job = enb.launch(scenarios.dummy_compute_fail_rank_one_once, nproc=2, max_restarts=3, **rdzv)
    results = job.result(timeout=120)
    assert sorted(results) == [0, 1]
    assert all(v.shape == (100, 100) for v in results.values())
    failed = [e for e in job.events if e.kind == "worker_failed"]
    assert [(e.rank, e.detail["signal"]) for e in failed] == [(1, "SIGKILL")]
    assert [e.kind for e in job.events].count("restarting") == 1
    assert job.restart_count == 1


def test_fatal_signal_is_reported_as_such(rdzv):
    job = enb.launch(scenarios.fatal_signal, 1, int(signal.SIGSEGV), nproc=2, **rdzv)
    with pytest.raises(enb.JobFailed) as raised:
        job.result(timeout=120)
    failure = raised.value.failures[1]
    assert failure.signal == "SIGSEGV"
    assert failure.exitcode == -signal.SIGSEGV
    assert "SIGSEGV" in str(raised.value).splitlines()[0]


def _assert_rank_consistency(results: dict, expected_role_sizes: dict[str, int]) -> None:
    world = sum(expected_role_sizes.values())
    assert sorted(results) == list(range(world))
    by_role = defaultdict(list)
    by_group = defaultdict(list)
    for rank, info in results.items():
        assert info.rank == rank
        assert info.world_size == world
        assert info.role_world_size == expected_role_sizes[info.role]
        by_role[info.role].append(info.role_rank)
        by_group[info.group_rank].append((info.rank, info.role_rank))
    for role, size in expected_role_sizes.items():
        assert sorted(by_role[role]) == list(range(size))
    for pairs in by_group.values():
        for index in (0, 1):
            ranks = sorted(p[index] for p in pairs)
            assert ranks == list(range(ranks[0], ranks[-1] + 1)), f"not consecutive: {pairs}"


def test_correct_rank_assignment_homogeneous(rdzv):
    sizes = [("master", 1), ("trainer", 2), ("trainer", 2), ("ps", 1), ("ps", 1)]
    nodes = [enb.Node(n, role=role) for role, n in sizes]
    results = enb.run(scenarios.role_info, nodes=nodes, **forkserver(rdzv))
    _assert_rank_consistency(results, {"master": 1, "trainer": 4, "ps": 2})


def test_correct_rank_assignment_heterogeneous(rdzv):
    sizes = [("master", 3), ("trainer", 1), ("trainer", 2), ("ps", 2), ("ps", 1)]
    nodes = [enb.Node(n, role=role) for role, n in sizes]
    results = enb.run(scenarios.role_info, nodes=nodes, **forkserver(rdzv))
    _assert_rank_consistency(results, {"master": 3, "trainer": 3, "ps": 3})


def test_no_exit_barrier_on_failure(rdzv):
    sleep_seconds = 60
    nodes = [enb.Node(2), enb.Node(2)]
    job = enb.launch(scenarios.bipolar_sleep, sleep_seconds, nodes=nodes, max_restarts=0,
                     exit_barrier_timeout=300, monitor_interval=0.5, **rdzv)
    assert job.wait(timeout=sleep_seconds - 10) == "failed"
    assert set(job.failures) <= {1, 3} and job.failures


def test_workers_drift_success(rdzv):
    nodes = [enb.Node(1, role="zzz", fn=scenarios.sleep, args=(0,)),
             enb.Node(1, role="zzz", fn=scenarios.sleep, args=(2,))]
    assert enb.run(nodes=nodes, exit_barrier_timeout=4, **rdzv) == {0: 0, 1: 1}


def test_workers_drift_fail(rdzv):
    nodes = [enb.Node(1, role="zzz", fn=scenarios.sleep, args=(0,)),
             enb.Node(1, role="zzz", fn=scenarios.sleep, args=(4,))]
    assert enb.run(nodes=nodes, exit_barrier_timeout=0, **rdzv) == {0: 0, 1: 1}


def test_torch_rpc(rdzv):
    nodes = [enb.Node(1, role="master", fn=scenarios.rpc_master, args=("hello world",)),
             enb.Node(1, role="worker", fn=scenarios.rpc_worker)]
    results = enb.run(nodes=nodes, **rdzv)
    assert sorted(v for v in results.values() if v is not None) == ["hello world from worker"]
