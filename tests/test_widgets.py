"""The dashboard in-process: its model over real jobs, and the widget's buttons and throttling.

No frontend is needed: the model is plain Python, and a button click is
``button.click()``, which runs the same handler a browser click does.
"""

from __future__ import annotations

import threading

import numpy as np
import psutil
import pytest
import scenarios
from util import running_workers, wait_until

import elastic_nb as enb
from elastic_nb.model import render
from elastic_nb.ui import dashboard as widgets


@pytest.fixture
def board():
    """Build dashboards that are closed (thread joined, listeners removed) after the test."""
    made: list[widgets.Dashboard] = []

    def make(job: enb.Job, **options) -> widgets.Dashboard:
        made.append(widgets.Dashboard(job, **options))
        return made[-1]

    yield make
    for dashboard in made:
        dashboard.job.stop()
        dashboard.close()


def test_model_shows_header_tiles_and_filtered_logs():
    job = enb.launch(scenarios.chatty, 3, nproc=2, log_line_prefix_template="[r${rank}]:")
    model = widgets.DashboardModel(job)
    try:
        assert job.result(timeout=90) == {0: 0, 1: 1}
        snap = model.snapshot()
        assert (snap.run_id, snap.backend, snap.status, snap.world_size) == (job.run_id, "c10d", "succeeded", 2)
        assert (snap.attempt, snap.restart_count, snap.max_restarts) == (0, 0, 0)
        header = render.header_html(snap)
        assert render.JOB_COLORS["succeeded"] in header and "restarts 0/0" in header
        assert [(t.rank, t.state, t.pid) for t in model.tiles()] == [
            (w.rank, "done", w.pid) for w in job.workers]

        merged = model.log_text()
        assert "[r0]:rank 0 line 2" in merged and "[r1]:rank 1 line 2" in merged
        assert "[r1]:rank 1 says goodbye" in merged
        assert merged.splitlines()[0].startswith("──────── attempt 0")
        only_one = model.log_text(rank=1)
        assert "rank 1 line 0" in only_one and "rank 0" not in only_one
        goodbyes = [line for line in model.log_text(text="goodbye").splitlines() if "attempt" not in line]
        assert sorted(goodbyes) == ["[r0]:rank 0 says goodbye", "[r1]:rank 1 says goodbye"]
    finally:
        model.close()


def test_model_keeps_the_lines_before_a_crash_in_their_own_attempt():
    job = enb.launch(scenarios.wait_for_kill, 120, nproc=2, max_restarts=1)
    model = widgets.DashboardModel(job)
    try:
        running_workers(job, 2, attempt=0)
        wait_until(lambda: "restart count 0" in model.log_text(rank=1), timeout=30, what="rank 1's line")
        job.kill(1, "SIGKILL")
        assert job.result(timeout=90) == {0: 0, 1: 1}
        text = model.log_text(rank=1)
        first, second = text.index("──────── attempt 0"), text.index("──────── attempt 1")
        assert first < text.index("restart count 0") < second < text.index("restart count 1")
        assert "restart count 1" not in model.log_text(rank=1, attempt=0)
        assert "restart count 0" not in model.log_text(rank=1, attempt=1)
        assert model.logs.attempts() == [0, 1]
        snap = model.snapshot()
        assert (snap.attempt, snap.restart_count, snap.max_restarts) == (1, 1, 1)
        assert [t.state for t in model.tiles()] == ["done", "done"]

        entries = model.timeline()
        assert [e.offset for e in entries] == sorted(e.offset for e in entries)
        failed = [e for e in entries if e.event.kind == "worker_failed"]
        assert len(failed) == 1 and failed[0].event.rank == 1
        assert "SIGKILL" in failed[0].details
        assert any(e.event.kind == "restarting" for e in entries)
    finally:
        model.close()


def test_timeline_entry_of_a_python_failure_holds_its_traceback():
    job = enb.launch(scenarios.raise_on_rank, 1, nproc=2)
    model = widgets.DashboardModel(job)
    try:
        assert job.wait(timeout=90) == "failed"
        failed = [e for e in model.timeline() if e.event.kind == "worker_failed"]
        assert failed and "Traceback" in failed[0].details
        assert "ValueError: rank 1 refuses" in failed[0].details
        assert [t.state for t in model.tiles() if t.rank == 1] == ["failed"]
        assert render.JOB_COLORS["failed"] in render.header_html(model.snapshot())
    finally:
        model.close()


def test_a_rank_silent_much_longer_than_the_others_is_flagged():
    job = enb.launch(scenarios.one_rank_silent, 60, nproc=2)
    model = widgets.DashboardModel(job, hung_after=1.5, hung_factor=3)
    try:
        running_workers(job, 2, attempt=0)
        tiles = wait_until(lambda: (t := model.tiles()) and t[1].hung and t, timeout=30,
                           what="rank 1 flagged as possibly hung")
        assert not tiles[0].hung
        assert tiles[1].silent_for >= 1.5 > tiles[0].silent_for
        assert "possibly hung" in render.tile_html(tiles[1])
        assert "possibly hung" not in render.tile_html(tiles[0])
        assert all(t.rss and t.rss > 10 << 20 and t.cpu_percent is not None for t in model.tiles())
    finally:
        job.stop()
        model.close()


def test_a_flood_of_output_costs_a_bounded_number_of_widget_updates(board):
    lines = 30_000
    job = enb.launch(scenarios.flood, lines, nproc=2)
    dashboard = board(job, interval=0.25)
    log_updates = []
    dashboard.log_area.observe(lambda change: log_updates.append(change["new"]), names="value")
    started = threading.Event()
    job.log_book.add_listener(lambda _: started.set())
    assert job.result(timeout=120) == {0: lines, 1: lines}
    assert dashboard.wait_closed(timeout=30), "the update thread must end with the job"
    seconds = job.elapsed
    assert started.is_set()
    assert len(log_updates) <= seconds / 0.25 + 3, (len(log_updates), seconds)
    assert dashboard.updates <= seconds / 0.25 + 3
    final = log_updates[-1]
    assert final.count("\n") <= widgets.MAX_LOG_LINES + 5, "only the last lines are rendered"
    assert "earlier lines not shown" in final
    assert "flood 0 done" in final or "flood 1 done" in final
    for rank in (0, 1):
        assert dashboard.model.log_text(rank=rank).endswith(f"flood {rank} done")
    shown, hidden = dashboard.model.logs.select(rank=0)
    assert len(shown) == widgets.MAX_LOG_LINES and hidden > 0  # the tail, and how much is above


def test_kill_button_restarts_the_rank_and_the_tile_shows_it(board):
    job = enb.launch(scenarios.wait_for_kill, 120, nproc=2, max_restarts=2)
    dashboard = board(job)
    running_workers(job, 2, attempt=0)
    wait_until(lambda: 1 in dashboard.tile_ranks() and not dashboard.tile_button(1).disabled,
               timeout=10, what="rank 1's kill button")
    assert dashboard.tile_button(1).description == "kill"
    assert dashboard.tile_button(1).tooltip.startswith("kill rank 1")
    dashboard.signal.value = "SIGSEGV"
    dashboard.tile_button(1).click()
    wait_until(lambda: "sent SIGSEGV to rank 1" in dashboard.status_area.value, timeout=10,
               what="the kill to be reported")
    assert job.result(timeout=90) == {0: 0, 1: 1}
    assert any(e.kind == "restarting" and e.detail["reason"] == "failure" for e in job.events)
    assert [w.attempt for w in job.workers] == [1, 1]
    killed = [e for e in job.events if e.kind == "killed"]
    assert [(e.rank, e.detail["signal"]) for e in killed] == [(1, "SIGSEGV")]
    dashboard.wait_closed(timeout=30)
    assert "restarts 1/2" in dashboard.header_area.value
    failure = dashboard.event_list.value
    assert dashboard.model.timeline()[failure].event.kind == "worker_failed"
    assert "SIGSEGV" in dashboard.event_details.value


def test_restart_stacks_and_stop_buttons_call_the_job(board):
    job = enb.launch(scenarios.wait_forever, nproc=2)
    dashboard = board(job)
    running_workers(job, 2, attempt=0)
    wait_until(lambda: dashboard.model.log_text().count("waiting") == 2, timeout=30, what="first lines")

    dashboard.restart_button.click()
    running_workers(job, 2, attempt=1)
    assert [e.detail["reason"] for e in job.events if e.kind == "restarting"] == ["user"]
    wait_until(lambda: dashboard.model.log_text(attempt=1).count("waiting") == 2, timeout=30,
               what="attempt 1's first lines")

    dashboard.stacks_button.click()
    wait_until(lambda: "stacks of 2 ranks dumped" in dashboard.status_area.value, timeout=30,
               what="stack dumps of both ranks")
    wait_until(lambda: "rank 1" in dashboard.stacks_area.value, timeout=10, what="stacks shown")
    assert "rank 0" in dashboard.stacks_area.value
    assert dashboard.stacks_area.value.count("in wait_forever") == 2
    assert dashboard.tabs.selected_index == 2

    dashboard.stop_button.click()
    assert job.wait(timeout=30) == "stopped"
    wait_until(lambda: "job stopped" in dashboard.status_area.value, timeout=30, what="stop to be reported")
    assert dashboard.wait_closed(timeout=30)
    assert dashboard.stop_button.disabled and dashboard.tile_button(0).disabled

    dashboard.tile_button(0).click()  # the tile button is disabled in a browser; a forced click is refused
    assert "ValueError" in dashboard.status_area.value and "not running" in dashboard.status_area.value


def test_kill_node_and_add_node_buttons_change_the_membership(board):
    job = enb.launch(scenarios.wait_forever, nodes=[enb.Node(1), enb.Node(1)], min_nodes=1,
                     max_nodes=2, max_restarts=2)
    dashboard = board(job)
    running_workers(job, 2, attempt=0)
    wait_until(lambda: list(dashboard.node.options) == [0, 1], timeout=10, what="both nodes listed")
    dashboard.add_node_button.click()  # max_nodes=2 live already: refused, in words
    wait_until(lambda: "already has max_nodes=2 live nodes" in dashboard.status_area.value, timeout=10,
               what="the refusal in the status line")

    dashboard.node.value = 1
    dashboard.kill_node_button.click()
    wait_until(lambda: "killed node 1" in dashboard.status_area.value, timeout=10, what="the kill reported")
    wait_until(lambda: list(dashboard.node.options) == [0], timeout=10, what="node 1 gone from the picker")
    assert job.nodes[1] == "killed"
    wait_until(lambda: [(w.node, w.state, w.world_size) for w in job.workers] == [(0, "running", 1)],
               timeout=60, what="node 0 re-formed alone at once")

    dashboard.add_nproc.value = 1
    dashboard.add_node_button.click()
    wait_until(lambda: "added node 2 with 1 ranks" in dashboard.status_area.value, timeout=10,
               what="the new node reported")
    wait_until(lambda: sorted((w.node, w.state) for w in job.workers) == [(0, "running"), (2, "running")],
               timeout=120, what="a world of nodes 0 and 2")
    assert {w.world_size for w in job.workers} == {2}
    kinds = [e.kind for e in job.events]
    assert kinds.index("node_killed") < kinds.index("membership_changed") < kinds.index("node_added")
    changes = [e.detail for e in job.events if e.kind == "membership_changed"]
    assert [(c["members"], c["joined"], c["left"]) for c in changes] == [([0], [], [1]),
                                                                       ([0, 2], [2], [])]
    wait_until(lambda: list(dashboard.node.options) == [0, 2], timeout=10, what="node 2 in the picker")


def test_log_filters_in_the_widget(board):
    job = enb.launch(scenarios.chatty, 5, nproc=2)
    dashboard = board(job)
    assert job.result(timeout=90) == {0: 0, 1: 1}
    dashboard.wait_closed(timeout=30)
    assert [v for _, v in dashboard.log_rank.options] == [widgets.ALL, 0, 1]
    assert "rank 0 line 4" in dashboard.log_area.value and "rank 1 line 4" in dashboard.log_area.value
    dashboard.log_rank.value = 1
    dashboard.log_filter.value = "line 3"
    dashboard.render()
    assert "rank 1 line 3" in dashboard.log_area.value
    assert "rank 0" not in dashboard.log_area.value and "line 2" not in dashboard.log_area.value


def test_outside_a_kernel_a_job_displays_as_text_and_html():
    job = enb.launch(scenarios.chatty, 1, nproc=2)
    assert job.result(timeout=90) == {0: 0, 1: 1}
    bundle = widgets.mimebundle(job)
    assert "application/vnd.jupyter.widget-view+json" not in bundle
    assert bundle["text/plain"] == job.summary()
    page = bundle["text/html"]
    assert job.run_id in page and "succeeded" in page
    assert page.count("<tr><td>") == 2
    assert job._repr_mimebundle_()["text/plain"] == job.summary()


def test_eight_ranks_printing_the_same_line_collapse_in_the_merged_views_only(board):
    job = enb.launch(scenarios.same_warning, nproc=8)
    dashboard = board(job)
    assert job.result(timeout=120) == {r: r for r in range(8)}
    dashboard.wait_closed(timeout=30)
    assert job.logs().count("warning: the same on every rank") == 8  # nothing is lost
    collapsed = job.logs(collapse=True)
    assert collapsed.count("warning: the same on every rank") == 1
    assert "[ranks 0-7]: warning: the same on every rank" in collapsed
    assert all(f"[default{r}]:rank {r} own line" in collapsed for r in range(8))
    assert job.logs(rank=3, collapse=True) == job.logs(rank=3)  # a rank's own view stays exact
    assert dashboard.log_area.value.count("warning: the same on every rank") == 8
    dashboard.log_collapse.value = True
    dashboard.render()
    assert dashboard.log_area.value.count("warning: the same on every rank") == 1
    assert "[ranks 0-7]: warning" in dashboard.log_area.value


def test_the_debug_console_drives_pdb_in_a_paused_rank_without_blocking_the_kernel(board):
    job = enb.launch(scenarios.pause_on_rank, 0, nproc=2)
    dashboard = board(job)
    wait_until(lambda: not dashboard.debug_button(0).disabled if 0 in dashboard.tile_ranks()
               else False, timeout=60, what="rank 0's debug button enabled")
    assert dashboard.debug_button(1).disabled, "only a paused rank can be debugged"
    assert "paused at scenarios.py:" in dashboard.tile_html(0)
    dashboard.debug_button(0).click()
    wait_until(lambda: "-&gt; value += 1" in dashboard.debug_area.value, timeout=30,
               what="pdb's first words in the console")
    assert dashboard.tabs.selected_index == 3
    dashboard.debug_command.value = "p value + 7"
    dashboard.debug_send_button.click()  # answered on a thread: the kernel is free meanwhile
    wait_until(lambda: "(Pdb) p value + 7\n7\n" in dashboard.debug_area.value, timeout=30,
               what="the answer to p")
    dashboard.debug_command.value = "c"
    dashboard.debug_send_button.click()
    assert job.result(timeout=60) == {0: 1, 1: 10}
    wait_until(lambda: "rank 0 continues" in dashboard.debug_area.value, timeout=30,
               what="the end of the session in the console")


def test_freeze_thaw_slow_and_freeze_node_buttons_call_the_job(board):
    job = enb.launch(scenarios.wait_forever, nodes=[enb.Node(1), enb.Node(1)], min_nodes=1,
                     max_nodes=2, liveness_timeout=3)
    dashboard = board(job)
    running_workers(job, 2, attempt=0)
    dashboard.render()
    dashboard.freeze_button(1).click()
    job.wait_until(lambda: [e.rank for e in job.events if e.kind == "frozen"] == [1], timeout=10,
                   what="rank 1 frozen")
    wait_until(lambda: psutil.Process(job.workers[1].pid).status() == psutil.STATUS_STOPPED,
               timeout=10, what="rank 1's process stopped")
    dashboard.render()
    assert "frozen" in dashboard.tile_html(1)
    assert dashboard.freeze_button(1).description == "thaw"
    dashboard.freeze_button(1).click()
    job.wait_until(lambda: "thawed" in [e.kind for e in job.events], timeout=10, what="thawed")
    dashboard.speed.value = 0.25
    dashboard.slow_button(0).click()
    job.wait_until(lambda: job.snapshot().workers[0].slowed == 0.25, timeout=10, what="rank 0 slowed")
    dashboard.render()
    assert "slowed to 25%" in dashboard.tile_html(0)
    assert dashboard.slow_button(0).description == "full"
    dashboard.slow_button(0).click()
    job.wait_until(lambda: job.snapshot().workers[0].slowed is None, timeout=10, what="full speed")
    dashboard.node.value = 1
    dashboard.freeze_node_button.click()
    # left frozen, the node is lost after the liveness timeout: the survivor re-forms alone
    job.wait_until(lambda: job.nodes[1] == "lost", timeout=30, what="node 1 lost")
    running_workers(job, 1, attempt=1)
    assert [e.kind for e in job.events].count("node_lost") == 1


class SnapshotJob:
    """A job that is only its read model: enough for a dashboard to render (no process)."""

    def __init__(self, snap) -> None:
        from elastic_nb.kernel.log_book import LogBook

        self.snap, self.run_id, self.log_dir = snap, snap.run_id, snap.log_dir
        from elastic_nb.kernel.metrics_book import MetricsBook

        self.log_line_prefix_template, self.done, self.log_book = "[${rank}]:", False, LogBook()
        self.metrics_book, self.events = MetricsBook(), list(snap.events)
        self.killed: list[int] = []
        self.added: list = []

    def snapshot(self):
        return self.snap

    def goodput(self):
        from elastic_nb.model.goodput import goodput

        return goodput(self.events, self.metrics_book.steps(), self.snap.taken_at)

    def add_listener(self, listener) -> None:
        return None

    def remove_listener(self, listener) -> None:
        return None

    def kill(self, rank, sig="SIGKILL") -> None:
        self.killed.append(rank)

    def places(self) -> dict:
        return {"this machine": None, "gpu": enb.Slurm(partition="gpu")}

    def add_node(self, node) -> int:
        self.added.append(node)
        return 7


def test_many_ranks_are_a_compact_grid_and_the_selected_rank_s_tile():
    import test_snapshot
    import test_state as given

    from elastic_nb.model import snapshot as snapshots
    from elastic_nb.ui.dashboard.tiles import COMPACT_ABOVE

    state = given.job(*[4] * 16)  # 64 ranks on 16 nodes
    for node in range(16):
        given.started(state, node, node * 4)
    state.workers[37].frozen = True
    snap = snapshots.build(test_snapshot.plan(*[4] * 16), "127.0.0.1:1", state, {}, {}, given.T0 + 2)
    job = SnapshotJob(snap)
    dashboard = widgets.Dashboard(job, start=False)
    try:
        assert len(snap.workers) == 64 > COMPACT_ABOVE
        board = dashboard.tiles
        assert [c.description for c in board.grid.children] == [str(r) for r in range(64)]
        assert board.cell(37).style.button_color == render.TILE_COLORS["frozen"]
        assert board.cell(5).style.button_color == render.TILE_COLORS["running"]
        assert dashboard.tile_ranks() == [0]  # one tile, of the rank selected (the first)
        board.cell(37).click()
        dashboard.render()
        assert dashboard.tile_ranks() == [37] and "rank 37" in dashboard.tile_html(37)
        assert dashboard.freeze_button(37).description == "thaw"
        dashboard.tile_button(37).click()
        assert job.killed == [37]
        widgets_in_tiles = len(board.grid.children) + 5  # one cell each, and one tile
        assert widgets_in_tiles < 64 * 5 / 4
    finally:
        dashboard.close()


def test_a_stall_shows_a_banner_and_the_hang_map_names_the_missing_rank(board):
    job = enb.launch(scenarios.hang_at, "skip", 3, 1, nproc=2, hang_after=2)
    dashboard = board(job)
    job.wait_until(lambda: any(e.kind == "stalled" for e in job.events), timeout=60,
                   what="a stalled event")
    dashboard.render()
    assert "enb-stalled" in dashboard.header_area.value
    assert "rank 1 never entered all_reduce #4" in dashboard.header_area.value
    dashboard.hang_button.click()
    wait_until(lambda: "never entered" in dashboard.hang_area.value, timeout=30,
               what="the hang map")
    assert "<table class='enb-hang-map'" in dashboard.hang_area.value
    assert dashboard.tabs.selected_index == 4


def test_the_add_node_chooser_offers_the_kernels_places_and_starts_the_node_there():
    import test_snapshot
    import test_state as given

    from elastic_nb.model import snapshot as snapshots
    from elastic_nb.model.scheduling import node_submitted, node_submitting

    state = given.job(1)
    node_submitting(state, 1, 2, "default", "Slurm (gpu)", given.T0)
    node_submitted(state, 1, "Slurm job 4711", given.T0)
    state.nodes[1].scheduler = "queued: Slurm job 4711 PENDING (Resources)"
    job = SnapshotJob(snapshots.build(test_snapshot.plan(1), "127.0.0.1:1", state, {}, {},
                                      given.T0 + 1))
    dashboard = widgets.Dashboard(job, start=False)
    dashboard.render()
    assert list(dashboard.add_on.options) == ["this machine", "gpu"]
    assert 1 in dashboard.node.options  # a queued node can be cancelled from the node menu
    assert "queued: Slurm job 4711 PENDING (Resources)" in dashboard.header_area.value
    dashboard.add_on.value = "gpu"
    dashboard.add_nproc.value = 4
    dashboard.add_node_button.click()
    assert job.added == [enb.Node(4, on=enb.Slurm(partition="gpu"))]
    assert "added node 7 with 4 ranks on gpu" in dashboard.status_area.value


def test_the_metrics_tab_draws_every_rank_with_the_restart_marked(board):
    """Two ranks report a loss; rank 1 is killed; the chart has a line a rank across both
    attempts, the kill and the restart marked, and the header shows the goodput."""
    job = enb.launch(scenarios.reporting_steps, 30, 0.05, nproc=2, max_restarts=1)
    dashboard = board(job, start=False)
    wait_until(lambda: "step 8" in job.logs(rank=1), timeout=90, what="rank 1 at step 8")
    job.kill(1)
    job.result(timeout=120)
    dashboard.render()
    view = dashboard.metrics_view
    assert dashboard.tabs.get_title(5) == "metrics"
    assert list(view.chooser.options) == ["loss", "lr"] and view.chooser.value == "loss"
    assert list(view.lines.labels) == ["rank 0", "rank 1"]
    assert (~np.isnan(view.lines.x[0])).sum() == len(job.metrics[job.metrics["rank"] == 0])
    assert np.isnan(view.lines.x[0]).any()  # a gap where attempt 1 starts over
    assert any(name.startswith("kill:") for name in view.tips.names)
    assert any(name.startswith("restart:") for name in view.tips.names)
    assert "goodput " in dashboard.header_area.value
    assert any("cost" in label for label, _ in dashboard.event_list.options)
    assert not dashboard.metrics_view.render()  # nothing new: nothing pushed
