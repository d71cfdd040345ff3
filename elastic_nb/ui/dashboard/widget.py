"""The dashboard's ipywidgets view: header, rank tiles, controls, logs, timeline, stacks, debug.

A view of ``DashboardModel`` only. A background thread ticks a few times a
second and pushes widget updates only when something changed, so a flood
of output costs a bounded number of messages to the browser. Every button
is a call to a Job method; the widget never touches a process itself.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from elastic_nb.model import render
from elastic_nb.model.plan import Node
from elastic_nb.model.snapshot import JobSnapshot
from elastic_nb.model.state import NodeStatus
from elastic_nb.ui.dashboard.model import DashboardModel
from elastic_nb.ui.dashboard.tiles import TileActions, TileBoard, set_if_changed

if TYPE_CHECKING:
    from elastic_nb.ui.dashboard.handle import JobHandle

SIGNALS = ("SIGKILL", "SIGTERM", "SIGSEGV", "SIGINT")
TICK_INTERVAL = 0.25
STATS_INTERVAL = 1.0
ALL = -1  # the "all ranks" / "all attempts" choice of the log filters
SPEEDS = (("10%", 0.1), ("25%", 0.25), ("50%", 0.5))  # what "slow" leaves of a rank's speed


class Dashboard(widgets.VBox):
    """The live dashboard of one Job: header, rank tiles, controls, logs, timeline.

    Updates are pushed by a background thread every ``interval`` seconds, and
    only when the job, its logs or a filter changed (CPU and silence figures
    refresh once a second). The thread ends when the job has ended and its
    last state is shown, or when the dashboard is closed.
    """

    def __init__(self, job: JobHandle, interval: float = TICK_INTERVAL, start: bool = True,
                 **model_options: Any) -> None:
        self.model = DashboardModel(job, **model_options)
        self.interval = interval
        self.updates = 0  # widget pushes so far (a flood must keep this small)
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._render_lock = threading.Lock()
        self._last_refresh = 0.0
        self._seen_logs = -1
        self._failures_seen = 0
        self._wanted_log_rank: int | None = None  # the log pane moves there once it printed
        self._build()
        super().__init__([self.header_area, self.tiles.box, self._controls, self.status_area,
                          self.tabs], layout=widgets.Layout(width="100%"))
        self.add_class("enb-dashboard")
        job.add_listener(self._on_event)
        self.render()
        self._thread = threading.Thread(target=self._tick, name=f"elastic_nb-dashboard-{job.run_id}",
                                        daemon=True)
        if start:
            self._thread.start()

    @property
    def job(self) -> JobHandle:
        return self.model.job

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # --------------------------------------------------------------- layout

    def _build(self) -> None:
        self.header_area = widgets.HTML()
        self.tiles = TileBoard(TileActions(
            kill=lambda rank: self._act(lambda: self._kill(rank)),
            debug=lambda rank: self._act(lambda: self._debug(rank)),
            freeze=lambda rank: self._act(lambda: self._freeze(rank)),
            slow=lambda rank: self._act(lambda: self._slow(rank)),
            select=lambda rank: self._refresh()))
        self.signal = widgets.Dropdown(options=SIGNALS, value="SIGKILL", description="signal",
                                       layout=widgets.Layout(width="180px"))
        self.restart_button = self._button("restart group", self._restart, "warning")
        self.stop_button = self._button("stop", self._stop, "danger")
        self.speed = widgets.Dropdown(options=SPEEDS, value=0.25, description="slow to",
                                      layout=widgets.Layout(width="160px"))
        self.node = widgets.Dropdown(options=[], description="node", layout=widgets.Layout(width="130px"))
        self.node.observe(lambda _: self._dirty.set(), names="value")
        self.kill_node_button = self._button("kill node", self._kill_node, "danger")
        self.freeze_node_button = self._button("freeze node", self._freeze_node, "primary")
        self.add_nproc = widgets.BoundedIntText(value=1, min=1, max=64, description="nproc",
                                                layout=widgets.Layout(width="130px"))
        self.add_on = widgets.Dropdown(options=list(self.job.places()), description="on",
                                       layout=widgets.Layout(width="220px"))
        self.add_node_button = self._button("add node", self._add_node, "")
        self.stacks_button = self._button("dump stacks", self._dump_stacks, "info")
        self._controls = widgets.HBox([
            self.signal, self.speed, self.restart_button, self.stop_button, self.node,
            self.kill_node_button, self.freeze_node_button, self.add_nproc, self.add_on,
            self.add_node_button, self.stacks_button],
            layout=widgets.Layout(flex_flow="row wrap"))
        self.status_area = widgets.HTML()
        self.log_rank = widgets.Dropdown(options=[("all ranks (merged)", ALL)], value=ALL,
                                         description="rank", layout=widgets.Layout(width="220px"))
        self.log_attempt = widgets.Dropdown(options=[("all attempts", ALL)], value=ALL,
                                            description="attempt", layout=widgets.Layout(width="200px"))
        self.log_filter = widgets.Text(placeholder="only lines containing…", description="filter",
                                       continuous_update=True)
        self.log_collapse = widgets.Checkbox(value=False, description="collapse identical lines",
                                             indent=False)
        for control in (self.log_rank, self.log_attempt, self.log_filter, self.log_collapse):
            control.observe(lambda _: self._dirty.set(), names="value")
        self.log_area = widgets.HTML(layout=widgets.Layout(  # column-reverse: scrolled to the newest line
            max_height="320px", overflow="auto", display="flex", flex_flow="column-reverse"))
        self.log_area.add_class("enb-logs")
        logs = widgets.VBox([widgets.HBox([self.log_rank, self.log_attempt, self.log_filter,
                                           self.log_collapse]),
                             self.log_area])
        self.event_list = widgets.Select(options=[], rows=10, layout=widgets.Layout(width="100%"))
        self.event_list.observe(lambda _: self._dirty.set(), names="index")
        self.event_details = widgets.HTML()
        timeline_box = widgets.VBox([self.event_list, self.event_details])
        self.stacks_area = widgets.HTML("<i>press “dump stacks” to see where every rank is</i>")
        self.debug_area = widgets.HTML(layout=widgets.Layout(max_height="320px", overflow="auto"))
        self.debug_area.add_class("enb-debug")
        self.debug_command = widgets.Text(placeholder="a pdb command: p x, l, n, where, c, q",
                                          description="(Pdb)")
        self.debug_send_button = self._button("send", self._debug_send, "info")
        self.debug_leave_button = self._button("leave (rank continues)", self._debug_leave, "")
        debug_box = widgets.VBox([self.debug_area, widgets.HBox(
            [self.debug_command, self.debug_send_button, self.debug_leave_button])])
        self.hang_area = widgets.HTML()
        self.hang_button = self._button("refresh", self._refresh_hang, "warning")
        hang_box = widgets.VBox([self.hang_button, self.hang_area])
        from elastic_nb.ui.dashboard.metrics_view import MetricsView  # bqplot: loaded here only

        self.metrics_view = MetricsView(self.job)
        self.tabs = widgets.Tab([logs, timeline_box, self.stacks_area, debug_box, hang_box,
                                 self.metrics_view])
        for i, title in enumerate(("logs", "timeline", "stacks", "debug", "hang map", "metrics")):
            self.tabs.set_title(i, title)

    def _button(self, label: str, action: Callable[[], str], style: str) -> widgets.Button:
        button = widgets.Button(description=label, button_style=style,
                                layout=widgets.Layout(width="auto"))
        button.on_click(lambda _: self._act(action))
        return button

    def tile_html(self, rank: int) -> str:
        """What a rank's tile shows now (its HTML)."""
        return self.tiles.tile(rank).body.value

    def tile_button(self, rank: int) -> widgets.Button:
        """The "kill rank N" button of a rank's tile."""
        return self.tiles.tile(rank).kill

    def debug_button(self, rank: int) -> widgets.Button:
        """The "debug rank N" button of a rank's tile (enabled while it is paused)."""
        return self.tiles.tile(rank).debug

    def freeze_button(self, rank: int) -> widgets.Button:
        """The "freeze" / "thaw" button of a rank's tile."""
        return self.tiles.tile(rank).freeze

    def slow_button(self, rank: int) -> widgets.Button:
        """The "slow" / "full speed" button of a rank's tile (slows to the ``speed`` chosen)."""
        return self.tiles.tile(rank).slow

    def tile_ranks(self) -> list[int]:
        """The ranks that have a tile now (above ``COMPACT_ABOVE`` ranks: the selected one)."""
        return self.tiles.ranks()

    # -------------------------------------------------------------- actions

    def _refresh(self) -> None:
        self._dirty.set()
        if not self._thread.is_alive():
            self.render()

    def _act(self, action: Callable[[], str]) -> None:
        """Run a control; show what happened (or why it could not) in the status line."""
        try:
            message = action()
            color = "#2c3e50"
        except Exception as exc:  # shown to the user; a button callback must not raise
            message = f"{type(exc).__name__}: {exc}"
            color = "#c0392b"
        self.model.status = f"<span style='color:{color}'>{html.escape(message)}</span>"
        self._dirty.set()
        if not self._thread.is_alive():
            self.render()

    def _kill(self, rank: int) -> str:
        self.job.kill(rank, self.signal.value)
        return f"sent {self.signal.value} to rank {rank}"

    def _worker(self, rank: int) -> Any:
        return next((w for w in self.model.snapshot().workers if w.rank == rank), None)

    def _freeze(self, rank: int) -> str:
        worker = self._worker(rank)
        if worker is not None and worker.frozen:
            self.job.thaw(rank)
            return f"thawed rank {rank}"
        self.job.freeze(rank)
        return f"froze rank {rank} (SIGSTOP): its peers wait for it"

    def _slow(self, rank: int) -> str:
        worker = self._worker(rank)
        if worker is not None and worker.slowed is not None:
            self.job.slow(rank, 1.0)
            return f"rank {rank} runs at full speed again"
        self.job.slow(rank, self.speed.value)
        return f"rank {rank} now runs at {self.speed.value:.0%} of its speed"

    def _freeze_node(self) -> str:
        if self.node.value is None:
            raise ValueError("no live node to freeze")
        if any(n.frozen for n in self.model.snapshot().nodes if n.index == self.node.value):
            self.job.thaw(node=self.node.value)
            return f"thawed node {self.node.value}"
        self.job.freeze_node(self.node.value)
        return (f"froze node {self.node.value}: left frozen, it is lost after the liveness "
                "timeout and the others re-form")

    def _restart(self) -> str:
        self.job.restart()
        return "restart requested: a new attempt starts (the restart budget is not used)"

    def _stop(self) -> str:
        self._in_background("stopping", self.job.stop, lambda _: "job stopped")
        return "stopping the job…"

    def _kill_node(self) -> str:
        if self.node.value is None:
            raise ValueError("no live node to kill")
        self.job.kill_node(self.node.value)
        return f"killed node {self.node.value}"

    def _add_node(self) -> str:
        where = self.add_on.value
        index = self.job.add_node(Node(self.add_nproc.value, on=self.job.places()[where]))
        return (f"added node {index} with {self.add_nproc.value} ranks on {where}; it joins at "
                "the next rendezvous")

    def _debug(self, rank: int) -> str:
        def done(message: str) -> str:
            self.tabs.selected_index = 3
            return message

        self._in_background("debug", lambda: self.model.open_debug(rank), done)
        return f"connecting to rank {rank}'s debugger…"

    def _debug_send(self) -> str:
        command = self.debug_command.value
        self.debug_command.value = ""
        self._in_background("debug-send", lambda: self.model.debug_send(command), str)
        return f"sent {command!r} to pdb"

    def _debug_leave(self) -> str:
        self.model.close_debug()
        return "left the debug session; the rank continues"

    def _refresh_hang(self) -> str:
        def done(report: Any) -> str:
            self.tabs.selected_index = 4
            return f"hang map: {report.answer}"

        self._in_background("hang map", self.model.refresh_hang_map, done)
        return "asking every rank where it is…"

    def _dump_stacks(self) -> str:
        def done(stacks: dict[int, str]) -> str:
            self.tabs.selected_index = 2
            return f"stacks of {len(stacks)} ranks dumped (see the stacks tab)"

        self._in_background("dumping stacks", self.model.dump_stacks, done)
        return "dumping the stacks of every running rank…"

    def _in_background(self, what: str, work: Callable[[], Any], done: Callable[[Any], str]) -> None:
        """Slow controls run off the kernel's thread so the notebook stays responsive."""
        def run() -> None:
            self._act(lambda: done(work()))

        threading.Thread(target=run, name=f"elastic_nb-{what}", daemon=True).start()

    # ------------------------------------------------------------ rendering

    def _on_event(self, event: Any) -> None:
        self._dirty.set()  # called on the Job's pump thread: do nothing slow here

    def _tick(self) -> None:
        while not self._closed.wait(self.interval):
            if self.job.done:
                self.job.wait()  # returns once the job's last log lines are in
                self.render()
                break
            if self._dirty.is_set() or self.model.logs.version != self._seen_logs \
                    or self.job.metrics_book.version != self.metrics_view.seen_version \
                    or time.monotonic() - self._last_refresh >= STATS_INTERVAL:
                self.render()
        self._detach()

    def render(self) -> None:
        """Compute the view from the model and push what changed to the widgets."""
        with self._render_lock:
            self._dirty.clear()
            self._seen_logs = self.model.logs.version
            self._last_refresh = time.monotonic()
            snap = self.model.snapshot()
            changed = [
                set_if_changed(self.header_area, "value", render.header_html(snap, self.model.goodput_text())),
                self.tiles.render(self.model.tiles(snap)),
                self._render_controls(snap),
                set_if_changed(self.status_area, "value", self.model.status),
                self._render_logs(),
                self._render_timeline(snap),
                set_if_changed(self.stacks_area, "value", self._stacks_html()),
                set_if_changed(self.debug_area, "value", self._debug_html()),
                set_if_changed(self.hang_area, "value", self.model.hang_html()),
                self.metrics_view.render(),
            ]
            if any(changed):
                self.updates += 1

    @staticmethod
    def _set_options(widget: widgets.Dropdown | widgets.Select, choices: list) -> bool:
        """Replace a selection's options, keeping the user's choice if it is still offered."""
        options = tuple(choices)
        if tuple(widget.options) == options:
            return False
        chosen = widget.value
        widget.options = options
        values = [value for _, value in options] if options and isinstance(options[0], tuple) else options
        if chosen in values:
            widget.value = chosen
        elif values:
            widget.value = values[0]
        return True


    def _render_controls(self, snap: JobSnapshot) -> bool:
        done = snap.done
        changed = self._set_options(self.node, [n.index for n in snap.nodes if n.status.live
                                                or n.status == NodeStatus.QUEUED])
        changed |= self._set_options(self.add_on, list(self.job.places()))
        frozen = {n.index for n in snap.nodes if n.frozen}
        changed |= set_if_changed(self.freeze_node_button, "description",
                             "thaw node" if self.node.value in frozen else "freeze node")
        for button in (self.restart_button, self.stop_button, self.kill_node_button,
                       self.freeze_node_button, self.add_node_button, self.stacks_button):
            changed |= set_if_changed(button, "disabled", done)
        return changed

    def show_logs_of(self, rank: int) -> None:
        """Put the log pane on one rank as soon as it has printed (``%torchrun
        --local-ranks-filter``); the rank menu can change it back."""
        self._wanted_log_rank = rank
        self._dirty.set()

    def _render_logs(self) -> bool:
        ranks = [("all ranks (merged)", ALL)] + [(f"rank {r}", r) for r in self.model.logs.ranks()]
        attempts = [("all attempts", ALL)] + [(f"attempt {a}", a) for a in self.model.logs.attempts()]
        changed = self._set_options(self.log_rank, ranks)
        if self._wanted_log_rank in self.model.logs.ranks():
            self.log_rank.value, self._wanted_log_rank, changed = self._wanted_log_rank, None, True
        changed |= self._set_options(self.log_attempt, attempts)
        rank, attempt = (None if v == ALL else v for v in (self.log_rank.value, self.log_attempt.value))
        text = self.model.log_html(rank, self.log_filter.value, attempt, self.log_collapse.value)
        body = (f"<pre style='margin:0;font-size:12px;line-height:1.3'>{text}</pre>"
                if text else "<i>no output yet</i>")
        return changed | set_if_changed(self.log_area, "value", body)

    def _render_timeline(self, snap: JobSnapshot) -> bool:
        entries = self.model.timeline(snap)
        changed = self._set_options(self.event_list, [(e.label, i) for i, e in enumerate(entries)])
        failures = render.failure_events(snap)
        if len(failures) > self._failures_seen:  # a new failure: show its traceback at once
            self._failures_seen = len(failures)
            self.event_list.value = failures[-1]
            changed = True
        index = self.event_list.value
        details = entries[index].details if index is not None and index < len(entries) else \
            "click an event to see its details; a failure shows the rank's traceback"
        return changed | set_if_changed(self.event_details, "value",
                                   f"<pre style='font-size:12px'>{html.escape(details)}</pre>")

    def _debug_html(self) -> str:
        text = self.model.debug_text()
        if not text:
            return "<i>a paused rank's tile has a “debug” button: its pdb answers here</i>"
        return f"<pre style='margin:0;font-size:12px'>{html.escape(text)}</pre>"

    def _stacks_html(self) -> str:
        if not self.model.stacks:
            return self.stacks_area.value
        return f"<pre style='font-size:12px'>{html.escape(self.model.stacks_text())}</pre>"

    # ------------------------------------------------------------ lifecycle

    def _detach(self) -> None:
        self.job.remove_listener(self._on_event)
        self.model.close()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait for the update thread to end (it does once the job has ended)."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        elif not self._thread.is_alive():
            self._detach()
        super().close()
