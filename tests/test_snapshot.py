"""The read model and its renderings, built from plain state (no process)."""

from __future__ import annotations

import os

import test_state as given

from elastic_nb.model import controls, render, rules
from elastic_nb.model import snapshot as snapshots
from elastic_nb.model.plan import JobPlan, NodePlan
from elastic_nb.wire import reports as protocol
from elastic_nb.wire.options import JobOptions

T0 = given.T0


def plan(*nproc: int) -> JobPlan:
    options = JobOptions(min_nodes=1, max_nodes=4, max_restarts=3, monitor_interval=0.1,
                         exit_barrier_timeout=30, rdzv_timeout=60, rdzv_configs={},
                         start_method="spawn", log_line_prefix_template="[${rank}]:",
                         master_addr=None, master_port=None, shutdown_timeout=5)
    return JobPlan(run_id="demo", backend="c10d", endpoint=None,
                   nodes=tuple(NodePlan(n, "trainer", b"") for n in nproc), options=options,
                   log_dir="/logs", env={})


def test_a_remote_rank_never_shows_a_local_process_numbers():
    state = given.job(1)
    given.started(state, 0, 0)
    controls.node_added(state, 1, 1, "trainer", local=False, host="hostb", now=T0 + 1)
    rules.apply(state, 1, protocol.Started(
        role="trainer", attempt=0, restart_count=0, group_rank=1, group_world_size=2,
        observed_at=T0 + 2, workers=(protocol.StartedWorker(1, 0, 1, 2, 2, os.getpid(), "/o", "/e", "/x"),)), T0 + 2)
    local_pid = state.workers[0].pid
    # the remote rank's pid happens to be a live process here: its figures are not its own
    stats = {local_pid: (50.0, 1 << 20), os.getpid(): (99.0, 2 << 20)}
    snap = snapshots.build(plan(1), "127.0.0.1:1", state, {}, stats, T0 + 3)
    local, remote = snap.workers
    assert (local.local, local.cpu_percent, local.rss) == (True, 50.0, 1 << 20)
    assert (remote.local, remote.host, remote.cpu_percent, remote.rss) == (False, "hostb", None, None)
    tiles = render.tiles(snap, T0 + 3)
    assert "on hostb" in render.tile_html(tiles[1]) and "cpu -" in render.tile_html(tiles[1])


def test_a_snapshot_is_frozen_and_does_not_follow_the_state():
    state = given.job(2)
    given.started(state, 0, 0)
    snap = snapshots.build(plan(2), "e", state, {}, {}, T0 + 2)
    controls.rank_killed(state, 1, "SIGKILL", T0 + 3)
    assert [e.kind for e in snap.events] == ["launched", "started"]
    assert snap.status == "running" and snap.elapsed == 2.0


def test_tiles_come_from_start_times_and_output_times_in_the_snapshot():
    state = given.job(2)
    given.started(state, 0, 0, now=T0 + 1)
    snap = snapshots.build(plan(2), "e", state, {0: T0 + 30}, {}, T0 + 31)
    silent = {t.rank: t.silent_for for t in render.tiles(snap, T0 + 31, hung_after=10,
                                                         hung_factor=5)}
    assert silent == {0: 1.0, 1: 30.0}
    assert [t.hung for t in render.tiles(snap, T0 + 31, hung_after=10, hung_factor=5)] == [
        False, True]


def test_before_any_worker_the_tiles_count_the_live_nodes_not_the_killed_ones():
    state = given.job(2, 2)
    controls.node_killed(state, 1, T0 + 1)
    controls.node_added(state, 2, 1, "trainer", local=True, host="localhost", now=T0 + 2)
    snap = snapshots.build(plan(2, 2), "e", state, {}, {}, T0 + 3)
    assert (snap.planned_world_size, snap.world_size) == (4, 3)
    assert [t.state for t in render.tiles(snap, T0 + 3)] == ["pending"] * 3


def test_failure_events_carry_their_failure_into_the_timeline_and_text():
    state = given.job(2)
    given.started(state, 0, 0)
    rules.apply(state, 0, protocol.WorkerFailed(0, 0, T0 + 2, (given.failure(1, T0 + 2),)), T0 + 2)
    rules.apply(state, 0, protocol.Failed((given.failure(1, T0 + 2),)), T0 + 3)
    snap = snapshots.build(plan(2), "e", state, {}, {}, T0 + 4)
    entries = render.timeline(snap)
    assert [entries[i].event.kind for i in render.failure_events(snap)] == [
        "worker_failed", "failed"]
    assert "rank 1 (node 0, trainer) failed: killed rank 1" in entries[-1].details
    assert "(no Python traceback" in entries[-2].details
    text = render.summary_text(snap)
    assert text.splitlines()[0].startswith("Job demo [failed] backend=c10d world=2 restarts=0/3")
    assert text.splitlines()[-1] == "  rank 1 (node 0, trainer) failed: killed rank 1"
    page = render.job_html(snap)
    assert page.count("<tr><td>") == 2 and "killed rank 1" in page
